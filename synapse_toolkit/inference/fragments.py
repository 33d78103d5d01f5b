"""Fragments for waterz seeded from the distance transform of a boundary map, section by section.

For serial-section EM whose affinity model does not connect sections: each z-section's boundary
map (1 - mean of its in-plane affinities) is thresholded to cell interiors, their distance
transform (optionally smoothed) gives one seed per local maximum, and a seeded watershed on the
boundary map grows every seed to a fragment. Thin gaps in a membrane then do not join two cells
into one fragment, as they can in the affinity watershed's basins; waterz merges the fragments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numba import njit

#: the fragment methods the ``waterz`` stage knows (``affinities``: waterz's own watershed)
METHODS = ("affinities", "distance_2d")
#: ``distance_2d`` defaults: interior = boundary below this, distance-transform smoothing (px),
#: seed spacing (px)
BOUNDARY_THRESHOLD = 0.5
DT_SIGMA = 1.0
MIN_DISTANCE = 3


def boundary_map(affinities: np.ndarray) -> np.ndarray:
    """(z, y, x) float32 boundary probability: 1 - mean of the pixel's y and x affinities.

    Affinity ``c`` at a voxel links it to its predecessor along axis ``c``; each pixel averages
    the in-plane edges on both sides of it (edges leaving the volume are left out).
    """
    a = np.asarray(affinities, dtype=np.float32)
    if a.ndim != 4 or a.shape[0] < 3:
        raise ValueError(f"affinities must be (>=3, z, y, x), got shape {a.shape}")
    total = np.zeros(a.shape[1:], np.float32)
    count = np.zeros(a.shape[1:], np.float32)
    for axis in (1, 2):  # channel c <-> spatial axis c of (z, y, x)
        edge = a[axis]
        tail = [slice(None)] * 3
        tail[axis] = slice(1, None)
        head = [slice(None)] * 3
        head[axis] = slice(None, -1)
        total[tuple(tail)] += edge[tuple(tail)]  # edge to the predecessor
        count[tuple(tail)] += 1
        total[tuple(head)] += edge[tuple(tail)]  # edge to the successor
        count[tuple(head)] += 1
    return 1.0 - total / np.maximum(count, 1)


@njit(cache=True, nogil=True)
def _flood_2d(cost: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Seeded watershed on a uint8 (y, x) ``cost``, 4-connected, in place on ``labels`` (> 0:
    seeds): the lowest pixel next to a region joins it, ties first in, first out."""
    h, w = cost.shape
    n = h * w
    nxt = np.full(n, -1, np.int64)
    head = np.full(256, -1, np.int64)
    tail = np.full(256, -1, np.int64)
    flat = labels.ravel()
    c = cost.ravel()
    level = 256
    for i in range(n):
        if flat[i] > 0:
            v = c[i]
            if tail[v] < 0:
                head[v] = i
            else:
                nxt[tail[v]] = i
            tail[v] = i
            level = min(level, v)
    while level < 256:
        i = head[level]
        if i < 0:
            level += 1
            continue
        head[level] = nxt[i]
        if head[level] < 0:
            tail[level] = -1
        y, x = i // w, i % w
        for k in range(4):
            yy, xx = y, x
            if k == 0:
                yy = y - 1
            elif k == 1:
                yy = y + 1
            elif k == 2:
                xx = x - 1
            else:
                xx = x + 1
            if yy < 0 or yy >= h or xx < 0 or xx >= w:
                continue
            j = yy * w + xx
            if flat[j] != 0:
                continue
            flat[j] = flat[i]
            v = c[j]
            nxt[j] = -1
            if tail[v] < 0:
                head[v] = j
            else:
                nxt[tail[v]] = j
            tail[v] = j
            level = min(level, v)
    return labels


def flood_2d(cost: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """int64 (y, x) labels: every pixel reachable from a marker (> 0) joins one by a seeded
    watershed on ``cost`` (uint8), 4-connected; ties are taken first in, first out."""
    cost = np.ascontiguousarray(cost, dtype=np.uint8)
    labels = np.ascontiguousarray(markers, dtype=np.int64).copy()
    if cost.ndim != 2 or cost.shape != labels.shape:
        raise ValueError(f"cost {cost.shape} and markers {labels.shape} must be the same 2D shape")
    return np.asarray(_flood_2d(cost, labels))


def boundary_map_banded(affinities: Any, z0: int, z1: int, band_rows: int = 256) -> np.ndarray:
    """:func:`boundary_map` of sections ``z0:z1`` of a (C >= 3, z, y, x) array (zarr, h5py or
    numpy), read in bands of ``band_rows`` rows (use the store's chunk rows): each chunk of those
    sections is read once and one band is held at a time. Equal to
    ``boundary_map(affinities[:, z0:z1])`` bit for bit: a row needs only its own in-plane edges
    and the next row's, so the last row of a band is finished with the next band, from the two
    rows carried over."""
    n_y, n_x = int(affinities.shape[2]), int(affinities.shape[3])
    out = np.empty((z1 - z0, n_y, n_x), np.float32)
    carry: np.ndarray | None = None  # the last two rows read (y and x edges)
    done = 0  # out rows [0, done) are final
    for y0 in range(0, n_y, max(int(band_rows), 2)):
        y1 = min(y0 + max(int(band_rows), 2), n_y)
        core = np.asarray(affinities[1:3, z0:z1, y0:y1], dtype=np.float32)
        buf = core if carry is None else np.concatenate([carry, core], axis=2)
        buf_lo = y1 - buf.shape[2]
        full = np.zeros((3, *buf.shape[1:]), np.float32)  # channel 0 (z) is not used
        full[1:3] = buf
        stop = y1 if y1 == n_y else y1 - 1  # the band's last row waits for the next row's edges
        out[:, done:stop] = boundary_map(full)[:, done - buf_lo : stop - buf_lo]
        done = stop
        carry = buf[:, :, -2:]
        del core, buf, full
    return out


def distance_fragments_2d(
    affinities: np.ndarray,
    boundary_threshold: float = BOUNDARY_THRESHOLD,
    dt_sigma: float = DT_SIGMA,
    min_distance: int = MIN_DISTANCE,
) -> np.ndarray:
    """uint64 (z, y, x) fragments, each within one section, ids unique over the volume (>= 1).

    Seeds: local maxima (within ``min_distance`` px) of the distance transform of the pixels
    whose boundary value is below ``boundary_threshold``, Gaussian-smoothed by ``dt_sigma`` px;
    every pixel goes to a seed by a watershed on the boundary map (256 grey levels).
    """
    return fragments_from_boundary(
        boundary_map(affinities), boundary_threshold, dt_sigma, min_distance
    )


def fragments_from_boundary(
    bmap: np.ndarray,
    boundary_threshold: float = BOUNDARY_THRESHOLD,
    dt_sigma: float = DT_SIGMA,
    min_distance: int = MIN_DISTANCE,
) -> np.ndarray:
    """:func:`distance_fragments_2d` from a (z, y, x) boundary map (:func:`boundary_map`)."""
    from scipy import ndimage

    if not 0.0 < boundary_threshold <= 1.0 or dt_sigma < 0 or min_distance < 1:
        raise ValueError(
            f"need 0 < boundary_threshold <= 1, dt_sigma >= 0, min_distance >= 1; got "
            f"{boundary_threshold}, {dt_sigma}, {min_distance}"
        )
    out = np.zeros(bmap.shape, np.uint64)
    base = 0
    size = 2 * int(min_distance) + 1
    for z in range(bmap.shape[0]):
        b = bmap[z]
        inside = b < boundary_threshold
        if not inside.any():  # no interior: one fragment for the section
            out[z] = base + 1
            base += 1
            continue
        dt = ndimage.distance_transform_edt(inside).astype(np.float32)
        if dt_sigma > 0:
            dt = ndimage.gaussian_filter(dt, dt_sigma)
        peaks = inside & (dt == ndimage.maximum_filter(dt, size=size)) & (dt > 0)
        markers, n = ndimage.label(peaks)
        cost = np.round(np.clip(b, 0.0, 1.0) * 255).astype(np.uint8)
        frag = flood_2d(cost, markers)
        out[z] = frag.astype(np.uint64) + np.uint64(base)
        base += n
    return out


def make_fragments(affinities: np.ndarray, setting: Mapping[str, Any] | None) -> np.ndarray | None:
    """Fragments for ``setting`` (``{"method": ..., **parameters}``), or ``None`` for waterz's
    own watershed (``method = "affinities"``, an empty setting or ``None``)."""
    if not setting or setting.get("method", "affinities") == "affinities":
        return None
    method = setting["method"]
    if method != "distance_2d":
        raise ValueError(f"unknown fragment method {method!r}; expected one of {METHODS}")
    return distance_fragments_2d(affinities, **distance_parameters(setting))


def distance_parameters(setting: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`fragments_from_boundary` in a ``distance_2d`` setting."""
    return {
        "boundary_threshold": float(setting.get("boundary_threshold", BOUNDARY_THRESHOLD)),
        "dt_sigma": float(setting.get("dt_sigma", DT_SIGMA)),
        "min_distance": int(setting.get("min_distance", MIN_DISTANCE)),
    }
