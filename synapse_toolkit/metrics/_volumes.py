"""Helpers to treat numpy arrays, h5py/zarr datasets and syntk Volumes alike."""

from __future__ import annotations

from typing import Any

import numpy as np

from synapse_toolkit.data import Volume
from synapse_toolkit.errors import DataError


def unwrap(vol: Any, name: str) -> tuple[Any, tuple[float, float, float] | None]:
    """(array-like, voxel size nm or None) of a Volume, numpy array, h5py or zarr array."""
    if isinstance(vol, Volume):
        if len(vol.shape) != 3:
            raise DataError(f"{name}: expected a 3D (z, y, x) label volume, got shape {vol.shape}")
        return vol.data, vol.voxel_size_nm
    if not hasattr(vol, "shape") or not hasattr(vol, "__getitem__"):
        vol = np.asarray(vol)
    return vol, None


def check_labels(arr: Any, name: str) -> None:
    dtype = np.dtype(arr.dtype)
    if dtype.kind not in "ui":
        raise DataError(f"{name}: label volumes must hold integers, got dtype {dtype}")


def resolve_voxel_size(
    given: tuple[float, float, float] | None,
    truth_vs: tuple[float, float, float] | None,
    pred_vs: tuple[float, float, float] | None,
) -> tuple[float, float, float] | None:
    """The voxel size to use: explicit argument, else the truth's; volumes must agree."""
    if truth_vs is not None and pred_vs is not None and tuple(truth_vs) != tuple(pred_vs):
        raise DataError(
            f"truth and prediction voxel sizes differ: {tuple(truth_vs)} vs {tuple(pred_vs)} nm"
        )
    vs = given if given is not None else (truth_vs if truth_vs is not None else pred_vs)
    if vs is None:
        return None
    out = tuple(float(v) for v in vs)
    if len(out) != 3 or min(out) <= 0:
        raise DataError(f"voxel size must be 3 positive values (z, y, x nm), got {vs}")
    return (out[0], out[1], out[2])
