"""From probability maps to neurofinder ROIs, and the classical local-maxima baseline.

:func:`extract_regions`: threshold the ROI probability, seed one region per connected component
of the thresholded *core* probability (a disc around each cell's centre), grow the seeds over the
ROI mask by a watershed on the ROI probability (touching cells split where the probability dips),
keep foreground components without a seed as regions of their own, then filter by size.

:func:`local_maxima_regions`: the classical bar: local maxima of a difference-of-Gaussians of the
standardised mean image above a threshold, a disc of ``radius`` px around each.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from synapse_toolkit.data import Regions
from synapse_toolkit.errors import DataError


def _check_map(name: str, arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim != 2:
        raise DataError(f"{name} must be a 2D (H, W) map, got shape {a.shape}")
    return a


def label_regions(
    mask_prob: np.ndarray,
    core_prob: np.ndarray | None = None,
    *,
    threshold: float = 0.5,
    core_threshold: float = 0.5,
    min_size: int = 20,
    max_size: int = 1000,
    keep_unseeded: bool = True,
) -> np.ndarray:
    """A label image (H, W) int32 (0 = background) of the ROIs; see :func:`extract_regions`."""
    prob = _check_map("mask probability", mask_prob)
    fg = prob > threshold
    if not fg.any():
        return np.zeros(prob.shape, np.int32)
    if core_prob is None:
        labels, _ = ndimage.label(fg)
    else:
        core = _check_map("core probability", core_prob)
        if core.shape != prob.shape:
            raise DataError(f"core map shape {core.shape} != mask map shape {prob.shape}")
        seeds, n = ndimage.label((core > core_threshold) & fg)
        if keep_unseeded:  # foreground components without any seed become seeds themselves
            comp, n_comp = ndimage.label(fg)
            seeded = np.zeros(n_comp + 1, bool)
            seeded[np.unique(comp[seeds > 0])] = True
            extra = ~seeded[comp] & fg
            if extra.any():
                extra_lab, n_extra = ndimage.label(extra)
                seeds = np.where(extra, extra_lab + n, seeds)
                n += n_extra
        markers = seeds.astype(np.int32)
        markers[~fg] = n + 1  # background marker: floods everything outside the mask
        cost = np.round((1.0 - np.clip(prob, 0, 1)) * 255).astype(np.uint8)
        labels = ndimage.watershed_ift(cost, markers)
        labels[(labels == n + 1) | ~fg] = 0
    sizes = np.bincount(labels.ravel())
    keep = (sizes >= min_size) & (sizes <= max_size)
    keep[0] = False
    remap = np.zeros(sizes.size, np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return remap[labels]


def labels_to_regions(labels: np.ndarray) -> Regions:
    """One region per label > 0, in label order; pixels as (row, col)."""
    lab = np.asarray(labels)
    flat = lab.ravel()
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=1)
    rows, cols = np.unravel_index(order, lab.shape)
    coords = np.stack([rows, cols], axis=1)
    out, start = [], int(counts[0])
    for k in range(1, counts.size):
        if counts[k]:
            out.append(coords[start : start + counts[k]])
        start += int(counts[k])
    return Regions(tuple(out))


def extract_regions(
    mask_prob: np.ndarray,
    core_prob: np.ndarray | None = None,
    *,
    threshold: float = 0.5,
    core_threshold: float = 0.5,
    min_size: int = 20,
    max_size: int = 1000,
    keep_unseeded: bool = True,
) -> Regions:
    """neurofinder regions from an ROI probability map (and optionally a core probability map).

    Sizes are in pixels; regions outside ``[min_size, max_size]`` are dropped.
    """
    return labels_to_regions(
        label_regions(
            mask_prob,
            core_prob,
            threshold=threshold,
            core_threshold=core_threshold,
            min_size=min_size,
            max_size=max_size,
            keep_unseeded=keep_unseeded,
        )
    )


def disc_regions(centres: np.ndarray, shape: tuple[int, int], radius: float) -> Regions:
    """A disc of ``radius`` px (clipped to the image) around each (row, col) centre."""
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = np.stack([yy[yy**2 + xx**2 <= radius**2], xx[yy**2 + xx**2 <= radius**2]], axis=1)
    out = []
    for cy, cx in np.asarray(centres, dtype=np.int64).reshape(-1, 2):
        pix = disc + np.array([cy, cx])
        ok = (pix[:, 0] >= 0) & (pix[:, 0] < shape[0]) & (pix[:, 1] >= 0) & (pix[:, 1] < shape[1])
        out.append(pix[ok])
    return Regions(tuple(out))


def local_maxima_regions(
    image: np.ndarray,
    *,
    sigma: float = 1.5,
    background_sigma: float = 6.0,
    threshold: float = 0.2,
    min_distance: int = 4,
    radius: float = 4.0,
) -> Regions:
    """Classical detector on a standardised mean image (see the module docstring)."""
    img = _check_map("image", image).astype(np.float64)
    dog = ndimage.gaussian_filter(img, sigma) - ndimage.gaussian_filter(img, background_sigma)
    size = 2 * int(min_distance) + 1
    peaks = (dog == ndimage.maximum_filter(dog, size=size, mode="nearest")) & (dog > threshold)
    centres = np.argwhere(peaks)
    order = np.argsort(-dog[peaks], kind="stable")
    return disc_regions(centres[order], img.shape, radius)


def regions_in_window(regions: Regions, rows: tuple[int, int], cols: tuple[int, int]) -> Regions:
    """The regions whose centre lies in ``[rows[0], rows[1]) x [cols[0], cols[1])``."""
    if len(regions) == 0:
        return regions
    c = regions.centers()
    ok = (c[:, 0] >= rows[0]) & (c[:, 0] < rows[1]) & (c[:, 1] >= cols[0]) & (c[:, 1] < cols[1])
    return Regions(tuple(r for r, k in zip(regions.coordinates, ok, strict=True) if k))
