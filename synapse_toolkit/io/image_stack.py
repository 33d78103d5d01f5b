"""TIFF and PNG image stacks as volumes (one 2D image per z-section, or one multi-page TIFF)."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np

from synapse_toolkit.data import Vec3, Volume
from synapse_toolkit.errors import DataError

_IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


def _natural_key(path: Path) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def list_stack_files(source: str | os.PathLike[str]) -> list[Path]:
    """Files of a stack: a directory's images, a glob pattern, or one file; natural sort order."""
    text = str(source)
    p = Path(text)
    if p.is_dir():
        files = [f for f in p.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES]
    elif any(c in text for c in "*?["):
        files = [Path(f) for f in glob.glob(text)]
    elif p.is_file():
        files = [p]
    else:
        raise DataError(f"{text}: no such file or directory")
    if not files:
        raise DataError(f"{text}: no .tif/.tiff/.png images found")
    return sorted(files, key=_natural_key)


def read_png_grey(path: str | os.PathLike[str]) -> np.ndarray:
    """A non-interlaced 8- or 16-bit greyscale PNG as a 2D array (zlib only, no image library)."""
    import struct
    import zlib

    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise DataError(f"{path}: not a PNG file")
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise DataError(f"{path}: PNG without IHDR")
    width, height, depth, colour, _, _, interlace = header
    if colour != 0 or depth not in (8, 16) or interlace:
        raise DataError(
            f"{path}: only non-interlaced 8/16-bit greyscale PNGs are read without imageio "
            f"(colour type {colour}, depth {depth}); pip install imageio"
        )
    bpp = depth // 8
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.int32)
    prev = np.zeros(stride, np.int32)
    for y in range(height):
        filt, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if filt == 0:
            cur = line
        elif filt == 2:
            cur = (line + prev) & 0xFF
        elif filt == 1:  # sub: a running sum per byte of the pixel
            cur = np.zeros(stride, np.int32)
            for k in range(bpp):
                cur[k::bpp] = np.cumsum(line[k::bpp]) & 0xFF
        else:  # average, paeth depend on the decoded bytes to the left: byte by byte
            if filt not in (3, 4):
                raise DataError(f"{path}: bad PNG filter {filt} in row {y}")
            ln, up, row = line.tolist(), prev.tolist(), [0] * stride
            for i in range(stride):
                left = row[i - bpp] if i >= bpp else 0
                if filt == 3:
                    pred = (left + up[i]) >> 1
                else:
                    up_left = up[i - bpp] if i >= bpp else 0
                    pa, pb = abs(up[i] - up_left), abs(left - up_left)
                    pc = abs(left + up[i] - 2 * up_left)
                    pred = left if pa <= pb and pa <= pc else (up[i] if pb <= pc else up_left)
                row[i] = (ln[i] + pred) & 0xFF
            cur = np.asarray(row, np.int32)
        out[y] = cur
        prev = cur
    if bpp == 1:
        return out.astype(np.uint8)
    return (out[:, 0::2] * 256 + out[:, 1::2]).astype(np.uint16)


def _read_image(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        try:
            import imageio.v3 as iio
        except ImportError:  # plain 8/16-bit grey PNGs need no extra package
            return read_png_grey(path)
        return np.asarray(iio.imread(path))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def read_image_stack(
    source: str | os.PathLike[str],
    voxel_size_nm: Sequence[float],
    offset_nm: Sequence[float] = (0.0, 0.0, 0.0),
) -> Volume:
    """Stack the images into a (z, y, x) volume; all sections must share shape and dtype."""
    files = list_stack_files(source)
    sections: list[np.ndarray] = []
    for f in files:
        img = _read_image(f)
        if img.ndim == 3 and len(files) == 1:  # a multi-page TIFF
            sections.extend(img)
            continue
        if img.ndim == 3 and img.shape[-1] in (3, 4):  # colour PNG → grey
            img = img[..., :3].mean(axis=-1).astype(img.dtype)
        if img.ndim != 2:
            raise DataError(f"{f}: expected a 2D image, got shape {img.shape}")
        sections.append(img)
    first = sections[0]
    for f, s in zip(files, sections, strict=False):
        if s.shape != first.shape or s.dtype != first.dtype:
            raise DataError(f"{f}: shape {s.shape} {s.dtype} differs from the first section "
                            f"{first.shape} {first.dtype}")  # fmt: skip
    # Volume checks that each placement has 3 finite values
    vs, off = cast(Vec3, tuple(voxel_size_nm)), cast(Vec3, tuple(offset_nm))
    return Volume(np.stack(sections), vs, off, name="raw")
