"""Block-by-block linear resampling of volumes between voxel sizes (no whole-volume arrays).

Grids are aligned at voxel centres over the same physical extent: output voxel ``i`` of an axis
with ``n_out`` voxels samples the input at ``(i + 0.5) * n_in / n_out - 0.5`` (clamped to the
input), as a volume of ``n_in`` voxels of size ``s`` re-gridded to ``n_out`` voxels of size
``s * n_in / n_out`` covers the same extent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from synapse_toolkit.blockwise import iter_blocks

ResamplePolicy = Literal["finer", "always", "never"]


def _zyx(values: Sequence[float]) -> tuple[float, float, float]:
    z, y, x = (float(v) for v in values)
    return (z, y, x)


def model_grid_voxel_size(
    voxel_size_nm: Sequence[float],
    model_voxel_size_nm: Sequence[float] | None,
    policy: ResamplePolicy = "always",
    tolerance: float = 0.05,
) -> tuple[float, float, float] | None:
    """The voxel size to run a model at, or ``None`` to run it on the data's own grid.

    ``"always"`` resamples every axis that differs by more than ``tolerance`` to the model's
    size; ``"finer"`` coarsens only the axes where the data is finer than the model and never
    interpolates up; ``"never"`` keeps the data's grid. ``"always"`` is the default, chosen on
    the gala FIB validation crop (figures in the FIB model's README).
    """
    if policy == "never" or model_voxel_size_nm is None:
        return None
    data = _zyx(voxel_size_nm)
    model = _zyx(model_voxel_size_nm)
    if policy == "finer":
        pairs = zip(data, model, strict=True)
        target = _zyx([m if v < m * (1 - tolerance) else v for v, m in pairs])
    else:
        target = model
    if np.allclose(data, target, rtol=tolerance):
        return None
    return target


def resampled_shape(
    shape: Sequence[int], voxel_size_nm: Sequence[float], target_voxel_size_nm: Sequence[float]
) -> tuple[int, ...]:
    """The (z, y, x) shape of ``shape`` voxels of ``voxel_size_nm`` re-gridded to the target."""
    return tuple(
        max(1, round(n * v / t))
        for n, v, t in zip(shape, voxel_size_nm, target_voxel_size_nm, strict=True)
    )


def _source_coordinates(n_in: int, n_out: int, start: int, stop: int) -> np.ndarray:
    i = np.arange(start, stop, dtype=np.float64)
    return np.clip((i + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)


def _interpolate_axis(a: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` at local ``coords`` (within ``a``)."""
    n = a.shape[axis]
    if n == 1:
        return np.repeat(a, coords.size, axis=axis)
    lo = np.clip(np.floor(coords).astype(np.int64), 0, n - 2)
    w = (coords - lo).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = w.size
    w = w.reshape(shape)
    return np.take(a, lo, axis=axis) * (1 - w) + np.take(a, lo + 1, axis=axis) * w


def resample_into(
    source: Any,
    out: Any,
    block: Sequence[int] = (32, 128, 128),
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write ``source`` linearly resampled to ``out``'s spatial shape into ``out``.

    ``source`` and ``out`` are (z, y, x) or (C, z, y, x) array-likes (numpy, zarr, h5py) with the
    same leading channels; ``out`` is written one ``block`` at a time, and only the source box
    each block needs is read.
    """
    in_shape = tuple(int(s) for s in source.shape[-3:])
    out_shape = tuple(int(s) for s in out.shape[-3:])
    lead = (slice(None),) * (len(out.shape) - 3)
    step = tuple(min(s, k) for s, k in zip(out_shape, block, strict=True))
    for b in iter_blocks(out_shape, step):
        coords = [
            _source_coordinates(n_in, n_out, w.start, w.stop)
            for n_in, n_out, w in zip(in_shape, out_shape, b.write, strict=True)
        ]
        lo = [int(np.floor(c[0])) for c in coords]
        hi = [min(n, int(np.floor(c[-1])) + 2) for c, n in zip(coords, in_shape, strict=True)]
        box = tuple(slice(a, z) for a, z in zip(lo, hi, strict=True))
        values = np.asarray(source[(*lead, *box)], dtype=np.float32)
        for axis, (c, a) in enumerate(zip(coords, lo, strict=True)):
            values = _interpolate_axis(values, c - a, axis + len(lead))
        out[(*lead, *b.write)] = values.astype(out.dtype, copy=False)
        if progress is not None:
            progress(1)
