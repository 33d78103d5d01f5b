"""Compiled (numba) CREMI border mask: pixels near a truth label boundary, section by section.

A pixel is *non-interior* when one of its four neighbours (inside the image) carries another
id. A pixel is masked when some non-interior pixel of the same section lies within Euclidean
distance ``max_dist`` (pixels), i.e. ``dy**2 + dx**2 <= k_max``. Because ``max_dist`` is small,
this is computed exactly and separably: per row the distance ``h`` to the nearest non-interior
pixel in that row (clipped at ``r + 1``, ``r = floor(max_dist)``), then per pixel
``min over |dy| <= r of h(y + dy)**2 + dy**2 <= k_max``. Equal to the EDT formulation of the
reference (distance transform of the interior mask, ``<= max_dist``).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def border_section(img: np.ndarray, r: int, k_max: int, out: np.ndarray) -> int:
    """Fill ``out`` (bool, img.shape) with the border mask of one section ``img`` (2D).

    Returns the number of non-interior pixels (0: the section holds a single id and ``out`` is
    all False; the caller decides about the reference's single-label behaviour)."""
    h_, w_ = img.shape
    cap = r + 1
    h = np.empty((h_, w_), dtype=np.int32)
    n_border = 0
    for y in range(h_):
        last = -(1 << 30)
        for x in range(w_):
            v = img[y, x]
            b = (
                (y > 0 and img[y - 1, x] != v)
                or (y + 1 < h_ and img[y + 1, x] != v)
                or (x > 0 and img[y, x - 1] != v)
                or (x + 1 < w_ and img[y, x + 1] != v)
            )
            if b:
                last = x
                n_border += 1
            d = x - last
            h[y, x] = d if d < cap else cap
        last = 1 << 30
        for x in range(w_ - 1, -1, -1):
            if h[y, x] == 0:
                last = x
            d = last - x
            if d < h[y, x]:
                h[y, x] = d
    row = np.empty(w_, dtype=np.uint8)
    for y in range(h_):
        row[:] = 0
        for dy in range(-r, r + 1):
            yy = y + dy
            if yy < 0 or yy >= h_:
                continue
            lim = k_max - dy * dy
            if lim < 0:
                continue
            for x in range(w_):
                hv = h[yy, x]
                row[x] |= np.uint8(hv * hv <= lim)
        for x in range(w_):
            out[y, x] = row[x] != 0
    return n_border


@njit(cache=True, nogil=True)
def border_sections(
    vol: np.ndarray, z0: int, z1: int, r: int, k_max: int, out: np.ndarray
) -> np.ndarray:
    """:func:`border_section` for sections ``z0..z1-1`` of ``vol`` into ``out[z0:z1]``;
    returns the number of non-interior pixels of each of those sections."""
    counts = np.zeros(z1 - z0, dtype=np.int64)
    for z in range(z0, z1):
        counts[z - z0] = border_section(vol[z], r, k_max, out[z])
    return counts
