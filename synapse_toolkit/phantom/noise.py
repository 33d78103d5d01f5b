"""Deterministic random fields defined on the global voxel grid.

Every value is a pure function of (seed, stream, global position), so any block of a volume can
be generated alone and agrees with its neighbours and with a one-shot generation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Shifts tile indices so negative ones (regions rendered beyond the volume) seed validly.
_TILE_BIAS = 1 << 24

#: Fixed tile of the white-noise grid; each tile has its own seed (seed, stream, tile index).
NOISE_TILE = (1, 128, 128)


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A generator for one named sub-stream of the global seed."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *(int(k) for k in keys)]))


def tile_noise(seed: int, stream: int, window: Sequence[slice]) -> np.ndarray:
    """Standard normal float32 noise for the global voxel ``window`` (may extend below 0)."""
    starts = [s.start for s in window]
    stops = [s.stop for s in window]
    out = np.empty([b - a for a, b in zip(starts, stops, strict=True)], dtype=np.float32)
    ranges = [range(a // t, -(-b // t)) for a, b, t in zip(starts, stops, NOISE_TILE, strict=True)]
    for tz in ranges[0]:
        for ty in ranges[1]:
            for tx in ranges[2]:
                tile_idx = (tz, ty, tx)
                rng = rng_for(seed, stream, *(i + _TILE_BIAS for i in tile_idx))
                tile = rng.standard_normal(NOISE_TILE, dtype=np.float32)
                src, dst = [], []
                for i, t, a, b in zip(tile_idx, NOISE_TILE, starts, stops, strict=True):
                    lo, hi = max(a, i * t), min(b, (i + 1) * t)
                    src.append(slice(lo - i * t, hi - i * t))
                    dst.append(slice(lo - a, hi - a))
                out[tuple(dst)] = tile[tuple(src)]
    return out


class SineField:
    """A smooth random scalar field: a sum of plane waves with random directions and phases.

    ``wavelength_nm`` gives the range of wavelengths; the field has standard deviation ~1.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        n_waves: int,
        wavelength_nm: tuple[float, float],
        anisotropy: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> None:
        directions = rng.standard_normal((n_waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        lam = rng.uniform(wavelength_nm[0], wavelength_nm[1], n_waves)
        self.k = directions * (2 * np.pi / lam)[:, None] * np.asarray(anisotropy)[None, :]
        self.phase = rng.uniform(0, 2 * np.pi, n_waves)
        self.scale = np.sqrt(2.0 / n_waves)

    @property
    def lipschitz(self) -> float:
        """Upper bound of the gradient norm (per nm) of the field."""
        return float(self.scale * np.linalg.norm(self.k, axis=1).sum())

    def __call__(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Evaluate at world coordinates (broadcastable arrays, nm)."""
        out = np.zeros(np.broadcast_shapes(np.shape(z), np.shape(y), np.shape(x)), np.float64)
        for (kz, ky, kx), ph in zip(self.k, self.phase, strict=True):
            out += np.sin(kz * z + ky * y + kx * x + ph)
        out *= self.scale
        return out

    def grid(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Evaluate on the grid spanned by 1-D world coordinates (faster than ``__call__``)."""
        out = np.zeros((len(z), len(y), len(x)), np.float32)
        for (kz, ky, kx), ph in zip(self.k, self.phase, strict=True):
            zy = (np.exp(1j * (kz * z + ph))[:, None] * np.exp(1j * ky * y)[None, :]).astype(
                np.complex64
            )
            out += (zy[:, :, None] * np.exp(1j * kx * x).astype(np.complex64)[None, None, :]).imag
        out *= self.scale
        return out


def hash_unit(values: np.ndarray, salt: int) -> np.ndarray:
    """A deterministic pseudo-random number in [0, 1) per integer value (vectorised)."""
    v = np.asarray(values, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = v * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt * 0xBF58476D1CE4E5B9 % (1 << 64))
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
