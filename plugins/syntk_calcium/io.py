"""Calcium-imaging inputs: movies streamed frame by frame, summary images, neurofinder regions.

Sources (:func:`open_source`):

- a neurofinder folder: ``images/*.tif[f]`` (one frame per file, natural order),
  ``regions/regions.json`` (optional truth) and ``info.json`` (optional);
- a multi-frame TIFF movie ``(T, H, W)``, read one page at a time;
- a ``.npy`` movie ``(T, H, W)`` (memory-mapped) or a 2D summary image (``.npy`` or ``.tif``),
  e.g. a mean projection computed elsewhere.

Movies are never loaded whole: :func:`summary_images` makes the mean (and optionally the
standard-deviation, maximum and local-correlation) images in one streaming pass with float64
accumulators, so memory is a few (H, W) images whatever the number of frames.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.data import Regions
from synapse_toolkit.errors import DataError

PROJECTIONS = ("mean", "std", "max", "corr")
#: neighbour offsets (dy, dx) whose products are accumulated for the local correlation image;
#: with their mirror images they cover the 8 neighbours
_HALF_NEIGHBOURS = ((0, 1), (1, -1), (1, 0), (1, 1))


@dataclass
class CalciumSource:
    """An opened input: either a movie (frames streamed) or a ready 2D summary image."""

    path: Path
    kind: str  # "neurofinder" | "tiff-movie" | "npy-movie" | "summary"
    shape: tuple[int, int]  # (H, W) pixels
    n_frames: int  # 0 for a summary image
    frame_files: list[Path] = field(default_factory=list)
    summary: np.ndarray | None = None
    regions_path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def frames(self, chunk: int = 1) -> Iterator[np.ndarray]:
        """Frames in order, as ``(k, H, W)`` arrays of at most ``chunk`` frames (never all)."""
        if self.kind == "summary":
            raise DataError(f"{self.path}: a 2D summary image has no frames")
        if self.kind == "neurofinder":
            import tifffile

            for i in range(0, len(self.frame_files), chunk):
                batch = []
                for f in self.frame_files[i : i + chunk]:
                    img = _read_tiff(f, tifffile)
                    if img.shape != self.shape:
                        raise DataError(f"{f}: frame shape {img.shape} differs from {self.shape}")
                    batch.append(img)
                yield np.stack(batch)
        elif self.kind == "tiff-movie":
            import tifffile

            with tifffile.TiffFile(self.path) as tif:
                batch = []
                for page in tif.pages:
                    batch.append(np.asarray(page.asarray()))
                    if len(batch) == chunk:
                        yield np.stack(batch)
                        batch = []
                if batch:
                    yield np.stack(batch)
        else:  # npy-movie, memory-mapped
            arr = np.load(self.path, mmap_mode="r")
            for i in range(0, arr.shape[0], chunk):
                yield np.asarray(arr[i : i + chunk])

    def truth(self) -> Regions | None:
        """The ground-truth regions shipped with the source, if any."""
        if self.regions_path is None:
            return None
        return load_regions_file(self.regions_path)


def _read_tiff(path: Path, tifffile: Any) -> np.ndarray:
    try:
        return np.asarray(tifffile.imread(path))
    except Exception as exc:
        raise DataError(f"{path}: unreadable TIFF ({type(exc).__name__}: {exc})") from None


def _natural_key(path: Path) -> list[object]:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def load_regions_file(path: str | os.PathLike[str]) -> Regions:
    """neurofinder regions JSON (a list of ``{"coordinates": [[row, col], ...]}``)."""
    from synapse_toolkit.metrics.neurofinder import load_regions

    return load_regions(path)


def open_source(path: str | os.PathLike[str], regions: str | None = None) -> CalciumSource:
    """Open a neurofinder folder, a TIFF or .npy movie, or a 2D summary image (header only).

    ``regions`` names a truth JSON file explicitly (relative paths: from the working directory,
    else beside the input); by default truth is ``regions/regions.json`` inside a neurofinder
    folder, or ``<stem>.regions.json`` beside a movie or summary file.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    src: CalciumSource
    if p.is_dir():
        img_dir = p / "images" if (p / "images").is_dir() else p
        files = sorted(
            (f for f in img_dir.iterdir() if f.suffix.lower() in (".tif", ".tiff")),
            key=_natural_key,
        )
        if not files:
            raise DataError(f"{p}: no images/*.tif(f) frames (not a neurofinder folder)")
        import tifffile

        first = _read_tiff(files[0], tifffile)
        if first.ndim != 2:
            raise DataError(f"{files[0]}: expected one 2D frame per file, got {first.shape}")
        info_file = p / "info.json"
        info = json.loads(info_file.read_text()) if info_file.exists() else {}
        truth = p / "regions" / "regions.json"
        src = CalciumSource(p, "neurofinder", (int(first.shape[0]), int(first.shape[1])),
                            len(files), frame_files=files, info=info,
                            regions_path=truth if truth.exists() else None)  # fmt: skip
    elif p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"{p}: not a readable .npy array ({exc})") from None
        if arr.ndim == 2:
            src = CalciumSource(p, "summary", arr.shape, 0, summary=np.asarray(arr))
        elif arr.ndim == 3:
            src = CalciumSource(p, "npy-movie", arr.shape[1:], int(arr.shape[0]))
        else:
            raise DataError(f"{p}: expected a 2D image or a (T, H, W) movie, got {arr.shape}")
    elif p.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(p) as tif:
                n = len(tif.pages)
                shape = tuple(int(s) for s in tif.pages[0].shape)
        except Exception as exc:
            raise DataError(f"{p}: unreadable TIFF ({type(exc).__name__}: {exc})") from None
        if len(shape) != 2:
            raise DataError(f"{p}: expected 2D pages, got page shape {shape}")
        if n == 1:
            img = _read_tiff(p, tifffile)
            src = CalciumSource(p, "summary", img.shape, 0, summary=img)
        else:
            src = CalciumSource(p, "tiff-movie", (shape[0], shape[1]), n)
    else:
        raise DataError(
            f"{p}: not a neurofinder folder, a .tif/.tiff movie or a .npy movie/summary image"
        )
    beside = p.with_name(f"{p.stem}.regions.json")
    if src.regions_path is None and p.is_file() and beside.exists():
        src.regions_path = beside
    if regions is not None:
        rp = Path(regions)
        if not rp.is_absolute() and not rp.exists():
            rp = (p if p.is_dir() else p.parent) / rp
        if not rp.exists():
            raise DataError(f"{regions}: regions file not found")
        src.regions_path = rp
    return src


def summary_images(
    source: CalciumSource,
    projections: Sequence[str] = ("mean",),
    *,
    chunk: int = 16,
    max_frames: int | None = None,
) -> np.ndarray:
    """Projections ``(len(projections), H, W)`` float32 of the movie, in one streaming pass.

    Each of ``projections`` is ``"mean"``, ``"std"`` (population standard deviation over time),
    ``"max"`` or ``"corr"`` (local correlation image: the mean temporal Pearson correlation of
    each pixel with its 8 neighbours, those inside the image). A summary-image source has only
    its image: it is returned for ``"mean"``, and asking for another projection is an error.
    """
    bad = [q for q in projections if q not in PROJECTIONS]
    if bad:
        raise DataError(f"unknown projection {bad[0]!r}; choose from {PROJECTIONS}")
    if source.kind == "summary":
        if list(projections) != ["mean"]:
            raise DataError(
                f"{source.path}: a 2D summary image gives only the 'mean' projection, "
                f"not {list(projections)}"
            )
        return np.asarray(source.summary, dtype=np.float32)[None]
    h, w = source.shape
    total = np.zeros((h, w), np.float64)
    need_sq = "std" in projections or "corr" in projections
    total_sq = np.zeros((h, w), np.float64) if need_sq else None
    cross = (
        [np.zeros((h, w), np.float64) for _ in _HALF_NEIGHBOURS] if "corr" in projections else None
    )
    peak = np.full((h, w), -np.inf) if "max" in projections else None
    n = 0
    for block in source.frames(chunk):
        if max_frames is not None and n >= max_frames:
            break
        if max_frames is not None:
            block = block[: max_frames - n]
        b = block.astype(np.float64)
        total += b.sum(axis=0)
        if total_sq is not None:
            total_sq += (b * b).sum(axis=0)
        if peak is not None:
            np.maximum(peak, b.max(axis=0), out=peak)
        if cross is not None:
            for acc, (dy, dx) in zip(cross, _HALF_NEIGHBOURS, strict=True):
                a, c = _pair_views(b, dy, dx)
                acc[_pair_views(acc, dy, dx)[0]] += (a * c).sum(axis=0)
        n += b.shape[0]
    if n == 0:
        raise DataError(f"{source.path}: the movie has no frames")
    mean = total / n
    out = []
    for q in projections:
        if q == "mean":
            out.append(mean)
        elif q == "std":
            assert total_sq is not None
            out.append(np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0)))
        elif q == "max":
            assert peak is not None
            out.append(peak)
        else:
            assert cross is not None and total_sq is not None
            out.append(_local_correlation(mean, total_sq / n, [c / n for c in cross]))
    return np.stack(out).astype(np.float32)


def _pair_views(a: np.ndarray, dy: int, dx: int) -> tuple[Any, Any]:
    """For an array (..., H, W): pixels p and p + (dy, dx) where both lie inside. For a 2D
    accumulator the first item is the index (slices) of p, else the two views."""
    h, w = a.shape[-2:]
    ys = slice(0, h - dy)
    xs = slice(max(0, -dx), w - max(0, dx))
    ys2 = slice(dy, h)
    xs2 = slice(max(0, dx), w - max(0, -dx) if dx < 0 else w)
    if a.ndim == 2:
        return (ys, xs), (ys2, xs2)
    return a[..., ys, xs], a[..., ys2, xs2]


def _local_correlation(mean: np.ndarray, mean_sq: np.ndarray, mean_cross: list) -> np.ndarray:
    sd = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
    total = np.zeros_like(mean)
    count = np.zeros_like(mean)
    for mc, (dy, dx) in zip(mean_cross, _HALF_NEIGHBOURS, strict=True):
        p, q = _pair_views(mean, dy, dx)
        cov = mc[p] - mean[p] * mean[q]
        den = sd[p] * sd[q]
        r = np.divide(cov, den, out=np.zeros_like(cov), where=den > 0)
        total[p] += r
        count[p] += 1
        total[q] += r
        count[q] += 1
    return total / np.maximum(count, 1)
