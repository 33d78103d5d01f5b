"""Per-section translation alignment of serial-section EM volumes.

First, sections that are blank (missing) or whose phase correlation with *both* neighbours has
no distinct peak (defective: noise, folds, stains) are marked bad. Then each good section is
registered to the previous good section (optionally to several, taking the median of the implied
positions) by phase correlation (windowed, lightly smoothed, sub-pixel peak by parabola fit);
shifts accumulate along z and the median shift is removed, so the aligned volume stays centred.
Bad sections take the shift of the previous good section and never serve as reference.

The result is a :class:`~synapse_toolkit.data.SectionTransform` (``shifts_nm[z] = (dy, dx)``,
``aligned(y, x) = original(y - dy, x - dx)``). :func:`apply_transform` applies it to any volume
(linear interpolation for intensities, nearest for labels, exact slicing for whole-pixel shifts),
:func:`transform_points` moves point annotations with the same shifts (section chosen the way the
CREMI evaluation maps a point to a voxel) and ``transform.inverse()`` maps everything back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import fft, ndimage

from synapse_toolkit.data import Annotations, SectionTransform, Volume
from synapse_toolkit.errors import DataError


@dataclass(frozen=True)
class AlignmentReport:
    """Diagnostics of an estimate: per-section peak quality and which sections were skipped."""

    quality: np.ndarray
    skipped: tuple[int, ...] = field(default_factory=tuple)


def _prepare(section: np.ndarray, sigma_px: float) -> np.ndarray:
    img = section.astype(np.float32)
    if sigma_px > 0:
        img = ndimage.gaussian_filter(img, sigma_px)
    img -= img.mean()
    wy = np.hanning(img.shape[0]).astype(np.float32)
    wx = np.hanning(img.shape[1]).astype(np.float32)
    return img * wy[:, None] * wx[None, :]


def _parabola(cm: float, c0: float, cp: float) -> float:
    denom = cm - 2 * c0 + cp
    if denom == 0 or not np.isfinite(denom):
        return 0.0
    return float(np.clip(0.5 * (cm - cp) / denom, -0.5, 0.5))


def _correlation_surface(reference: np.ndarray, moving: np.ndarray, sigma_px: float) -> np.ndarray:
    """Partially whitened cross-correlation surface (|F|^0.5: full phase correlation
    over-weights pixel noise), standardised to zero mean and unit variance."""
    a = _prepare(reference, sigma_px)
    b = _prepare(moving, sigma_px)
    cross = fft.rfft2(b) * np.conj(fft.rfft2(a))
    cross /= np.maximum(np.sqrt(np.abs(cross)), 1e-9)
    corr = fft.irfft2(cross, s=a.shape)
    return (corr - corr.mean()) / (corr.std() + 1e-12)


def _patch_origins(size: int, patch: int, step: int) -> list[int]:
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def phase_correlation(
    reference: np.ndarray,
    moving: np.ndarray,
    sigma_px: float = 1.0,
    max_shift_px: int | None = None,
    patch_px: int | None = None,
    patch_step_px: int | None = None,
) -> tuple[np.ndarray, float]:
    """Displacement (dy, dx) px of ``moving`` relative to ``reference`` and a peak quality.

    ``moving(y, x) ≈ reference(y - dy, x - dx)``. Quality is the peak height over the standard
    deviation of the correlation surface (large = distinct peak).

    With ``patch_px``, the sections are cut into overlapping square patches (every
    ``patch_step_px``, default half a patch) and the standardised correlation surfaces of all
    patch pairs are summed before the peak is taken: a vote for the displacement most of the
    section agrees on, so a few structures that move between sections (oblique neurites) do not
    carry the estimate the way they can carry one whole-section correlation. Displacements are
    then limited to less than half a patch.
    """
    ny_full, nx_full = reference.shape
    if patch_px is not None and min(ny_full, nx_full) > patch_px:
        step = patch_step_px or max(patch_px // 2, 1)
        corr = np.zeros((patch_px, patch_px))
        for y in _patch_origins(ny_full, patch_px, step):
            for x in _patch_origins(nx_full, patch_px, step):
                win = (slice(y, y + patch_px), slice(x, x + patch_px))
                corr += _correlation_surface(reference[win], moving[win], sigma_px)
        limit = patch_px // 2 - 1
        max_shift_px = limit if max_shift_px is None else min(max_shift_px, limit)
    else:
        corr = _correlation_surface(reference, moving, sigma_px)
    ny, nx = corr.shape
    if max_shift_px is not None:
        yy = np.minimum(np.arange(ny), ny - np.arange(ny))
        xx = np.minimum(np.arange(nx), nx - np.arange(nx))
        corr = np.where(
            (yy[:, None] <= max_shift_px) & (xx[None, :] <= max_shift_px), corr, -np.inf
        )
    py, px = np.unravel_index(int(np.argmax(corr)), corr.shape)
    peak = corr[py, px]
    finite = corr[np.isfinite(corr)]
    quality = float((peak - finite.mean()) / (finite.std() + 1e-12))
    sy = _parabola(corr[(py - 1) % ny, px], peak, corr[(py + 1) % ny, px])
    sx = _parabola(corr[py, (px - 1) % nx], peak, corr[py, (px + 1) % nx])
    sy = np.nan_to_num(sy, posinf=0.0, neginf=0.0)
    sx = np.nan_to_num(sx, posinf=0.0, neginf=0.0)
    dy = py + sy if py <= ny // 2 else py + sy - ny
    dx = px + sx if px <= nx // 2 else px + sx - nx
    return np.array([dy, dx], np.float64), quality


class _SectionCache:
    """Sections of an array-like (h5py/zarr/numpy) read on demand, the last few kept."""

    def __init__(self, data: Any, keep: int = 6) -> None:
        self.data = data
        self.keep = keep
        self.cache: dict[int, np.ndarray] = {}

    def __getitem__(self, z: int) -> np.ndarray:
        if z not in self.cache:
            if len(self.cache) >= self.keep:
                self.cache.pop(min(self.cache))
            self.cache[z] = np.asarray(self.data[z])
        return self.cache[z]


def _is_blank(section: np.ndarray, min_std: float) -> bool:
    return float(np.std(section)) < min_std


def estimate_translations(
    raw: Any,
    voxel_size_nm: tuple[float, float, float],
    *,
    sigma_px: float = 1.0,
    max_shift_px: int | None = 64,
    min_quality: float = 3.0,
    min_relative_quality: float = 0.6,
    min_std: float = 1.0,
    integer: bool = True,
    n_references: int = 1,
    patch_px: int | None = 96,
    patch_step_px: int | None = 32,
) -> tuple[SectionTransform, AlignmentReport]:
    """Estimate per-section shifts (nm) that align ``raw`` (z, y, x) section by section.

    ``min_std`` (intensity units) marks blank sections; a section whose best neighbour match has a
    peak quality below ``min_quality`` or below ``min_relative_quality`` x the median quality of
    all neighbouring pairs is defective; both are skipped. ``integer`` rounds every
    section-to-section shift to whole pixels before accumulating (no drift from sub-pixel bias;
    exact slicing for labels). Each section is registered to up to ``n_references`` previous good
    sections and the median of the implied positions is taken. The default, 1 (a pure chain of
    neighbour registrations), removes added misalignment most exactly on the phantoms
    (``benchmarks/eval_synapses.py``); more references damp drift on volumes whose content
    moves little between sections. ``patch_px``/``patch_step_px`` make every registration a vote
    of overlapping patches (see :func:`phase_correlation`; ``None`` correlates whole sections);
    shifts are then limited to ``min(max_shift_px, patch_px // 2 - 1)`` per section pair.
    """
    corr_kw = {"patch_px": patch_px, "patch_step_px": patch_step_px}
    data = raw if hasattr(raw, "shape") and hasattr(raw, "__getitem__") else np.asarray(raw)
    if len(data.shape) != 3:
        raise DataError(f"alignment needs a (z, y, x) volume, got shape {tuple(data.shape)}")
    nz = data.shape[0]
    sections = _SectionCache(data)
    # pass 1: blank sections, and sections that match neither neighbour (defective)
    blank = [_is_blank(sections[z], min_std) for z in range(nz)]
    pair_q = np.zeros(max(nz - 1, 0))
    pair_d = np.zeros((max(nz - 1, 0), 2))
    for z in range(nz - 1):
        if not (blank[z] or blank[z + 1]):
            pair_d[z], pair_q[z] = phase_correlation(
                sections[z], sections[z + 1], sigma_px, max_shift_px, **corr_kw
            )
    quality = np.zeros(nz)
    for z in range(nz):
        left = pair_q[z - 1] if z > 0 else 0.0
        right = pair_q[z] if z < nz - 1 else 0.0
        quality[z] = max(left, right) if nz > 1 else np.inf
    valid_q = pair_q[pair_q > 0]
    threshold = (
        max(min_quality, min_relative_quality * float(np.median(valid_q)))
        if valid_q.size
        else min_quality
    )
    skipped = [z for z in range(nz) if blank[z] or quality[z] < threshold]
    # pass 2: chain the good sections; each against up to n_references previous good ones
    cum = np.zeros((nz, 2))
    refs: list[int] = []
    for z in range(nz):
        if z in skipped:
            cum[z] = cum[refs[-1]] if refs else 0.0
            continue
        if not refs:
            refs.append(z)
            continue
        estimates = []
        for k, r in enumerate(reversed(refs[-n_references:])):
            if r == z - 1:
                rel, q = pair_d[r], pair_q[r]
            else:
                rel, q = phase_correlation(
                    sections[r], sections[z], sigma_px, max_shift_px, **corr_kw
                )
            if q >= threshold or k == 0:
                estimates.append(cum[r] + (np.round(rel) if integer else rel))
        est = np.median(np.asarray(estimates), axis=0)
        cum[z] = np.round(est) if integer else est
        refs.append(z)
    good = [z for z in range(nz) if z not in skipped]
    centre = np.median(cum[good], axis=0) if good else np.zeros(2)
    shifts_px = -(cum - centre)
    if integer:
        shifts_px = np.round(shifts_px)
    shifts_nm = shifts_px * np.asarray(voxel_size_nm[1:])
    return SectionTransform(shifts_nm), AlignmentReport(quality, tuple(skipped))


def _shift_section(sec: np.ndarray, shift_px: np.ndarray, order: int, fill: float) -> np.ndarray:
    if order == 0:  # nearest neighbour = the rounded whole-pixel shift, exact for uint64 ids
        shift_px = np.round(shift_px)
    if np.allclose(shift_px, np.round(shift_px)):
        dy, dx = (int(round(v)) for v in shift_px)
        out = np.full_like(sec, fill)
        ny, nx = sec.shape
        ys, yd = (
            (slice(0, ny - dy), slice(dy, ny)) if dy >= 0 else (slice(-dy, ny), slice(0, ny + dy))
        )
        xs, xd = (
            (slice(0, nx - dx), slice(dx, nx)) if dx >= 0 else (slice(-dx, nx), slice(0, nx + dx))
        )
        if ys.stop > ys.start and xs.stop > xs.start:
            out[yd, xd] = sec[ys, xs]
        return out
    return ndimage.shift(sec, shift_px, order=order, mode="constant", cval=fill)


def apply_transform(
    data: np.ndarray,
    transform: SectionTransform,
    voxel_size_nm: tuple[float, float, float],
    *,
    labels: bool = False,
    fill: float | int = 0,
) -> np.ndarray:
    """Shift every section of ``data`` ((z, y, x) or (c, z, y, x)) by the transform.

    Labels use nearest-neighbour (whole-pixel shifts are exact slicing); intensities are
    interpolated linearly. Voxels shifted in from outside get ``fill``.
    """
    arr = np.asarray(data)
    nz = arr.shape[-3]
    if transform.shifts_nm.shape[0] != nz:
        raise DataError(
            f"transform has {transform.shifts_nm.shape[0]} sections but the volume has {nz}"
        )
    shifts_px = transform.shifts_nm / np.asarray(voxel_size_nm[1:])
    order = 0 if labels else 1
    out = np.empty_like(arr)
    flat_in = arr.reshape(-1, *arr.shape[-3:])
    flat_out = out.reshape(-1, *arr.shape[-3:])
    for c in range(flat_in.shape[0]):
        for z in range(nz):
            flat_out[c, z] = _shift_section(flat_in[c, z], shifts_px[z], order, fill)
    return out


def transform_points(
    points_nm: np.ndarray, transform: SectionTransform, volume: Volume
) -> np.ndarray:
    """Move world points (N, 3) by the shift of their section of ``volume``.

    The section is the one the CREMI evaluation would look the point up in:
    ``round((z - offset_z) / voxel_z)`` (half away from zero), clipped to the volume.
    """
    pts = np.array(points_nm, dtype=np.float64).reshape(-1, 3)
    zf = (pts[:, 0] - volume.offset_nm[0]) / volume.voxel_size_nm[0]
    z = np.clip(np.floor(zf + 0.5).astype(int), 0, len(transform.shifts_nm) - 1)
    pts[:, 1:] += transform.shifts_nm[z]
    return pts


def transform_annotations(
    ann: Annotations, transform: SectionTransform, volume: Volume
) -> Annotations:
    """The annotations with every site moved by :func:`transform_points` (same ids, partners)."""
    moved = transform_points(ann.world_locations(), transform, volume)
    return Annotations(
        ann.ids, ann.types, moved - np.asarray(ann.offset_nm), ann.partners, ann.offset_nm,
        ann.comments,
    )  # fmt: skip
