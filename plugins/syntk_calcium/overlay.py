"""ROI outlines on the mean image as a PNG (plain zlib PNG writer: no imaging library needed)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from synapse_toolkit.data import Regions
from synapse_toolkit.metrics.neurofinder import match_regions

FOUND = (40, 220, 40)
MISSED = (230, 40, 40)
FALSE = (250, 220, 0)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of ``rgb`` (H, W, 3) uint8."""
    a = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))  # fmt: skip

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))  # fmt: skip


def _outline(region: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, bool)
    ok = (region[:, 0] >= 0) & (region[:, 0] < shape[0]) & (region[:, 1] >= 0)
    ok &= region[:, 1] < shape[1]
    m[region[ok, 0], region[ok, 1]] = True
    return m & ~ndimage.binary_erosion(m)


def overlay_rgb(
    image: np.ndarray,
    prediction: Regions,
    truth: Regions | None = None,
    *,
    threshold_px: float = 5.0,
    scale: int = 2,
) -> np.ndarray:
    """(H*scale, W*scale, 3) uint8: grey image (1st-99th percentile) with ROI outlines."""
    img = np.asarray(image, np.float64)
    lo, hi = np.percentile(img, [1, 99])
    grey = np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)
    shape = (img.shape[0], img.shape[1])
    if truth is None:
        drawn = [(r, FOUND) for r in prediction.coordinates]
    else:
        matches = match_regions(truth, prediction, threshold_px)
        mt = {i for i, _ in matches}
        mp = {j for _, j in matches}
        drawn = [(prediction.coordinates[j], FOUND) for j in sorted(mp)]
        drawn += [(r, MISSED) for i, r in enumerate(truth.coordinates) if i not in mt]
        drawn += [(r, FALSE) for j, r in enumerate(prediction.coordinates) if j not in mp]
    for region, colour in drawn:
        rgb[_outline(region, shape)] = colour
    return np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)


def overlay_png(
    path: str | os.PathLike[str],
    image: np.ndarray,
    prediction: Regions,
    truth: Regions | None = None,
    *,
    threshold_px: float = 5.0,
    scale: int = 2,
) -> Path:
    """Write :func:`overlay_rgb` as a PNG (atomically)."""
    target = Path(path)
    data = png_bytes(overlay_rgb(image, prediction, truth, threshold_px=threshold_px, scale=scale))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target
