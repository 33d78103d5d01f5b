"""TIFF and PNG image stacks as volumes (one 2D image per z-section, or one multi-page TIFF)."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synapse_toolkit.data import Volume
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


def _read_image(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        import imageio.v3 as iio

        return np.asarray(iio.imread(path))
    except Exception as exc:
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def read_image_stack(
    source: str | os.PathLike[str],
    voxel_size_nm: Sequence[float],
    offset_nm: Sequence[float] = (0.0, 0.0, 0.0),
) -> Volume:
    """Stack the images into a (z, y, x) volume; all sections must share shape and dtype."""
    files = list_stack_files(source)
    sections = []
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
    return Volume(np.stack(sections), tuple(voxel_size_nm), tuple(offset_nm), name="raw")
