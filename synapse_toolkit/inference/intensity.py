"""Intensity matching: map a volume's grey values onto the distribution a model was trained on.

A model trained on one EM volume sees another acquisition's contrast, brightness or gamma as a
different input. Matching the new volume's quantiles to the training data's quantiles (a
monotone, piecewise-linear map) undoes any monotone change of the grey values (measured with
``syntk evaluate fib --robustness``; figures in the FIB model's README).

The reference is stored in the ONNX model's metadata (``intensity_reference``: ``quantiles`` in
the training data's raw units and the ``scale`` the network input was multiplied by), written by
``syntk export onnx`` from the training volumes listed in the checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from synapse_toolkit.blockwise import iter_blocks
from synapse_toolkit.errors import DataError

#: what a stage's ``intensity_scale`` option does (the stages' option docs)
INTENSITY_SCALE_HELP = (
    "multiply raw by this (default: one over the integer type's maximum, e.g. 1/255 for uint8 and "
    "1/65535 for uint16; 1 for float raw, taken as already in [0, 1]); set it for integer data "
    "that uses part of its type's range, e.g. 1/4095 for 12-bit values stored as uint16."
)


def unit_scale(dtype: Any) -> float:
    """The factor that brings stored grey values into the networks' input range [0, 1]: one over
    the integer type's maximum (uint8: 1/255, uint16: 1/65535), 1 for floats (taken as already in
    [0, 1]). Every model without an intensity reference was trained on inputs scaled so."""
    dt = np.dtype(dtype)
    return 1.0 / float(np.iinfo(dt).max) if np.issubdtype(dt, np.integer) else 1.0


#: Quantile levels stored for a reference and measured on a volume (0, 1/256, ..., 1).
LEVELS = np.linspace(0.0, 1.0, 257)
#: Exact counting covers int16 .. uint16: bin i holds grey value i + _OFFSET.
_OFFSET = -(1 << 15)
_BINS = (1 << 16) - _OFFSET
#: Volumes are read in blocks of this shape (z, y, x).
BLOCK = (64, 256, 256)
#: Volumes with more voxels than this are subsampled (every k-th block).
MAX_SAMPLE_VOXELS = 1 << 25

PreprocessFn = Callable[[np.ndarray], np.ndarray]


def quantiles(volumes: Iterable[Any]) -> np.ndarray:
    """Pooled quantiles at :data:`LEVELS` of one or more (z, y, x) arrays (numpy, zarr, h5py).

    Volumes are read in blocks of :data:`BLOCK` (each stored chunk is decoded about once); a
    volume larger than :data:`MAX_SAMPLE_VOXELS` is sampled, every k-th block, so measuring costs
    at most that many voxels per volume. Integer volumes of at most 16 bits are counted in a
    histogram, other dtypes kept as samples. Quantiles interpolate linearly between ranks, as
    ``np.quantile`` does (exactly equal to it when nothing is sampled).
    """
    counts = np.zeros(_BINS, np.int64)
    samples: list[np.ndarray] = []
    for vol in volumes:
        dtype = np.dtype(vol.dtype)
        exact = np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2
        shape = tuple(int(n) for n in vol.shape)
        step = tuple(min(n, b) for n, b in zip(shape, BLOCK, strict=True))
        blocks = list(iter_blocks(shape, step))
        stride = max(1, int(np.ceil(np.prod(shape) / MAX_SAMPLE_VOXELS)))
        for b in blocks[::stride]:
            values = np.asarray(vol[b.write])
            if exact:
                counts += np.bincount((values.astype(np.int64) - _OFFSET).ravel(), minlength=_BINS)
            else:
                samples.append(values.astype(np.float64).ravel())
    if samples and counts.any():  # mixed dtypes: expand the histogram into samples
        samples.append(np.repeat(np.arange(_BINS, dtype=np.float64) + _OFFSET, counts))
    if samples:
        return np.quantile(np.concatenate(samples), LEVELS)
    if not counts.any():
        raise ValueError("quantiles of no data")
    return _histogram_quantiles(counts)


def _histogram_quantiles(counts: np.ndarray) -> np.ndarray:
    cum = np.cumsum(counts)
    n = int(cum[-1])
    rank = LEVELS * (n - 1)  # np.quantile's "linear" positions
    lo = np.floor(rank).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    v_lo = np.searchsorted(cum, lo, side="right")  # value of the element at sorted index lo
    v_hi = np.searchsorted(cum, hi, side="right")
    return (v_lo + (rank - lo) * (v_hi - v_lo) + _OFFSET).astype(np.float64)


def match(x: np.ndarray, source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map ``x`` (from a volume with quantiles ``source``) onto ``reference`` quantiles.

    Equal source quantiles (a grey value that spans several levels) map to the mean of their
    reference quantiles; values beyond the source range clamp to the reference's ends.
    """
    src = np.asarray(source, np.float64)
    ref = np.asarray(reference, np.float64)
    knots, inverse = np.unique(src, return_inverse=True)
    targets = np.bincount(inverse, weights=ref) / np.bincount(inverse)
    if knots.size == 1:  # a constant volume: nothing to match
        return np.full(x.shape, targets[0], np.float32)
    return np.interp(x.astype(np.float64), knots, targets).astype(np.float32)


def input_range_problem(raw: Any, scale: float) -> str | None:
    """One line when ``raw`` times ``scale`` is far from the [0, 1] the models without an
    intensity reference were trained on (float data stored as 0-255, 12-bit data in uint16),
    judged on a central block of at most 16 x 256 x 256 voxels; else None."""
    shape = tuple(int(n) for n in raw.shape)
    half = (8, 128, 128)
    box = tuple(slice(max(0, n // 2 - h), n // 2 + h) for n, h in zip(shape, half, strict=True))
    values = np.asarray(raw[box], np.float64).ravel() * scale
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    low, high = (float(v) for v in np.quantile(values, [0.01, 0.99]))
    if high > 1.5 or low < -0.5 or high < 0.1:
        return (f"raw ({np.dtype(raw.dtype)}) reaches the model as values of about {low:.3g} to "
                f"{high:.3g} (1st-99th percentile), but it was trained on [0, 1]: rescale the "
                "data or set the stage's intensity_scale")  # fmt: skip
    return None


def model_preprocess(
    meta: Mapping[str, Any],
    raw: Any,
    *,
    intensity_scale: float | None = None,
    match_intensity: bool = True,
    match_spectrum: bool = True,
) -> PreprocessFn:
    """The network-input transform for ``raw`` under a model with metadata ``meta``.

    With a ``spectrum_reference`` in ``meta`` (and ``match_spectrum``), each read is first
    filtered in-plane to the reference's spectral shape (:mod:`.spectrum`; ``raw``'s spectrum
    is measured once, here) and the quantiles below are those of the filtered volume.

    With an ``intensity_reference`` in ``meta`` (and ``match_intensity``), raw grey values are
    matched to it and multiplied by the reference's ``scale`` (``intensity_scale`` is not used);
    ``raw``'s quantiles are measured once, here. Otherwise raw is multiplied by
    ``intensity_scale`` (default: :func:`unit_scale` of its dtype), as models without a reference
    were trained.
    """
    reference = meta.get("intensity_reference")
    raw_dtype = np.dtype(raw.dtype)
    filter_fn: Callable[[np.ndarray], np.ndarray] | None = None
    if match_spectrum and meta.get("spectrum_reference"):
        from synapse_toolkit.inference import spectrum

        if (problem := spectrum.too_small(tuple(raw.shape))) is not None:
            raise DataError(f"raw {problem} (match_spectrum = false skips it)")
        k = spectrum.matching_kernel(raw, meta["spectrum_reference"])
        raw = spectrum.Filtered(raw, k)

        def filter_fn(x: np.ndarray) -> np.ndarray:
            return spectrum.apply(x, k)

    if match_intensity and reference:
        ref_q = np.asarray(reference["quantiles"], np.float64)
        scale = np.float32(reference["scale"])
        src_q = quantiles([raw])

        def matched(x: np.ndarray) -> np.ndarray:
            if filter_fn is not None:
                x = filter_fn(x)
            return match(x, src_q, ref_q) * scale

        return matched
    if intensity_scale is None:
        intensity_scale = unit_scale(raw_dtype)
        problem = input_range_problem(raw, intensity_scale)
        if problem:
            logging.getLogger("syntk").warning(problem)
    factor = np.float32(intensity_scale)

    def scaled(x: np.ndarray) -> np.ndarray:
        if filter_fn is not None:
            x = filter_fn(x)
        return x.astype(np.float32) * factor

    return scaled
