"""Neuron geometry: space-filling, self-avoiding neurite trees and the label field they define.

Neurites grow as persistent random walks (40-nm steps) with log-normal radii, varicosities and
branches; an occupancy grid keeps different neurons from crossing. The label of any point is the
neuron of the nearest *core point* (the neurite axis and a ring at ``radius - 35 nm`` around it),
looked up after a smooth random warp of space, so cells are elongated, fill all space (like
neuropil) and have irregular, non-convex boundaries. The geometry is global (a few MB even for
Gvoxel volumes); any block of the label volume is a pure function of the world position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synapse_toolkit.phantom.nearest import GridIndex
from synapse_toolkit.phantom.noise import SineField, rng_for
from synapse_toolkit.phantom.params import EMPhantomParams

_CELL_NM = 40.0  # occupancy grid spacing
_STEP_NM = 40.0  # neurite growth step
_CORE_GAP_NM = 55.0  # core ring sits this far inside the neurite surface
_SAMPLE_NM = 30.0  # spacing of core points along the axis
_RING_SPACING_NM = 45.0  # spacing of core points around the ring
_QUERY_CHUNK = 1 << 20
_GRID_NM = 60.0  # cell of the nearest-core-point index

#: Seed streams (so adding a feature never changes another feature's random numbers).
STREAM_GROWTH = 1
STREAM_WARP = 2


@dataclass
class Neurite:
    """One unbranched piece of a neuron: an axis polyline (nm, z y x) with a radius per node."""

    neuron: int
    points: np.ndarray
    radii: np.ndarray


def _ball_offsets(radius_cells: float) -> np.ndarray:
    r = int(np.ceil(radius_cells))
    g = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1].reshape(3, -1).T
    keep = (g**2).sum(1) <= max(radius_cells, 0.5) ** 2
    return g[keep]


class _Grower:
    """Grows neurites into an occupancy grid (cells hold the owning neuron id, 0 = free)."""

    def __init__(self, params: EMPhantomParams) -> None:
        self.p = params
        self.rng = rng_for(params.seed, STREAM_GROWTH)
        extent = np.asarray(params.shape) * np.asarray(params.voxel_size_nm)
        margin = np.asarray(params.margin_nm)
        self.lo = -margin
        self.hi = extent + margin
        self.grid_shape = tuple(int(np.ceil(s)) for s in (self.hi - self.lo) / _CELL_NM)
        self.occ = np.zeros(self.grid_shape, dtype=np.int32)
        inner_lo = np.floor(margin / _CELL_NM).astype(int)
        inner_hi = np.ceil((margin + extent) / _CELL_NM).astype(int)
        self.inner = tuple(slice(a, b) for a, b in zip(inner_lo, inner_hi, strict=True))
        self.inner_cells = int(np.prod([s.stop - s.start for s in self.inner]))
        self.inner_filled = 0
        self._ball_cache: dict[int, np.ndarray] = {}
        self._probe_cache: dict[int, np.ndarray] = {}
        self.neurites: list[Neurite] = []

    # -- occupancy -------------------------------------------------------------------------
    def _ball(self, radius_nm: float) -> np.ndarray:
        key = round(radius_nm / _CELL_NM * 4)
        if key not in self._ball_cache:
            self._ball_cache[key] = _ball_offsets(key / 4)
        return self._ball_cache[key]

    def _probe(self, radius_nm: float) -> np.ndarray:
        key = round(radius_nm / _CELL_NM * 4)
        if key not in self._probe_cache:
            ball = _ball_offsets(key / 4)
            if len(ball) > 160:
                ball = ball[np.random.default_rng(key).choice(len(ball), 160, replace=False)]
            self._probe_cache[key] = ball
        return self._probe_cache[key]

    def _cells(self, points: np.ndarray) -> np.ndarray:
        return np.floor((points - self.lo) / _CELL_NM).astype(np.int64)

    def _blocked(self, centres: np.ndarray, radius: float, neuron: int) -> np.ndarray:
        """Fraction of probe cells around each centre owned by another neuron (1 outside)."""
        off = self._probe(radius)
        cells = self._cells(centres)[:, None, :] + off[None, :, :]
        inside = np.all((cells >= 0) & (cells < np.asarray(self.grid_shape)), axis=2)
        cz, cy, cx = (np.clip(cells[..., i], 0, self.grid_shape[i] - 1) for i in range(3))
        owner = self.occ[cz, cy, cx]
        other = (owner != 0) & (owner != neuron) & inside
        return other.mean(axis=1)

    def _mark(self, centre: np.ndarray, radius: float, neuron: int) -> None:
        cells = self._cells(centre[None])[0] + self._ball(radius)
        ok = np.all((cells >= 0) & (cells < np.asarray(self.grid_shape)), axis=1)
        cz, cy, cx = cells[ok].T
        free = self.occ[cz, cy, cx] == 0
        cz, cy, cx = cz[free], cy[free], cx[free]
        self.occ[cz, cy, cx] = neuron
        ins = (
            (cz >= self.inner[0].start) & (cz < self.inner[0].stop)
            & (cy >= self.inner[1].start) & (cy < self.inner[1].stop)
            & (cx >= self.inner[2].start) & (cx < self.inner[2].stop)
        )  # fmt: skip
        self.inner_filled += int(ins.sum())

    def _in_domain(self, p: np.ndarray) -> bool:
        return bool(np.all(p >= self.lo) and np.all(p < self.hi))

    # -- growth ----------------------------------------------------------------------------
    def _radius(self) -> float:
        p = self.p
        r = np.exp(np.log(p.neurite_radius_median_nm) + p.neurite_radius_sigma * self.rng.normal())
        return float(np.clip(r, *p.neurite_radius_range_nm))

    def _walk(
        self, start: np.ndarray, direction: np.ndarray, r0: float, neuron: int, branches: list
    ) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        pts, radii = [start.copy()], [r0]
        p, d = start.copy(), direction / np.linalg.norm(direction)
        log_r, bouton = np.log(r0), 0
        for _ in range(4000):
            if rng.random() < 0.002:
                break
            log_r = 0.92 * log_r + 0.08 * np.log(r0) + 0.05 * rng.normal()
            if bouton == 0 and r0 < 130 and rng.random() < 0.025:
                bouton = int(rng.integers(4, 8))
            r = float(np.exp(log_r))
            if bouton:
                r *= 1.0 + 0.9 * np.sin(np.pi * bouton / 8.0)
                bouton -= 1
            cand = d[None, :] + rng.normal(size=(7, 3)) * np.array([[0.22]] + [[0.8]] * 6)
            cand /= np.linalg.norm(cand, axis=1, keepdims=True)
            blocked = self._blocked(p[None, :] + _STEP_NM * cand, r, neuron)
            best = 0 if blocked[0] <= 0.05 else int(np.argmin(blocked))
            if blocked[best] > 0.25:
                break
            d = 0.7 * d + 0.3 * cand[best]
            d /= np.linalg.norm(d)
            p = p + _STEP_NM * cand[best]
            if not self._in_domain(p):
                break
            pts.append(p.copy())
            radii.append(r)
            self._mark(p, r, neuron)
            if rng.random() < self.p.branch_probability:
                bd = d + rng.normal(size=3) * 1.1
                branches.append((p.copy(), bd, r0 * rng.uniform(0.45, 0.9)))
        return np.asarray(pts), np.asarray(radii)

    def grow(self) -> list[Neurite]:
        rng = self.rng
        neuron, failures = 0, 0
        span = self.hi - self.lo
        while self.inner_filled < self.p.fill_fraction * self.inner_cells and failures < 400:
            start = self.lo + rng.random(3) * span
            r0 = self._radius()
            if self._blocked(start[None], r0 * 0.8, -1)[0] > 0.05:
                failures += 1
                continue
            failures = 0
            neuron += 1
            direction = rng.normal(size=3)
            self._mark(start, r0, neuron)
            branches: list = []
            fwd_p, fwd_r = self._walk(start, direction, r0, neuron, branches)
            bwd_p, bwd_r = self._walk(start, -direction, r0, neuron, branches)
            pts = np.concatenate([bwd_p[::-1], fwd_p[1:]])
            radii = np.concatenate([bwd_r[::-1], fwd_r[1:]])
            self.neurites.append(Neurite(neuron, pts, radii))
            for _ in range(6):
                if not branches:
                    break
                bp, bd, br = branches.pop(0)
                b_p, b_r = self._walk(bp, bd, br, neuron, [])
                if len(b_p) > 2:
                    self.neurites.append(Neurite(neuron, b_p, b_r))
        return self.neurites


def _core_points(neurite: Neurite, rng: np.random.Generator) -> np.ndarray:
    """Axis samples plus rings of radius ``r - 35 nm`` (shape (n, 3))."""
    pts, radii = neurite.points, neurite.radii
    if len(pts) == 1:
        return pts.copy()
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, int(np.ceil(arc[-1] / _SAMPLE_NM)) + 1)
    s = np.linspace(0.0, arc[-1], n)
    axis = np.stack([np.interp(s, arc, pts[:, i]) for i in range(3)], axis=1)
    r = np.interp(s, arc, radii)
    tangent = np.gradient(axis, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    ref = np.where(np.abs(tangent[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    u = np.cross(tangent, ref)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(tangent, u)
    core = r - _CORE_GAP_NM
    ringed = np.flatnonzero(core > 12.0)
    if not len(ringed):
        return axis
    # one ring per ringed sample, ~_RING_SPACING_NM between its points
    n_ring = np.maximum(6, np.ceil(2 * np.pi * core[ringed] / _RING_SPACING_NM)).astype(np.int64)
    owner = np.repeat(ringed, n_ring)
    start = np.repeat(np.cumsum(n_ring) - n_ring, n_ring)
    k = np.arange(len(owner)) - start
    ang = rng.uniform(0, 2 * np.pi) + 2 * np.pi * k / np.repeat(n_ring, n_ring)
    c = core[owner][:, None]
    ring = axis[owner] + c * (np.cos(ang)[:, None] * u[owner] + np.sin(ang)[:, None] * v[owner])
    return np.concatenate([axis, ring])


class NeuronField:
    """The global neuron geometry and its label field (ids 1..n_neurons, uint64)."""

    def __init__(self, params: EMPhantomParams) -> None:
        self.params = params
        self.voxel_size = np.asarray(params.voxel_size_nm, dtype=np.float64)
        grower = _Grower(params)
        self.neurites = grower.grow()
        self.n_neurons = max((n.neuron for n in self.neurites), default=0)
        rng = rng_for(params.seed, STREAM_GROWTH, 1)
        clouds = [_core_points(n, rng) for n in self.neurites]
        sizes = [len(c) for c in clouds]
        owners = [
            np.full(k, n.neuron, np.uint32) for k, n in zip(sizes, self.neurites, strict=True)
        ]
        self.point_label = np.concatenate(owners) if owners else np.ones(1, np.uint32)
        points = np.concatenate(clouds) if clouds else np.zeros((1, 3))
        del clouds, owners
        self.index = GridIndex(points, _GRID_NM)
        del points
        self.point_label = self.point_label[self.index.order]  # in the index's sorted order
        wrng = rng_for(params.seed, STREAM_WARP)
        amp = params.warp_amplitude_nm
        self._warps = [(amp, SineField(wrng, 5, (600.0, 1500.0))) for _ in range(3)] + [
            (amp * 0.2, SineField(wrng, 5, (150.0, 300.0))) for _ in range(3)
        ]

    @property
    def points(self) -> np.ndarray:
        """Core points (n, 3) nm; ``point_label`` holds their neuron ids."""
        return self.index.points

    def warp(self, pts: np.ndarray) -> np.ndarray:
        """Warped positions (N, 3) nm at which the nearest core point is looked up."""
        z, y, x = pts[:, 0], pts[:, 1], pts[:, 2]
        out = pts.copy()
        for i, (amp, field) in enumerate(self._warps):
            out[:, i % 3] += amp * field(z, y, x)
        return out

    def label_at(self, pts_nm: np.ndarray) -> np.ndarray:
        """Neuron id (uint64) at world points (N, 3) nm."""
        pts = np.asarray(pts_nm, dtype=np.float64).reshape(-1, 3)
        out = np.empty(len(pts), np.uint64)
        for a in range(0, len(pts), _QUERY_CHUNK):
            chunk = pts[a : a + _QUERY_CHUNK]
            idx = self.index.nearest_sorted(self.warp(chunk))
            out[a : a + len(chunk)] = self.point_label[idx]  # uint32 -> uint64
        return out

    def label_window(self, window: tuple[slice, slice, slice]) -> np.ndarray:
        """Labels of the global voxel window (indices may lie outside the volume)."""
        shape = tuple(s.stop - s.start for s in window)
        out = np.empty(shape, np.uint64)
        per_section = shape[1] * shape[2]
        step = max(1, _QUERY_CHUNK // max(per_section, 1))
        y = np.arange(window[1].start, window[1].stop) * self.voxel_size[1]
        x = np.arange(window[2].start, window[2].stop) * self.voxel_size[2]
        for z0 in range(0, shape[0], step):
            zs = np.arange(window[0].start + z0, min(window[0].stop, window[0].start + z0 + step))
            z = zs * self.voxel_size[0]
            zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
            pts = np.stack([zz.ravel(), yy.ravel(), xx.ravel()], axis=1)
            for i, (amp, field) in enumerate(self._warps):
                pts[:, i % 3] += amp * field.grid(z, y, x).ravel()
            idx = self.index.nearest_sorted(pts)
            out[z0 : z0 + len(zs)] = self.point_label[idx].reshape(len(zs), shape[1], shape[2])
        return out
