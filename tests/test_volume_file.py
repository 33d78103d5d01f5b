"""The one reader of training volumes (synapse_toolkit.nn.volume_file): HDF5 and zarr, whole or
by region; errors name the file, the dataset and the config key."""

from __future__ import annotations

import numpy as np
import pytest

from synapse_toolkit.errors import DataError
from synapse_toolkit.nn.volume_file import DatasetFile, read_dataset


def test_hdf5_and_zarr_read_whole_and_by_region(tmp_path) -> None:
    h5py = pytest.importorskip("h5py")
    zarr = pytest.importorskip("zarr")
    a = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["raw"] = a
    g = zarr.open_group(str(tmp_path / "v.zarr"), mode="w")
    g.create_array("raw", shape=a.shape, dtype=a.dtype)[...] = a
    for path in (tmp_path / "v.h5", tmp_path / "v.zarr"):
        assert np.array_equal(read_dataset(path, "raw"), a)
        with DatasetFile(path, "raw") as f:
            assert f.shape == (4, 5, 6)
            box = (slice(1, 3), slice(0, 2), slice(4, 6))
            assert np.array_equal(f.read(box), a[box])


def test_errors_name_file_dataset_and_key(tmp_path) -> None:
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["raw"] = np.zeros((2, 2, 2), np.uint8)
    with pytest.raises(DataError, match=r"v.h5: no dataset 'gt' \(has \['raw'\]\) \(data.x\)"):
        read_dataset(tmp_path / "v.h5", "gt", "data.x")
    with pytest.raises(DataError, match="nothing.h5: file not found"):
        read_dataset(tmp_path / "nothing.h5", "raw")
