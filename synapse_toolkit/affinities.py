"""Affinities from label volumes (numpy only; used by training targets and evaluation).

An affinity channel ``c`` with offset ``o = (dz, dy, dx)`` (offsets point backwards, i.e. have
non-positive components, as in MALA) states for voxel ``v`` whether ``v`` and ``v + o`` belong to
the same object. Label 0 is *boundary / unlabelled*: a voxel with label 0 has affinity 0 to every
neighbour, so boundaries become the cuts that separate objects. Voxels whose neighbour lies
outside the volume get affinity 0 and mask 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Offset = tuple[int, int, int]

#: The nearest-neighbour offsets (z, y, x), MALA convention.
NEAREST_NEIGHBOURS: tuple[Offset, ...] = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))


def long_range_offsets(distances: Sequence[int]) -> tuple[Offset, ...]:
    """Nearest neighbours plus, per distance ``d``, the three axis offsets ``-d``."""
    offs = list(NEAREST_NEIGHBOURS)
    for d in distances:
        d = int(d)
        if d <= 1:
            raise ValueError(f"long-range distance must be > 1, got {d}")
        offs += [(-d, 0, 0), (0, -d, 0), (0, 0, -d)]
    return tuple(offs)


def _pair_slices(
    shape: Sequence[int], offset: Offset
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices ``(a, b)`` so that ``arr[a]`` are the voxels v and ``arr[b]`` their neighbours v+o."""
    a, b = [], []
    for n, o in zip(shape, offset, strict=True):
        o = int(o)
        if abs(o) >= n:
            a.append(slice(0, 0))
            b.append(slice(0, 0))
        elif o <= 0:
            a.append(slice(-o, n))
            b.append(slice(0, n + o))
        else:
            a.append(slice(0, n - o))
            b.append(slice(o, n))
    return tuple(a), tuple(b)


def labels_to_affinities(
    labels: np.ndarray,
    offsets: Sequence[Offset] = NEAREST_NEIGHBOURS,
    *,
    background_is_boundary: bool = True,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Affinities ``(len(offsets), z, y, x)``: 1 where ``v`` and ``v + o`` share a non-zero label.

    With ``background_is_boundary=False`` label 0 is an ordinary object.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D (z, y, x), got shape {labels.shape}")
    out = np.zeros((len(offsets), *labels.shape), dtype=dtype)
    for c, off in enumerate(offsets):
        a, b = _pair_slices(labels.shape, off)
        same = labels[a] == labels[b]
        if background_is_boundary:
            same &= labels[a] != 0
        index: tuple[int | slice, ...] = (c, *a)
        out[index] = same
    return out


def affinity_mask(
    shape: Sequence[int], offsets: Sequence[Offset] = NEAREST_NEIGHBOURS
) -> np.ndarray:
    """1 where the neighbour ``v + o`` lies inside the volume, else 0 (float32)."""
    out = np.zeros((len(offsets), *shape), dtype=np.float32)
    for c, off in enumerate(offsets):
        a, _ = _pair_slices(shape, off)
        index: tuple[int | slice, ...] = (c, *a)
        out[index] = 1.0
    return out


def balance_weights(
    target: np.ndarray, mask: np.ndarray | None = None, clip: float = 0.05
) -> np.ndarray:
    """Per-voxel weights so that positive and negative targets contribute equally.

    Each class gets total weight 0.5 of the (masked) voxels; class fractions are clipped below at
    ``clip`` so that a crop almost without one class does not blow the weights up.
    """
    target = np.asarray(target) > 0.5
    m = np.ones(target.shape, dtype=bool) if mask is None else np.asarray(mask) > 0
    n = max(int(m.sum()), 1)
    frac_pos = float(np.clip((target & m).sum() / n, clip, 1 - clip))
    w = np.where(target, 0.5 / frac_pos, 0.5 / (1 - frac_pos)).astype(np.float32)
    return w * m
