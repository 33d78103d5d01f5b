"""Label-free signals of whether an affinity model fits a volume, and a threshold for a new
volume without its labels.

- **Boundary fraction**: the fraction of voxels whose weakest nearest-neighbour affinity is below
  0.5 (``min(a_z, a_y, a_x) < 0.5``). A model that sees faint membranes as cell interior predicts
  few boundaries, so its boundary fraction falls far below the one it has on its own
  (source-domain) validation data; disagreement between test-time-augmentation passes does not
  show this (such a model is confidently wrong).
- The model's reference is stored in its ONNX metadata under :data:`QUALITY_KEY`: the boundary
  fraction on its validation data, the band outside which a run gets one warning line, and the
  fraction of voxels below each threshold of :data:`CDF_THRESHOLDS` (the weakest-affinity
  distribution on the validation data).
- **Ridge recall** (:mod:`synapse_toolkit.inference.ridges`), computed only when the boundary
  fraction is outside the band and the reference holds ``ridges`` (the filter's threshold and the
  model's ridge recall on its validation data): the share of a classical dark-ridge filter's
  pixels the model marks as boundary, appended to the warning line as a second opinion (a model
  that misses faint membranes also misses ridges; one on tissue with larger profiles does not).
- :func:`matched_threshold`: the threshold at which a volume's weakest-affinity distribution
  has the same fraction below it as the source validation data has below the source's stored
  threshold. Quantile-based waterz scoring is unchanged by a monotone remapping of the
  affinities, so this undoes a model's monotone miscalibration on a new volume (``syntk adapt``
  stores it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

QUALITY_KEY = "quality_reference"
BOUNDARY_AT = 0.5
#: thresholds at which the source's weakest-affinity distribution is stored
CDF_THRESHOLDS: tuple[float, ...] = tuple(round(float(t), 2) for t in np.arange(0.05, 1.0, 0.05))
ADAPT_HINT = "this model may not fit this volume; see `syntk adapt affinities`"


def weakest_affinity(affs: Any, z_block: int = 16) -> np.ndarray:
    """``min`` over the first three channels of ``(C, z, y, x)`` affinities, read ``z_block``
    sections at a time (a zarr array is never read whole at once)."""
    shape = affs.shape[1:]
    out = np.empty(shape, np.float32)
    for z in range(0, shape[0], z_block):
        block = np.asarray(affs[:3, z : z + z_block], dtype=np.float32)
        out[z : z + z_block] = block.min(axis=0)
    return out


def signals(affs: Any, z_block: int = 16, yx_block: int = 256) -> dict[str, Any]:
    """Boundary fraction and the weakest-affinity fractions below :data:`CDF_THRESHOLDS` of
    ``(C, z, y, x)`` affinities, streamed block by block (memory does not grow with the volume):
    the array's chunks when it has them, else ``z_block`` sections by ``yx_block`` x
    ``yx_block`` voxels."""
    from synapse_toolkit.blockwise import iter_blocks

    ts = np.asarray(CDF_THRESHOLDS, np.float32)
    below = np.zeros(len(ts), np.int64)
    n_boundary = 0
    n = 0
    shape = tuple(int(s) for s in affs.shape[1:])
    chunks = getattr(affs, "chunks", None)
    want = tuple(chunks[-3:]) if chunks and len(chunks) == 4 else (z_block, yx_block, yx_block)
    step = tuple(min(int(c), n) for c, n in zip(want, shape, strict=True))
    for b in iter_blocks(shape, step) if all(shape) else []:
        w = np.asarray(affs[(slice(0, 3), *b.write)], dtype=np.float32).min(axis=0).ravel()
        below += np.searchsorted(np.sort(w), ts, side="left")
        n_boundary += int((w < BOUNDARY_AT).sum())
        n += w.size
    n = max(n, 1)
    cdf = {f"{t:.2f}": round(float(c) / n, 5) for t, c in zip(CDF_THRESHOLDS, below, strict=True)}
    return {"boundary_fraction": round(n_boundary / n, 4), "below": cdf}


def check(
    affs: Any,
    meta: Mapping[str, Any],
    record: Any,
    logger: Any,
    who: str = "affinity-unet",
    ridge_inputs: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """The run's signals beside the model's reference (``record("quality", ...)`` in the
    manifest) and one warning line (logged, and recorded as ``quality_warning``) when the
    boundary fraction is outside the stored band; with ``ridge_inputs`` (raw and affinities on
    the model's grid, where the reference was measured) and a ``ridges`` reference, the line
    carries the ridge recall as a second opinion."""
    sig = signals(affs)
    ref = meta.get(QUALITY_KEY) or {}
    rec: dict[str, Any] = {"boundary_fraction": sig["boundary_fraction"]}
    if ref:
        rec.update(
            reference_boundary_fraction=ref.get("boundary_fraction"),
            expected=[ref.get("warn_below"), ref.get("warn_above")],
        )
    line = warning(sig["boundary_fraction"], ref, who) if ref else None
    if line and ridge_inputs is not None and ref.get("ridges"):
        from synapse_toolkit.inference.ridges import ridge_recall

        ridges = ref["ridges"]
        got = ridge_recall(*ridge_inputs, float(ridges["threshold"]))
        rec["ridges"] = {**got, "reference_ridge_recall": ridges["recall"]}
        line += (
            f" (second opinion: it marks {100 * got['ridge_recall']:.1f}% of the dark ridges a "
            f"classical filter finds as boundary, {100 * float(ridges['recall']):.1f}% on its "
            "validation data)"
        )
    rec["warning"] = line
    record("quality", rec)
    if line:  # also under its own key: `syntk report` lists notes named *warn* as warnings
        record("quality_warning", line)
        logger.warning(line)
    return rec


def reference(
    affs_list: Sequence[Any], band: tuple[float, float], measured_on: str, band_chosen_on: str
) -> dict[str, Any]:
    """The metadata entry :data:`QUALITY_KEY` from affinities on the source validation data
    (values averaged over the volumes); ``band`` = (low, high) factors of the reference boundary
    fraction outside which a run is warned about."""
    sig = [signals(a) for a in affs_list]
    bf = float(np.mean([s["boundary_fraction"] for s in sig]))
    below = {k: round(float(np.mean([s["below"][k] for s in sig])), 5) for k in sig[0]["below"]}
    return {
        "boundary_fraction": round(bf, 4),
        "warn_below": round(bf * band[0], 4),
        "warn_above": round(bf * band[1], 4),
        "below": below,
        "measured_on": measured_on,
        "band_chosen_on": band_chosen_on,
    }


def warning(value: float, ref: Mapping[str, Any], who: str = "affinity-unet") -> str | None:
    """One warning line when ``value`` (a run's boundary fraction) is outside the stored band."""
    lo, hi = ref.get("warn_below"), ref.get("warn_above")
    if lo is None or hi is None or lo <= value <= hi:
        return None
    edge = float(lo) if value < float(lo) else float(hi)
    digits = 3
    while digits < 6 and f"{value:.{digits}f}" == f"{edge:.{digits}f}":
        digits += 1  # a value just outside the band must not print as its edge
    return (
        f"{who}: boundary fraction {value:.{digits}f} is "
        f"{'below' if value < float(lo) else 'above'} the range expected from this model's "
        f"{float(ref['boundary_fraction']):.3f} on its validation data "
        f"({float(lo):.{digits}f}..{float(hi):.{digits}f}): {ADAPT_HINT}"
    )


def matched_threshold(
    weakest: np.ndarray, ref: Mapping[str, Any], source_threshold: float
) -> float:
    """The threshold for a new volume: the quantile of its weakest affinities (``weakest``) at the
    fraction the source validation data has below ``source_threshold`` (linear interpolation in
    the stored distribution), rounded to 0.01 and kept in [0.05, 0.99]."""
    ts = np.asarray(CDF_THRESHOLDS, float)
    fr = np.asarray([float(ref["below"][f"{t:.2f}"]) for t in CDF_THRESHOLDS])
    frac = float(np.interp(source_threshold, ts, fr))
    t = float(np.quantile(np.asarray(weakest, np.float32), frac))
    return round(min(max(t, 0.05), 0.99), 2)


#: block shape (z, y, x voxels) in which segment sizes are measured: the shipped FIB model's
#: validation crop, so that segments cut by a block face count alike in every volume
SIZE_BLOCK: tuple[int, int, int] = (50, 100, 50)
SIZE_THRESHOLDS: tuple[float, ...] = tuple(round(float(t), 2) for t in np.arange(0.3, 0.99, 0.02))


def segment_size(seg: np.ndarray, block: Sequence[int] = SIZE_BLOCK) -> float:
    """Mean over ``block``-sized tiles (those that fit whole; else the whole volume) of the
    voxel-weighted mean size of the pieces of segments inside the tile (voxels): the size of the
    segment a random voxel lies in. Falls under over-segmentation, rises under merges."""
    shape = seg.shape
    steps = [list(range(0, n - b + 1, b)) or [0] for n, b in zip(shape, block, strict=True)]
    sizes = []
    for z in steps[0]:
        for y in steps[1]:
            for x in steps[2]:
                tile = seg[z : z + block[0], y : y + block[1], x : x + block[2]]
                _, counts = np.unique(tile, return_counts=True)
                c = counts.astype(np.float64)
                sizes.append(float((c * c).sum() / c.sum()))
    return float(np.mean(sizes))


def size_curve(
    affs: np.ndarray,
    scoring: str,
    thresholds: Sequence[float] = SIZE_THRESHOLDS,
    fragments: Mapping[str, Any] | None = None,
) -> dict[float, float]:
    """:func:`segment_size` of the waterz segmentation at each threshold, from the fragments
    of the ``fragments`` setting (a model's stored one; default: waterz's own)."""
    from synapse_toolkit.inference.agglomeration import agglomerate
    from synapse_toolkit.inference.fragments import make_fragments

    out: dict[float, float] = {}

    def keep(t: float, seg: np.ndarray) -> None:
        out[round(float(t), 3)] = segment_size(seg)

    frags = make_fragments(affs, fragments)
    agglomerate(affs, thresholds, fragments=frags, scoring=scoring, on_segmentation=keep)
    return out


def size_matched_threshold(curve: Mapping[float, float], reference_size: float) -> float:
    """The threshold whose segment size (``curve`` from :func:`size_curve`) is closest to
    ``reference_size`` on a log scale (ties: the lower threshold)."""
    return min(curve, key=lambda t: (abs(np.log(curve[t] / reference_size)), t))
