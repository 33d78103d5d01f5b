"""Training-time augmentation of (raw, labels) crops (numpy + scipy; no torch).

:func:`sample_augmented` cuts a crop with a margin from a (padded) volume, warps raw and labels
together with one coordinate map (elastic deformation + misaligned sections), crops the centre,
then applies flips, transposes, intensity changes and missing sections. Labels always follow the
geometry of the raw data exactly (nearest-neighbour sampling), so targets computed afterwards are
consistent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from synapse_toolkit.cremi_ids import NEURON_IGNORE
from synapse_toolkit.inference.intensity import unit_scale

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply and how strongly (``0``/``False`` switches one off)."""

    flip: bool = True
    #: axes that may be swapped with each other (e.g. ``(1, 2)`` = in-plane y/x; ``(0, 1, 2)``
    #: for isotropic data)
    transpose_axes: tuple[int, ...] = (1, 2)
    intensity_scale: float = 0.1  # raw * U(1-s, 1+s)
    intensity_shift: float = 0.1  # raw + U(-s, s)
    gamma: float = 0.0  # raw ** exp(U(-g, g))
    elastic_spacing: Triple = (10, 10, 10)  # control-point spacing (voxels)
    elastic_sigma: float = 1.5  # displacement std at control points (voxels)
    margin: Triple = (4, 8, 8)  # extra voxels read on each side for warping
    misalign_prob: float = 0.0  # per crop: shift the sections from a random z on (y, x)
    misalign_max: int = 4  # max shift in voxels
    missing_prob: float = 0.0  # per section: replace by zeros
    noise_std: float = 0.0  # additive Gaussian noise
    blur_prob: float = 0.0  # per crop: Gaussian blur (defocus) ...
    blur_sigma: float = 1.0  # ... with sigma ~ U(0, blur_sigma) voxels on every axis
    blur_in_plane: bool = False  # ... or on y and x only (serial sections: each one blurred)
    #: per section: raw * U(1-s, 1+s) + U(-s, s) on its own (sections differ in brightness)
    section_intensity: float = 0.0
    #: per crop: give a share U(0, dark_objects_fraction) of the labelled objects dark cytoplasm
    #: (grey U(*dark_objects_level) on the unit scale, texture kept at half contrast); label 0
    #: (boundary) and unknown voxels stay as they are
    dark_objects_prob: float = 0.0
    dark_objects_fraction: float = 0.5
    dark_objects_level: tuple[float, float] = (0.2, 0.4)

    def __post_init__(self) -> None:
        from synapse_toolkit.errors import ConfigError

        lo, hi = self.dark_objects_level
        if not (0 <= self.dark_objects_prob <= 1 and 0 <= self.dark_objects_fraction <= 1
                and lo <= hi):  # fmt: skip
            raise ConfigError(
                "augment: dark_objects_prob and dark_objects_fraction must be in [0, 1] and "
                f"dark_objects_level [low, high], got {self.dark_objects_prob}, "
                f"{self.dark_objects_fraction}, {list(self.dark_objects_level)}"
            )

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str = "augment") -> AugmentConfig:
        """From a TOML table (lists become tuples); an unknown key is a ConfigError naming
        ``where`` and the key."""
        from dataclasses import fields

        from synapse_toolkit.errors import ConfigError

        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key; expected one of {sorted(known)}")
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in table.items()
        }
        return cls(**values)


def _coordinates(
    shape: Sequence[int], margin: Sequence[int], cfg: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    grid = np.stack(
        np.meshgrid(
            *[np.arange(s, dtype=np.float32) + m for s, m in zip(shape, margin, strict=True)],
            indexing="ij",
        )
    )
    if cfg.elastic_sigma > 0:
        coarse = [
            max(2, int(np.ceil(s / sp)) + 1)
            for s, sp in zip(shape, cfg.elastic_spacing, strict=True)
        ]
        for axis in range(3):
            if margin[axis] == 0:
                continue
            d = rng.normal(0.0, cfg.elastic_sigma, size=coarse).astype(np.float32)
            zoom = [s / c for s, c in zip(shape, coarse, strict=True)]
            up = ndimage.zoom(d, zoom, order=3, mode="nearest", grid_mode=True)
            up = up[: shape[0], : shape[1], : shape[2]]
            grid[axis] += np.clip(up, -margin[axis], margin[axis])
    if cfg.misalign_prob > 0 and rng.random() < cfg.misalign_prob and shape[0] > 1:
        z0 = int(rng.integers(1, shape[0]))
        only_one = rng.random() < 0.5  # a single slipped section, or a shifted stack
        z1 = z0 + 1 if only_one else shape[0]
        for axis in (1, 2):
            m = min(cfg.misalign_max, margin[axis])
            grid[axis, z0:z1] += float(rng.integers(-m, m + 1))
    for axis in range(3):
        np.clip(grid[axis], 0, shape[axis] + 2 * margin[axis] - 1, out=grid[axis])
    return grid


def sample_augmented(
    raw: np.ndarray,
    labels: np.ndarray,
    start: Sequence[int],
    shape: Sequence[int],
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Augmented ``(raw float32 in ~[0, 1], labels)`` crops of ``shape`` at ``start``.

    ``raw``/``labels`` must contain ``start - margin`` … ``start + shape + margin`` (pad volumes
    beforehand). ``raw`` is scaled by :func:`~synapse_toolkit.inference.intensity.unit_scale`.
    """
    shape = tuple(int(s) for s in shape)
    margin = tuple(int(m) for m in cfg.margin)
    lo = [int(s) - m for s, m in zip(start, margin, strict=True)]
    hi = [int(s) + n + m for s, n, m in zip(start, shape, margin, strict=True)]
    if min(lo) < 0 or any(h > d for h, d in zip(hi, raw.shape, strict=True)):
        raise ValueError(f"crop {lo}..{hi} (with margin) exceeds volume shape {raw.shape}")
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    r = np.asarray(raw[box], dtype=np.float32) * np.float32(unit_scale(raw.dtype))
    lab = np.asarray(labels[box])
    if cfg.elastic_sigma > 0 or cfg.misalign_prob > 0:
        coords = _coordinates(shape, margin, cfg, rng)
        r = ndimage.map_coordinates(r, coords, order=1, mode="nearest").astype(np.float32)
        # nearest neighbour by integer indexing: exact for every uint64 id (map_coordinates
        # computes in float64, which turns CREMI's ignore id and ids above 2**53 into others)
        lab = lab[tuple(np.rint(c).astype(np.intp) for c in coords)]
    else:  # no warp: plain centre crop
        inner = tuple(slice(m, m + n) for m, n in zip(margin, shape, strict=True))
        r, lab = r[inner], lab[inner]
    if cfg.flip:
        for axis in range(3):
            if rng.random() < 0.5:
                r, lab = np.flip(r, axis), np.flip(lab, axis)
    axes = list(cfg.transpose_axes)
    if len(axes) > 1:
        perm = list(range(3))
        shuffled = list(rng.permutation(axes))
        for a, b in zip(axes, shuffled, strict=True):
            perm[a] = int(b)
        if shape[perm[0]] == shape[0] and shape[perm[1]] == shape[1] and shape[perm[2]] == shape[2]:
            r, lab = np.transpose(r, perm), np.transpose(lab, perm)
    if cfg.dark_objects_prob and rng.random() < cfg.dark_objects_prob:
        r = darken_objects(r, lab, cfg, rng)
    r = apply_photometric(r, cfg, rng)
    return np.ascontiguousarray(r, dtype=np.float32), np.ascontiguousarray(lab)


def darken_objects(
    r: np.ndarray, lab: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """A random share of the crop's labelled objects with dark cytoplasm (neurites darker than
    gala's, as other FIB-SEM volumes show them); membranes between two darkened objects then
    stand out less."""
    ids = object_ids(lab)
    n = int(round(rng.uniform(0, cfg.dark_objects_fraction) * len(ids)))
    if n == 0:
        return r
    mask = np.isin(lab, rng.choice(ids, size=n, replace=False))
    return dark_cytoplasm(r, mask, rng.uniform(*cfg.dark_objects_level))


def object_ids(lab: np.ndarray) -> np.ndarray:
    """The labelled objects' ids: neither boundary (0) nor CREMI's unknown id."""
    ids = np.unique(lab)
    ids = ids[ids != 0]
    if ids.dtype == np.uint64:
        ids = ids[ids != NEURON_IGNORE]
    return ids


def dark_cytoplasm(r: np.ndarray, mask: np.ndarray, level: float) -> np.ndarray:
    """A float32 copy of ``r`` whose ``mask`` voxels sit at grey ``level`` (same units as ``r``)
    with their texture at half contrast."""
    out = r.astype(np.float32, copy=True)
    if mask.any():
        out[mask] = np.float32(level) + (out[mask] - out[mask].mean()) * np.float32(0.5)
    return out


def apply_photometric(r: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Blur, intensity scale/shift, per-section intensity, gamma, noise and missing sections
    (in that order) of a float32 crop; geometry untouched."""
    if cfg.blur_prob and rng.random() < cfg.blur_prob:
        sigma = rng.uniform(0, cfg.blur_sigma)
        r = ndimage.gaussian_filter(
            r, (0.0, sigma, sigma) if cfg.blur_in_plane else sigma, mode="reflect"
        )
    if cfg.intensity_scale or cfg.intensity_shift:
        r = r * rng.uniform(1 - cfg.intensity_scale, 1 + cfg.intensity_scale) + rng.uniform(
            -cfg.intensity_shift, cfg.intensity_shift
        )
    if cfg.section_intensity:
        s = cfg.section_intensity
        n = int(r.shape[0])
        scale = rng.uniform(1 - s, 1 + s, size=n).astype(np.float32)
        r = r * scale[:, None, None] + rng.uniform(-s, s, size=n).astype(np.float32)[:, None, None]
    if cfg.gamma:
        r = np.clip(r, 0, None) ** np.exp(rng.uniform(-cfg.gamma, cfg.gamma))
    if cfg.noise_std:
        r = r + rng.normal(0, cfg.noise_std, size=r.shape).astype(np.float32)
    if cfg.missing_prob:
        missing = rng.random(r.shape[0]) < cfg.missing_prob
        r[missing] = 0.0
    return r


def darken_labelled(
    raw: np.ndarray, labels: np.ndarray, fraction: float, level: float, seed: int, name: str
) -> tuple[np.ndarray, int]:
    """``raw`` (its dtype kept) with a seeded ``fraction`` of the labelled objects given dark
    cytoplasm of grey ``level`` (:func:`dark_cytoplasm`), and how many objects that is."""
    from synapse_toolkit.errors import ConfigError

    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"{name}: the darkened fraction must be in (0, 1], got {fraction}")
    ids = object_ids(labels)
    if not len(ids):
        raise ConfigError(f"{name}: no labelled objects to darken")
    chosen = np.random.default_rng(seed).choice(
        ids, size=max(1, round(fraction * len(ids))), replace=False
    )
    r = dark_cytoplasm(raw, np.isin(labels, chosen), level)
    if raw.dtype.kind in "ui":
        r = np.clip(np.rint(r), 0, np.iinfo(raw.dtype).max)
    return r.astype(raw.dtype), int(len(chosen))
