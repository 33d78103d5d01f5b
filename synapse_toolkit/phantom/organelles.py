"""Mitochondria: capsules along neurite axes, clipped to their host neuron."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synapse_toolkit.phantom.cells import NeuronField
from synapse_toolkit.phantom.noise import rng_for
from synapse_toolkit.phantom.params import EMPhantomParams

STREAM_MITO = 20


@dataclass
class Mitochondria:
    """Capsules from ``p0`` to ``p1`` (N, 3) nm with ``radius`` (N,) nm in ``neuron`` (N,)."""

    p0: np.ndarray
    p1: np.ndarray
    radius: np.ndarray
    neuron: np.ndarray
    phase: np.ndarray

    def __len__(self) -> int:
        return len(self.radius)


def place_mitochondria(params: EMPhantomParams, field_: NeuronField) -> Mitochondria:
    """Mitochondria inside neurites of radius >= 55 nm, density ``mitochondria_per_um3``."""
    rng = rng_for(params.seed, STREAM_MITO)
    vs = np.asarray(params.voxel_size_nm)
    extent = np.asarray(params.shape) * vs
    lo, hi = -np.full(3, 400.0), extent + 400.0
    host = [n for n in field_.neurites if len(n.points) > 8 and np.median(n.radii) >= 55.0]
    vol = float(np.prod((hi - lo) / 1000.0))
    n = int(rng.poisson(params.mitochondria_per_um3 * vol)) if host else 0
    out: list[tuple[np.ndarray, np.ndarray, float, int, float]] = []
    if n:
        weights = np.array([len(h.points) for h in host], float)
        weights /= weights.sum()
        for _ in range(6 * n):
            if len(out) >= n:
                break
            h = host[int(rng.choice(len(host), p=weights))]
            k = int(rng.integers(6, 24))
            i = int(rng.integers(0, max(1, len(h.points) - k)))
            j = min(i + k, len(h.points) - 1)
            p0, p1 = h.points[i], h.points[j]
            mid = 0.5 * (p0 + p1)
            if np.any(mid < lo) or np.any(mid > hi):
                continue
            r = float(np.clip(0.5 * h.radii[i : j + 1].min() * rng.uniform(0.8, 1.15), 22.0, 140.0))
            out.append((p0, p1, r, h.neuron, float(rng.uniform(0, 2 * np.pi))))
    if not out:
        z = np.zeros((0, 3))
        return Mitochondria(z, z, np.zeros(0), np.zeros(0, np.uint64), np.zeros(0))
    return Mitochondria(
        np.array([o[0] for o in out]),
        np.array([o[1] for o in out]),
        np.array([o[2] for o in out]),
        np.array([o[3] for o in out], np.uint64),
        np.array([o[4] for o in out]),
    )
