"""Spectral matching: make a volume's in-plane sharpness look like a model's training data.

Quantile matching (:mod:`synapse_toolkit.inference.intensity`) undoes monotone grey-value
changes, but not a different point-spread function: a blurrier acquisition has less power at
the spatial frequencies of membranes, and a network trained on sharp data then sees faint
membranes as cell interior. Here the radial power spectrum of the (y, x) sections is measured on
the training data (stored in the model's metadata as ``spectrum_reference``) and on the volume to
be segmented; a small in-plane filter whose gain is ``sqrt(reference / volume)`` per radial
frequency (clipped to ``[1/3, 3]``, the mean kept) brings the volume's spectrum to the
reference's shape. Only the *shape* is matched (each spectrum is normalised to unit sum without
its zero frequency): overall contrast stays the quantile matching's job, which runs after it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: window side (px) of the in-plane spectrum; bins are 0 .. WINDOW // 2 cycles per window
WINDOW = 32
#: sections (spread evenly over z) and windows per section measured at most
MAX_SECTIONS = 24
MAX_WINDOWS_PER_SECTION = 64
#: filter side (px) and the range its gain is clipped to
KERNEL_SIZE = 11
GAIN_RANGE = (1.0 / 3.0, 3.0)


def _radius_bins(n: int) -> np.ndarray:
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.fftfreq(n)[None, :]
    return np.minimum(np.rint(np.hypot(fy, fx) * n).astype(np.int64), n // 2)


def too_small(shape: tuple[int, ...], window: int = WINDOW) -> str | None:
    """Why the in-plane spectrum of a volume of ``shape`` cannot be measured (None: it can)."""
    if len(shape) != 3 or shape[1] < window or shape[2] < window:
        return (f"{tuple(shape)}: matching the model's spectrum needs (z, y, x) sections of at "
                f"least {window} x {window} px")  # fmt: skip
    return None


def radial_spectrum(volume: Any, window: int = WINDOW) -> np.ndarray:
    """Normalised radial power spectrum of the (y, x) sections of ``volume`` (z, y, x).

    Measured on up to :data:`MAX_SECTIONS` sections spread over z (each read once; numpy, zarr
    or h5py), in Hann-windowed ``window`` x ``window`` tiles (at most
    :data:`MAX_WINDOWS_PER_SECTION` per section, spread over it); bin ``k`` = ``k`` cycles per
    window. The result sums to 1 over bins 1.. (bin 0 is set to 0).
    """
    shape = tuple(int(s) for s in volume.shape)
    if (problem := too_small(shape, window)) is not None:
        raise ValueError(problem)
    zs = np.unique(np.linspace(0, shape[0] - 1, min(MAX_SECTIONS, shape[0])).round().astype(int))
    ny, nx = shape[1] // window, shape[2] // window
    step = max(1, int(np.ceil(np.sqrt(ny * nx / MAX_WINDOWS_PER_SECTION))))
    taper = np.outer(np.hanning(window), np.hanning(window))
    bins = _radius_bins(window).ravel()
    per_bin = np.bincount(bins, minlength=window // 2 + 1)
    total = np.zeros(window // 2 + 1)
    count = 0
    for z in zs:
        section = np.asarray(volume[int(z)], dtype=np.float64)
        for iy in range(0, ny, step):
            for ix in range(0, nx, step):
                tile = section[iy * window : (iy + 1) * window, ix * window : (ix + 1) * window]
                power = np.abs(np.fft.fft2((tile - tile.mean()) * taper)) ** 2
                total += np.bincount(bins, power.ravel(), minlength=total.size) / per_bin
                count += 1
    total[0] = 0.0
    s = total[1:].sum()
    return total / s if s > 0 else total


def gain(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per radial bin, ``sqrt(reference / source)`` clipped to :data:`GAIN_RANGE`; bin 0 = 1."""
    src = np.asarray(source, np.float64)
    ref = np.asarray(reference, np.float64)
    if src.shape != ref.shape:
        raise ValueError(f"spectra of different lengths: {src.shape} vs {ref.shape}")
    g = np.sqrt(ref / np.maximum(src, 1e-12))
    g = np.where(src > 0, g, 1.0)
    g = np.clip(g, *GAIN_RANGE)
    g[0] = 1.0
    return g


def kernel(g: np.ndarray, size: int = KERNEL_SIZE, window: int = WINDOW) -> np.ndarray:
    """An in-plane ``size`` x ``size`` filter with radial gain ``g`` (bins of ``window``),
    normalised to unit sum (the mean grey value is kept)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    radius = np.hypot(fy, fx) * window
    response = np.interp(radius, np.arange(g.size), g)
    k = np.fft.fftshift(np.real(np.fft.ifft2(response)))
    return (k / k.sum()).astype(np.float32)


def matching_kernel(volume: Any, reference: dict[str, Any]) -> np.ndarray:
    """The filter that brings ``volume``'s sections to a ``spectrum_reference`` (metadata entry
    with ``radial_power``): :func:`kernel` of :func:`gain` of the two spectra."""
    return kernel(gain(radial_spectrum(volume), reference["radial_power"]))


def apply(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``x`` (z, y, x) or one (y, x) section filtered section by section with ``k`` (borders
    reflected, as ``scipy.ndimage``'s ``reflect``); float32. FFT convolution: a few times faster
    than direct convolution for an 11 x 11 kernel, equal to it to float32 rounding."""
    from scipy.signal import fftconvolve

    x = np.asarray(x, dtype=np.float32)
    r = k.shape[0] // 2
    pad = [(0, 0)] * (x.ndim - 2) + [(r, r), (r, r)]
    kk = k if x.ndim == 2 else k[None]
    out = fftconvolve(np.pad(x, pad, mode="symmetric"), kk, mode="valid")
    return np.asarray(out, dtype=np.float32)


class Filtered:
    """A read-only view of ``volume`` whose reads are filtered with ``k``: rounded to int16 for
    an 8-bit source (so :func:`~.intensity.quantiles` counts it exactly; the filter's overshoot
    stays far inside int16), float32 otherwise (16-bit grey values overshoot int16)."""

    def __init__(self, volume: Any, k: np.ndarray) -> None:
        self.volume = volume
        self.k = k
        self.shape = tuple(int(s) for s in volume.shape)
        dtype = np.dtype(volume.dtype)
        self._integer = np.issubdtype(dtype, np.integer) and dtype.itemsize == 1
        self.dtype = np.dtype(np.int16) if self._integer else np.dtype(np.float32)

    def __getitem__(self, index: Any) -> np.ndarray:
        block = apply(np.asarray(self.volume[index]), self.k)
        if self._integer:
            return np.clip(np.rint(block), -32768, 32767).astype(np.int16)
        return block
