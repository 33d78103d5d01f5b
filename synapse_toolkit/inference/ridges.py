"""A classical second opinion on an affinity model's boundaries: dark ridges in the raw data.

A dark-ridge filter (the largest eigenvalue of the Hessian of each z-section's grey values,
scale-normalised, maximum over :data:`SIGMAS`) finds membranes that are visible as thin dark
lines. The share of its ridge pixels that a model marks as boundary (weakest affinity below the
quality module's ``BOUNDARY_AT``, within one in-plane pixel) is the model's *ridge recall*. A
model that sees faint membranes as interior (the failure mode the boundary fraction of
:mod:`synapse_toolkit.inference.quality` watches for) misses ridges; a model on tissue with
larger profiles does not. Blur removes faint membranes from the filter too, so a high ridge
recall says the visible membranes are traced, not that every membrane is.

Grey values are scaled by their 1st / 99th percentiles, taken from a strided sample of the volume.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synapse_toolkit.inference.quality import BOUNDARY_AT

#: Gaussian scales (pixels) of the Hessian
SIGMAS: tuple[float, ...] = (1.0, 2.0)


def grey_range(raw: Any, max_sections: int = 16) -> tuple[float, float]:
    """1st / 99th percentile of ``raw`` (z, y, x) from at most ``max_sections`` evenly spaced
    z-sections (a zarr or h5py array is read only there)."""
    nz = int(raw.shape[0])
    zs = np.unique(np.linspace(0, nz - 1, min(nz, max_sections)).astype(int))
    sample = np.concatenate([np.asarray(raw[int(z)], np.float32).ravel() for z in zs])
    lo, hi = np.percentile(sample, (1, 99))
    return float(lo), float(hi)


def ridge_strength(section: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(y, x) float32 dark-ridge strength of one section (grey values scaled to [0, 1] by
    ``lo``/``hi``): positive part of the Hessian's larger eigenvalue, times sigma^2, maximum over
    :data:`SIGMAS`."""
    from scipy import ndimage

    v = np.clip((np.asarray(section, np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    out = np.zeros(v.shape, np.float32)
    for s in SIGMAS:
        dyy = ndimage.gaussian_filter(v, s, order=(2, 0))
        dxx = ndimage.gaussian_filter(v, s, order=(0, 2))
        dxy = ndimage.gaussian_filter(v, s, order=(1, 1))
        lam = (dyy + dxx) / 2 + np.sqrt(((dyy - dxx) / 2) ** 2 + dxy**2)
        out = np.maximum(out, s * s * lam)
    return out


def ridge_map(raw: Any) -> np.ndarray:
    """(z, y, x) float32 ridge strength of every section of ``raw``, its grey values scaled by
    :func:`grey_range` (the whole volume in memory; :func:`ridge_recall` streams instead)."""
    lo, hi = grey_range(raw)
    return np.stack([ridge_strength(np.asarray(s), lo, hi) for s in raw])


def near_in_plane(mask: np.ndarray) -> np.ndarray:
    """``mask`` (y, x) dilated by one pixel (4-neighbourhood)."""
    from scipy import ndimage

    return ndimage.binary_dilation(mask, ndimage.generate_binary_structure(2, 1))


def ridge_recall(raw: Any, affs: Any, threshold: float) -> dict[str, float]:
    """Ridge fraction (pixels with strength above ``threshold``) and the share of them within
    one in-plane pixel of a model boundary; ``raw`` (z, y, x) and ``affs`` (C >= 3, z, y, x) on
    one grid, read a section at a time."""
    if tuple(raw.shape) != tuple(affs.shape[1:]):
        raise ValueError(f"raw {tuple(raw.shape)} and affinities {tuple(affs.shape)} differ")
    lo, hi = grey_range(raw)
    n_ridge = n_hit = n = 0
    for z in range(int(raw.shape[0])):
        ridge = ridge_strength(np.asarray(raw[z]), lo, hi) > threshold
        weakest = np.asarray(affs[:3, z], np.float32).min(axis=0)
        n_ridge += int(ridge.sum())
        n_hit += int((ridge & near_in_plane(weakest < BOUNDARY_AT)).sum())
        n += ridge.size
    return {
        "ridge_fraction": round(n_ridge / max(n, 1), 4),
        "ridge_recall": round(n_hit / max(n_ridge, 1), 4),
    }


def ridge_reference(raw: Any, affs: Any, threshold: float, measured_on: str) -> dict[str, Any]:
    """The ``ridges`` entry of a model's quality reference (what
    :func:`synapse_toolkit.inference.quality.check` compares a run with): the filter's
    ``threshold`` and the model's ridge recall on its validation data ``raw`` / ``affs``."""
    got = ridge_recall(raw, affs, threshold)
    return {"threshold": threshold, "recall": got["ridge_recall"],
            "ridge_fraction": got["ridge_fraction"], "measured_on": measured_on}  # fmt: skip
