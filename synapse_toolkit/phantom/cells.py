"""Neuron geometry: space-filling, self-avoiding neurite trees and the label field they define.

Neurites grow as persistent random walks (40-nm steps) with log-normal radii, varicosities and
branches; an occupancy grid keeps different neurons from crossing (:mod:`.growth`). The label of
any point is the neuron of the nearest *core point* (the neurite axis and a ring ``55 nm`` inside
the neurite surface),
looked up after a smooth random warp of space, so cells are elongated, fill all space (like
neuropil) and have irregular, non-convex boundaries. The geometry is global (a few MB even for
Gvoxel volumes); any block of the label volume is a pure function of the world position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synapse_toolkit.phantom.growth import grow_neurites
from synapse_toolkit.phantom.nearest import GridIndex
from synapse_toolkit.phantom.noise import SineField, rng_for
from synapse_toolkit.phantom.params import EMPhantomParams

_CELL_NM = 40.0  # occupancy grid spacing (as in growth.py)
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


def grow(params: EMPhantomParams) -> list[Neurite]:
    """The neurite trees of a phantom (see :mod:`synapse_toolkit.phantom.growth`)."""
    extent = np.asarray(params.shape) * np.asarray(params.voxel_size_nm)
    margin = np.asarray(params.margin_nm, np.float64)
    lo, hi = -margin, extent + margin
    inner_lo = np.floor(margin / _CELL_NM).astype(np.int64)
    inner_hi = np.ceil((margin + extent) / _CELL_NM).astype(np.int64)
    seed = int(rng_for(params.seed, STREAM_GROWTH).integers(1 << 31))
    pieces = grow_neurites(
        seed, lo, hi, inner_lo, inner_hi, params.fill_fraction, params.neurite_radius_median_nm,
        params.neurite_radius_sigma, params.neurite_radius_range_nm, params.branch_probability,
    )  # fmt: skip
    return [Neurite(n, pts, radii) for n, pts, radii in pieces]


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
        self.neurites = grow(params)
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
