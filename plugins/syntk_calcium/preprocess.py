"""The seed system's preprocessing of a summary image, and the training targets built from ROIs.

:func:`clip_standardise`: clip above mean + ``n_sd`` standard deviations (bright vessels and
saturated cells stop dominating), then scale to zero mean and unit variance over the image.
:func:`flat_field`: divide by the image's smoothed brightness, so that cells in a dim part of the
field of view (vignetting, uneven expression) look like cells in a bright part.
"""

from __future__ import annotations

import numpy as np

from synapse_toolkit.data import Regions
from synapse_toolkit.errors import DataError


def clip_standardise(image: np.ndarray, n_sd: float = 3.0) -> np.ndarray:
    """``image`` (H, W) clipped at mean + ``n_sd`` SD, then standardised; float32.

    A constant image maps to zeros.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or img.size == 0:
        raise DataError(f"expected a non-empty 2D summary image, got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise DataError("summary image contains NaN or infinity")
    clipped = np.minimum(img, img.mean() + n_sd * img.std())
    sd = clipped.std()
    out = (clipped - clipped.mean()) / sd if sd > 0 else np.zeros_like(clipped)
    return out.astype(np.float32)


def flat_field(image: np.ndarray, sigma: float) -> np.ndarray:
    """``image`` (H, W) divided by its Gaussian-smoothed brightness (``sigma`` px); float32.

    The smoothed image is floored at 1e-3 of its maximum so dark corners do not blow up; a
    constant image maps to ones. Negative values (a baseline-subtracted image) are shifted to
    start at 0 first.
    """
    from scipy.ndimage import gaussian_filter

    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or img.size == 0:
        raise DataError(f"expected a non-empty 2D summary image, got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise DataError("summary image contains NaN or infinity")
    img = img - min(0.0, float(img.min()))
    background = gaussian_filter(img, sigma, mode="reflect")
    floor = max(1e-3 * float(background.max()), float(np.finfo(np.float32).tiny))
    return (img / np.maximum(background, floor)).astype(np.float32)


def prepare(image: np.ndarray, flat_field_sigma: float = 0.0, n_sd: float = 3.0) -> np.ndarray:
    """The network input of a summary image: :func:`flat_field` (when ``flat_field_sigma`` > 0),
    then :func:`clip_standardise`."""
    if flat_field_sigma > 0:
        image = flat_field(image, flat_field_sigma)
    return clip_standardise(image, n_sd)


def region_masks(
    regions: Regions, shape: tuple[int, int], core_radius: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """Training targets ``(mask, core)`` (H, W) uint8: the union of the regions, and a disc of
    ``core_radius`` px around each region's centre (separates touching cells)."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    core = np.zeros((h, w), np.uint8)
    r = int(np.ceil(core_radius))
    for c in regions.coordinates:
        inside = (c[:, 0] >= 0) & (c[:, 0] < h) & (c[:, 1] >= 0) & (c[:, 1] < w)
        c = c[inside]
        if len(c) == 0:
            continue
        mask[c[:, 0], c[:, 1]] = 1
        cy, cx = c.mean(axis=0)
        y0, y1 = max(0, int(cy) - r - 1), min(h, int(cy) + r + 2)
        x0, x1 = max(0, int(cx) - r - 1), min(w, int(cx) + r + 2)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        core[y0:y1, x0:x1] |= ((yy - cy) ** 2 + (xx - cx) ** 2 <= core_radius**2).astype(np.uint8)
    return mask, core
