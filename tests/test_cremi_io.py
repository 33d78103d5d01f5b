"""CREMI files written by syntk read back identical; the CREMI reference files load."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from synapse_toolkit.errors import DataError
from synapse_toolkit.io.cremi import open_cremi, read_cremi, write_cremi

from .conftest import REPO, make_cremi_data

REFERENCE = REPO / "tests" / "data" / "cremi-io"


def _assert_same(a, b) -> None:  # type: ignore[no-untyped-def]
    for name in ("raw", "neuron_ids", "clefts"):
        va, vb = getattr(a, name), getattr(b, name)
        assert (va is None) == (vb is None), name
        if va is not None:
            np.testing.assert_array_equal(np.asarray(va.data[...]), np.asarray(vb.data[...]))
            assert va.dtype == vb.dtype
            assert va.voxel_size_nm == vb.voxel_size_nm and va.offset_nm == vb.offset_nm
    if a.annotations is None:
        assert b.annotations is None
    else:
        assert a.annotations.to_dict() == b.annotations.to_dict()


def test_roundtrip_exact(tmp_path: Path) -> None:
    data = make_cremi_data()
    path = write_cremi(tmp_path / "a.hdf", data)
    back = read_cremi(path)
    _assert_same(data, back)
    with h5py.File(path, "r") as f:
        assert f.attrs["file_format"] == "0.2"
        np.testing.assert_array_equal(f["volumes/raw"].attrs["resolution"], [40, 4, 4])
        np.testing.assert_array_equal(f["annotations"].attrs["offset"], [40, 0, 8])
        assert f["annotations/types"][0].decode() == "presynaptic_site"
    # writing what was read gives the same file contents again
    path2 = write_cremi(tmp_path / "b.hdf", back)
    _assert_same(back, read_cremi(path2))


def test_lazy_open_reads_blocks(tmp_path: Path) -> None:
    path = write_cremi(tmp_path / "a.hdf", make_cremi_data())
    with open_cremi(path) as data:
        assert isinstance(data.raw.data, h5py.Dataset)  # type: ignore[union-attr]
        block = data.raw.read((slice(1, 3), slice(0, 5), slice(0, 5)))  # type: ignore[union-attr]
        assert block.shape == (2, 5, 5)


def test_refuses_overwrite_and_is_atomic(tmp_path: Path) -> None:
    path = write_cremi(tmp_path / "a.hdf", make_cremi_data())
    before = path.read_bytes()
    with pytest.raises(DataError, match="refusing to overwrite"):
        write_cremi(path, make_cremi_data(seed=1))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.hdf"]  # no temporary left behind


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.hdf: file not found"):
        read_cremi(tmp_path / "missing.hdf")
    bad = tmp_path / "bad.hdf"
    bad.write_text("not hdf5")
    with pytest.raises(DataError, match="bad.hdf: not a readable HDF5"):
        read_cremi(bad)
    nores = tmp_path / "nores.hdf"
    with h5py.File(nores, "w") as f:
        f.create_dataset("volumes/raw", data=np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(DataError, match="volumes/raw has no 'resolution'"):
        read_cremi(nores)


@pytest.mark.parametrize("path", sorted(REFERENCE.glob("*.hdf")), ids=lambda p: p.name)
def test_reference_files_load_and_roundtrip(path: Path, tmp_path: Path) -> None:
    data = read_cremi(path)
    assert data.neuron_ids is not None or data.clefts is not None or data.annotations is not None
    _assert_same(data, read_cremi(write_cremi(tmp_path / path.name, data)))


def test_reference_copies_present() -> None:
    assert len(list(REFERENCE.glob("*.hdf"))) >= 3


def test_crop_cremi_moves_offsets_and_keeps_the_annotations_inside() -> None:
    from synapse_toolkit.errors import DataError
    from synapse_toolkit.io.cremi import crop_cremi

    data = make_cremi_data()  # (6, 40, 50) at 40 x 4 x 4 nm, offset (40, 0, 8)
    crop = crop_cremi(data, [[2, 6], [0, 40], [0, 30]])
    assert crop.raw is not None and data.raw is not None and crop.clefts is not None
    assert np.array_equal(crop.raw.read(), data.raw.read()[2:6, :, :30])
    assert crop.raw.offset_nm == (120.0, 0.0, 8.0) and crop.raw.voxel_size_nm == (40.0, 4.0, 4.0)
    assert crop.clefts.offset_nm == crop.raw.offset_nm
    ann = crop.annotations
    assert ann is not None
    # the sites at x = 68 nm are inside [8, 128) nm, those at 128 and 128.5 nm are not
    assert ann.ids.tolist() == [1, 2] and ann.partners.tolist() == [[1, 2]]
    assert ann.comments == {2: "polyadic?"}
    assert np.allclose(ann.world_locations(), data.annotations.world_locations()[:2])  # type: ignore[union-attr]
    with pytest.raises(DataError, match=r"sample\.hdf: roi \[\[0, 7\]"):
        crop_cremi(data, [[0, 7], [0, 40], [0, 50]], "sample.hdf")
