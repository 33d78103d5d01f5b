"""One array of a training volume, by file (or ``registry:<dataset name>``) and dataset name:
HDF5 (``.h5``/``.hdf``/``.hdf5``) or a zarr group; read whole (:func:`read_dataset`) or crop by
crop (:class:`DatasetFile`). Errors name the file and the dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.errors import DataError

HDF5_SUFFIXES = (".h5", ".hdf", ".hdf5")
#: ``raw = "registry:cremi/sample_A"``: a registry dataset (downloaded into the cache if missing)
REGISTRY_PREFIX = "registry:"


def volume_path(path: str | Path) -> Path:
    """A training volume's file: ``registry:<name>`` resolves through the dataset registry."""
    text = str(path)
    if text.startswith(REGISTRY_PREFIX):
        from synapse_toolkit.datasets import resolve_dataset

        return resolve_dataset(text[len(REGISTRY_PREFIX) :])
    return Path(path)


class DatasetFile:
    """``dataset`` of the file ``path``, kept open; ``where`` (a config key) goes into errors."""

    def __init__(self, path: str | Path, dataset: str, where: str = "") -> None:
        p = volume_path(path)
        at = f" ({where})" if where else ""
        if not p.exists():
            raise DataError(f"{p}: file not found{at}")
        self.path = p
        self.dataset = dataset
        self._file: Any = None
        if p.suffix in HDF5_SUFFIXES:
            import h5py

            from synapse_toolkit.io.cremi import open_hdf5_file

            try:
                self._file = open_hdf5_file(p, "a zarr store's name ends in .zarr")
            except DataError as exc:
                raise DataError(f"{exc}{at}") from None
            if dataset not in self._file:
                names = list(self._file.keys())
                self._file.close()
                raise DataError(f"{p}: no dataset {dataset!r} (has {names}){at}")
            if not isinstance(self._file[dataset], h5py.Dataset):
                self._file.close()
                raise DataError(f"{p}: {dataset!r} is a group, not a dataset{at}")
            self.array: Any = self._file[dataset]
        else:
            import zarr

            root = zarr.open(str(p), mode="r")
            if not isinstance(root, zarr.Group):
                raise DataError(f"{p}: not a zarr group (expected arrays inside it){at}")
            try:
                arr = root[dataset]
            except KeyError as exc:
                raise DataError(f"{p}: no array {dataset!r}{at}") from exc
            if not isinstance(arr, zarr.Array):
                raise DataError(f"{p}: {dataset!r} is a group, not an array{at}")
            self.array = arr

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    def read(self, box: tuple[slice, ...] | None = None) -> np.ndarray:
        """The whole array, or the region ``box``."""
        return np.asarray(self.array[...] if box is None else self.array[box])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> DatasetFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_dataset(path: str | Path, dataset: str, where: str = "") -> np.ndarray:
    """The whole ``dataset`` of ``path`` as a numpy array."""
    with DatasetFile(path, dataset, where) as f:
        return f.read()
