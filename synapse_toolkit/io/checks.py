"""Checks every loader applies before any compute: values that would silently poison a run.

- float intensities with NaN or infinity are an error, or, with ``nonfinite = "replace"``,
  replaced by the volume's finite mean (the count is reported);
- label volumes with negative ids are an error (ids are unsigned in CREMI);
- volumes loaded together must share voxel size, offset and spatial shape; none is empty;
- a region of interest must be a non-empty box inside its volume.

Volumes are scanned in z-slabs, never loaded whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from synapse_toolkit.data import Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.stages import Placement

if TYPE_CHECKING:
    from synapse_toolkit.stages import StageContext

NonFinite = Literal["error", "replace"]
_SLAB_VOXELS = 1 << 24


def _slabs(vol: Volume) -> list[tuple[slice, ...]]:
    z, y, x = vol.spatial_shape
    step = max(1, _SLAB_VOXELS // max(1, y * x * (vol.num_channels or 1)))
    lead = (slice(None),) if len(vol.shape) == 4 else ()
    return [(*lead, slice(z0, min(z, z0 + step))) for z0 in range(0, z, step)]


def count_nonfinite(vol: Volume) -> tuple[int, float, int]:
    """(non-finite voxels, sum of finite values, finite voxels) of a float volume."""
    bad, total, n = 0, 0.0, 0
    for roi in _slabs(vol):
        block = np.asarray(vol.data[roi])
        finite = np.isfinite(block)
        bad += int(block.size - finite.sum())
        total += float(block[finite].sum(dtype=np.float64))
        n += int(finite.sum())
    return bad, total, n


def check_intensity(
    vol: Volume, where: str, policy: NonFinite, context: StageContext | None = None
) -> Volume:
    """``vol`` if it has only finite values; else an error, or a cleaned copy (``replace``)."""
    if not np.issubdtype(vol.dtype, np.floating):
        return vol
    bad, total, n = count_nonfinite(vol)
    if bad == 0:
        return vol
    if policy == "error" or context is None:
        raise DataError(f"{where}: {bad} voxels are NaN or infinite; fix the data or set the "
                        "loader option nonfinite = \"replace\"")  # fmt: skip
    fill = total / n if n else 0.0
    out = context.create_volume(vol.name or "raw", vol.shape, vol.dtype, like=vol)
    for roi in _slabs(vol):
        block = np.asarray(vol.data[roi])
        out.data[roi] = np.where(np.isfinite(block), block, fill)
    context.logger.warning("%s: replaced %d NaN/infinite voxels by the mean %.4g", where, bad, fill)
    context.record("nonfinite_replaced", {"volume": vol.name, "voxels": bad, "value": fill})
    return out


def check_labels(vol: Volume, where: str) -> None:
    """Refuse negative label ids (signed integer volumes only; unsigned cannot be negative)."""
    if not np.issubdtype(vol.dtype, np.signedinteger):
        return
    for roi in _slabs(vol):
        low = np.asarray(vol.data[roi]).min(initial=0)
        if low < 0:
            raise DataError(f"{where}: negative label id {int(low)}; label ids must be >= 0")


def check_same_grid(volumes: Mapping[str, Volume], where: str) -> None:
    """All volumes on one grid: same voxel size, offset and spatial shape."""
    items = list(volumes.items())
    if len(items) < 2:
        return
    name0, v0 = items[0]
    for name, v in items[1:]:
        diff = Placement.of(v).difference(Placement.of(v0))
        if diff:
            raise DataError(f"{where}: {name} and {name0} differ in {diff}")


def check_loaded(
    out: Mapping[str, Any],
    where: str,
    *,
    nonfinite: NonFinite = "error",
    context: StageContext | None = None,
) -> dict[str, Any]:
    """Apply every check to a loader's outputs; returns them (raw possibly cleaned)."""
    result = dict(out)
    vols = {k: v for k, v in out.items() if isinstance(v, Volume)}
    for name, vol in vols.items():
        if 0 in vol.spatial_shape:
            raise DataError(f"{where} ({name}): empty volume, shape {tuple(vol.shape)}")
        if vol.is_labels:
            check_labels(vol, f"{where} ({name})")
        elif name == "raw":
            result[name] = check_intensity(vol, f"{where} ({name})", nonfinite, context)
    check_same_grid(vols, where)
    return result


def roi_slices(
    roi: Sequence[Sequence[int]], shape: Sequence[int], where: str
) -> tuple[slice, slice, slice]:
    """``roi`` ((start, stop) voxels per z, y, x) as slices, or one error naming ``where`` (a file
    or config key) when it is not a non-empty box inside a volume of ``shape``."""
    box = [tuple(int(v) for v in r) for r in roi]
    if len(box) != 3 or any(len(r) != 2 or not 0 <= r[0] < r[1] <= s
                            for r, s in zip(box, shape, strict=False)):  # fmt: skip
        raise DataError(f"{where}: roi {[list(r) for r in box]} is not a non-empty "
                        f"region inside the volume of shape {list(shape)}")  # fmt: skip
    return slice(*box[0]), slice(*box[1]), slice(*box[2])
