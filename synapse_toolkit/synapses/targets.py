"""Training targets for synapse models, built from CREMI annotations (or a phantom CREMI file).

Every target lives on a voxel *grid* (shape, voxel size, offset; z, y, x, nm) — usually the grid
of the raw / neuron-id volume. Voxel ``i`` of a grid sits at world position
``offset_nm + i * voxel_size_nm``: that is the convention of the CREMI evaluation, which maps a
point to the voxel ``round((location + annotation offset - volume offset) / resolution)``.
Distances are Euclidean in nm, so anisotropic voxels are respected.

Targets:

- :func:`point_mask` — voxels within ``radius_nm`` of pre- or post-synaptic sites;
- :func:`cleft_mask` — voxels carrying a cleft id (CREMI background and invalid ids excluded);
- :func:`signed_proximity` — EMSynConn's target in [-1, 1]: ``1 - d / radius`` near a
  pre-synaptic site, ``-(1 - d / radius)`` near a post-synaptic site, 0 elsewhere; optionally
  restricted to the site's own segment, so the sign flips exactly at the synaptic membrane;
- :func:`partner_vectors` — for voxels near a post-synaptic site, the vector (nm) to its
  pre-synaptic partner (Synful's regression target), with the mask of defined voxels.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND, CLEFT_INVALID
from synapse_toolkit.data import Annotations, Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.io.cremi import CremiData


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape (z, y, x), voxel size and offset in nm."""

    shape: tuple[int, int, int]
    voxel_size_nm: tuple[float, float, float]
    offset_nm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def of(cls, volume: Volume) -> Grid:
        return cls(volume.spatial_shape, volume.voxel_size_nm, volume.offset_nm)

    def to_voxel(self, world_nm: np.ndarray) -> np.ndarray:
        """Continuous voxel coordinates of world points (N, 3)."""
        pts = np.asarray(world_nm, np.float64).reshape(-1, 3)
        return (pts - np.asarray(self.offset_nm)) / np.asarray(self.voxel_size_nm)

    def to_world(self, voxels: np.ndarray) -> np.ndarray:
        vox = np.asarray(voxels, np.float64).reshape(-1, 3)
        return vox * np.asarray(self.voxel_size_nm) + np.asarray(self.offset_nm)

    def nearest_voxel(self, world_nm: np.ndarray) -> np.ndarray:
        """Integer voxel index of world points (round half away from zero, as CREMI's server)."""
        v = self.to_voxel(world_nm)
        return (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int64)

    def crop(self, roi: Sequence[slice]) -> Grid:
        """The sub-grid covering ``roi`` (slices with explicit start/stop)."""
        starts = [s.start or 0 for s in roi]
        stops = [s.stop if s.stop is not None else n for s, n in zip(roi, self.shape, strict=True)]
        off = self.to_world(np.asarray(starts))[0]
        shape = tuple(int(b - a) for a, b in zip(starts, stops, strict=True))
        return Grid((shape[0], shape[1], shape[2]), self.voxel_size_nm, (off[0], off[1], off[2]))


def _balls(
    grid: Grid, centers_nm: np.ndarray, radius_nm: float
) -> Iterator[tuple[int, tuple[slice, slice, slice], np.ndarray]]:
    """For each centre, the bounding box (clipped to the grid) and distances (nm) inside it."""
    if radius_nm <= 0:
        raise DataError(f"target radius must be positive, got {radius_nm} nm")
    vs = np.asarray(grid.voxel_size_nm)
    reach = np.ceil(radius_nm / vs).astype(int)
    shape = np.asarray(grid.shape)
    for k, c in enumerate(np.asarray(centers_nm, np.float64).reshape(-1, 3)):
        cv = grid.to_voxel(c)[0]
        lo = np.maximum(np.floor(cv).astype(int) - reach, 0)
        hi = np.minimum(np.ceil(cv).astype(int) + reach + 1, shape)
        if np.any(hi <= lo):
            continue
        axes = [
            (np.arange(a, b) - cv[i]) * vs[i] for i, (a, b) in enumerate(zip(lo, hi, strict=True))
        ]
        d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
        box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        yield k, box, np.sqrt(d2)


def _site_locations(ann: Annotations, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, world locations) of the sites of one type (``"pre"``/``"post"``/``"all"``)."""
    types = np.asarray(ann.types, dtype=object)
    if kind == "all":
        sel = np.ones(len(ann), bool)
    else:
        want = Annotations.PRE if kind == "pre" else Annotations.POST
        sel = types == want
    return ann.ids[sel], ann.world_locations()[sel]


def _segment_at(segmentation: np.ndarray | None, grid: Grid, world_nm: np.ndarray) -> np.ndarray:
    """Segment ids under world points (0 where outside the grid or no segmentation)."""
    pts = np.asarray(world_nm).reshape(-1, 3)
    out = np.zeros(len(pts), np.uint64)
    if segmentation is None:
        return out
    idx = grid.nearest_voxel(pts)
    inside = np.all((idx >= 0) & (idx < np.asarray(grid.shape)), axis=1)
    out[inside] = segmentation[tuple(idx[inside].T)]
    return out


def point_mask(
    ann: Annotations,
    grid: Grid,
    radius_nm: float,
    kind: str = "all",
    segmentation: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean mask of voxels within ``radius_nm`` of sites of ``kind`` ("pre", "post", "all").

    With ``segmentation`` (on ``grid``), each ball is restricted to the segment under its site.
    """
    if kind not in ("pre", "post", "all"):
        raise DataError(f"point kind must be 'pre', 'post' or 'all', got {kind!r}")
    _check_seg(segmentation, grid)
    mask = np.zeros(grid.shape, bool)
    _, locs = _site_locations(ann, kind)
    segs = _segment_at(segmentation, grid, locs)
    for k, box, dist in _balls(grid, locs, radius_nm):
        inside = dist <= radius_nm
        if segmentation is not None:
            inside &= segmentation[box] == segs[k]
        mask[box] |= inside
    return mask


def cleft_mask(clefts: np.ndarray) -> np.ndarray:
    """True where a CREMI cleft volume carries a cleft id (any id but background / invalid)."""
    arr = np.asarray(clefts)
    return (arr != CLEFT_BACKGROUND) & (arr != CLEFT_INVALID)


def cleft_valid_mask(clefts: np.ndarray) -> np.ndarray:
    """False inside the CREMI invalid region (0xfffffffffffffffe), True elsewhere."""
    return np.asarray(clefts) != CLEFT_INVALID


def _check_seg(segmentation: np.ndarray | None, grid: Grid) -> None:
    if segmentation is not None and tuple(segmentation.shape) != tuple(grid.shape):
        raise DataError(
            f"segmentation shape {tuple(segmentation.shape)} does not match the target grid "
            f"{tuple(grid.shape)}"
        )


def signed_proximity(
    ann: Annotations,
    grid: Grid,
    radius_nm: float = 120.0,
    segmentation: np.ndarray | None = None,
) -> np.ndarray:
    """EMSynConn signed proximity (float32 in [-1, 1]).

    Near a pre-synaptic site the value is ``1 - d / radius_nm`` (d = distance in nm), near a
    post-synaptic site ``-(1 - d / radius_nm)``, 0 beyond ``radius_nm``. Where several sites
    reach a voxel the strongest (largest magnitude) wins. With ``segmentation`` each site only
    marks voxels of its own segment (the neuron under the site).
    """
    _check_seg(segmentation, grid)
    pos = np.zeros(grid.shape, np.float32)
    neg = np.zeros(grid.shape, np.float32)
    for kind, acc in (("pre", pos), ("post", neg)):
        _, locs = _site_locations(ann, kind)
        segs = _segment_at(segmentation, grid, locs)
        for k, box, dist in _balls(grid, locs, radius_nm):
            val = np.clip(1.0 - dist / radius_nm, 0.0, 1.0).astype(np.float32)
            if segmentation is not None:
                val[segmentation[box] != segs[k]] = 0.0
            np.maximum(acc[box], val, out=acc[box])
    return np.where(pos >= neg, pos, -neg).astype(np.float32)


def partner_vectors(
    ann: Annotations,
    grid: Grid,
    radius_nm: float = 120.0,
    segmentation: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Vectors (nm, shape (3, z, y, x)) from post-synaptic voxels to their pre-synaptic partner.

    A voxel within ``radius_nm`` of a post-synaptic site (and, with ``segmentation``, in that
    site's segment) gets ``pre_location - voxel_position``; the nearest post site wins where
    balls overlap. Returns ``(vectors float32, mask bool)``; vectors are 0 where mask is False.
    """
    _check_seg(segmentation, grid)
    vec = np.zeros((3, *grid.shape), np.float32)
    best = np.full(grid.shape, np.inf, np.float32)
    world = ann.world_locations()
    index = {int(i): k for k, i in enumerate(ann.ids.tolist())}
    pairs = [(index[int(p)], index[int(q)]) for p, q in ann.partners]
    if not pairs:
        return vec, np.zeros(grid.shape, bool)
    pre_idx = np.asarray([p for p, _ in pairs])
    post_locs = world[np.asarray([q for _, q in pairs])]
    segs = _segment_at(segmentation, grid, post_locs)
    vs = np.asarray(grid.voxel_size_nm)
    for k, box, dist in _balls(grid, post_locs, radius_nm):
        take = (dist <= radius_nm) & (dist < best[box])
        if segmentation is not None:
            take &= segmentation[box] == segs[k]
        if not take.any():
            continue
        best[box][take] = dist[take]
        coords = np.nonzero(take)
        starts = np.asarray([s.start for s in box])
        pos_nm = (np.stack(coords, 1) + starts) * vs + np.asarray(grid.offset_nm)
        d = world[pre_idx[k]][None, :] - pos_nm
        for axis in range(3):
            vec[axis][box][take] = d[:, axis]
    return vec, np.isfinite(best)


@dataclass(frozen=True)
class TargetSettings:
    """Radii (nm) of the synapse training targets."""

    point_radius_nm: float = 80.0
    proximity_radius_nm: float = 120.0
    vector_radius_nm: float = 120.0
    restrict_to_segments: bool = True


#: the targets :func:`targets_from_cremi` makes (the last two only for files with clefts)
TARGET_KEYS = (
    "pre_mask", "post_mask", "proximity", "vectors", "vectors_mask", "cleft_mask", "cleft_valid",
)  # fmt: skip


def targets_from_cremi(
    data: CremiData,
    settings: TargetSettings | None = None,
    only: Collection[str] | None = None,
) -> dict[str, np.ndarray]:
    """All synapse targets on the grid of ``data.raw`` (or of ``neuron_ids`` if there is no raw).

    Keys: ``pre_mask``, ``post_mask``, ``proximity``, ``vectors``, ``vectors_mask`` and, when the
    file has clefts, ``cleft_mask`` and ``cleft_valid``; ``only`` computes just the keys it names
    (a trainer needs one or two, and each is a whole volume). The neuron ids (when present and on
    the same grid) restrict the point targets to the annotated neurons.
    """
    s = settings or TargetSettings()
    wanted = set(TARGET_KEYS if only is None else only)
    if wanted - set(TARGET_KEYS):
        raise ValueError(f"unknown targets {sorted(wanted - set(TARGET_KEYS))}")
    ref = data.raw if data.raw is not None else data.neuron_ids
    if ref is None:
        raise DataError("CREMI data has neither raw nor neuron_ids: no grid to build targets on")
    grid = Grid.of(ref)
    out: dict[str, np.ndarray] = {}
    points = wanted - {"cleft_mask", "cleft_valid"}
    if points:
        if data.annotations is None:
            raise DataError("CREMI data has no annotations: cannot build synapse targets")
        seg = None
        if s.restrict_to_segments and data.neuron_ids is not None:
            if Grid.of(data.neuron_ids) != grid:
                raise DataError(
                    "neuron_ids and raw are on different grids "
                    f"({Grid.of(data.neuron_ids)} vs {grid}); crop them to one grid first"
                )
            seg = np.asarray(data.neuron_ids.read())
        ann = data.annotations
        for side in ("pre", "post"):
            if f"{side}_mask" in points:
                out[f"{side}_mask"] = point_mask(ann, grid, s.point_radius_nm, side, seg)
        if "proximity" in points:
            out["proximity"] = signed_proximity(ann, grid, s.proximity_radius_nm, seg)
        if points & {"vectors", "vectors_mask"}:
            vectors = partner_vectors(ann, grid, s.vector_radius_nm, seg)
            out["vectors"], out["vectors_mask"] = vectors
    if data.clefts is not None and wanted & {"cleft_mask", "cleft_valid"}:
        if Grid.of(data.clefts) != grid:
            raise DataError("clefts and raw are on different grids; crop them to one grid first")
        clefts = np.asarray(data.clefts.read())
        if "cleft_mask" in wanted:
            out["cleft_mask"] = cleft_mask(clefts)
        if "cleft_valid" in wanted:
            out["cleft_valid"] = cleft_valid_mask(clefts)
    return out
