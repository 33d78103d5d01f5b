"""Synful partners (Funke edge classifier, Synful's factorisation), numpy side: targets and
extraction. The network (torch) is trained by :mod:`synapse_toolkit.synapses.train_synful`.

The edge classifier scores, for a voxel v and an offset o, whether v is post-synaptic with its
pre-synaptic partner at v + o. Synful factors it into a post-synaptic mask m(v) and a vector
d(v) (nm) from v to the pre-synaptic partner. The network here predicts, in one model,

- channel 0: m(v), the post-synaptic mask probability;
- channels 1-3: d(v) in nm (z, y, x), the regressed vector (``head = "vector"``);
- channels 4-6: a unit direction u(v) (z, y, x), trained with a cosine loss (the seed's
  direction head, ``head = "direction"``); the distance to the partner is then taken from the
  cleft geometry: twice the distance from the site to the nearest cleft voxel plus
  ``cleft_width_nm`` (pre and post sites sit on either side of the cleft; ``distance =
  "clefts"``, the fixed ``direction_distance_nm`` when no clefts are given), or from the
  segmentation: ``segment_depth_nm`` beyond the first voxel of another segment along the
  direction (``distance = "segment"``).

``snap_to_segment`` moves a pre site that landed in the post site's own segment (or outside any
segment) along the same ray until it enters another segment (within 400 nm).

Extraction (:func:`extract_partners`): threshold m (strict ``>``), 26-connected components
(optionally split where the segmentation changes; with ``rejoin_small_pieces`` a split piece
below ``min_voxels`` joins the largest piece of its component, so a synapse cut by a false
segment border is not lost), drop components below ``min_voxels``, place
each synapse at the component's distance-transform maximum (nm-weighted, so anisotropic voxels
are respected) or at its mask-weighted centre (snapped to the nearest component voxel), score it
(sum, mean or max of m), pre = location + d(location) (or the mask-weighted mean of the pre
points v + d(v) over the component), look both segment ids up (CREMI rounding), group rows whose
pre sites share a segment and lie close (one polyadic synapse), de-duplicate per segment pair
(:func:`synapse_toolkit.synapses.partners.deduplicate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cc3d
import numpy as np
from scipy import ndimage

from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND, CLEFT_INVALID
from synapse_toolkit.data import Annotations, PartnerTable
from synapse_toolkit.errors import DataError
from synapse_toolkit.synapses.partners import deduplicate, segment_ids_in
from synapse_toolkit.synapses.targets import Grid, partner_vectors

#: channels of the model output
MASK, VECTOR, DIRECTION = 0, slice(1, 4), slice(4, 7)
N_CHANNELS = 7
#: the output's (z, y, x) component triplets, negated along a mirrored axis (test-time
#: augmentation)
VECTOR_TRIPLETS = ((1, 2, 3), (4, 5, 6))


def tta_arguments() -> dict[str, Any]:
    """The keyword arguments of
    :meth:`~synapse_toolkit.inference.onnx_model.OnnxModel.predict` that average a synful
    model's 8 mirrorings (no channel is an affinity; the vectors are negated along mirrored
    axes)."""
    return {"tta_offsets": [[0, 0, 0]] * N_CHANNELS, "tta_vectors": VECTOR_TRIPLETS}


@dataclass(frozen=True)
class SynfulTargetSettings:
    """Radii (nm) of the training targets: the post-synaptic mask and the region (⊇ mask) where
    the vector / direction is supervised; both restricted to the post site's own segment."""

    mask_radius_nm: float = 80.0
    vector_radius_nm: float = 120.0
    restrict_to_segments: bool = True


def synful_targets(
    ann: Annotations,
    grid: Grid,
    segmentation: np.ndarray | None,
    settings: SynfulTargetSettings | None = None,
) -> dict[str, np.ndarray]:
    """Training targets on ``grid``: ``mask`` (bool, post-synaptic voxels), ``vectors``
    ((3, z, y, x) float32 nm to the pre partner), ``directions`` (unit vectors, 0 where
    undefined) and ``vectors_mask`` (bool, where vectors are defined)."""
    s = settings or SynfulTargetSettings()
    if s.vector_radius_nm < s.mask_radius_nm:
        raise DataError(
            f"synful targets: vector_radius_nm ({s.vector_radius_nm}) must be >= "
            f"mask_radius_nm ({s.mask_radius_nm})"
        )
    seg = segmentation if s.restrict_to_segments else None
    # only post sites that have a partner carry a vector, so the mask uses the same sites
    vec, vmask = partner_vectors(ann, grid, s.vector_radius_nm, seg)
    _, mask = partner_vectors(ann, grid, s.mask_radius_nm, seg)
    norm = np.sqrt((vec**2).sum(axis=0))
    dirs = np.where(norm > 0, vec / np.maximum(norm, 1e-6), 0.0).astype(np.float32)
    return {"mask": mask, "vectors": vec, "directions": dirs, "vectors_mask": vmask}


#: extraction settings chosen on the development phantom seeds 1201-1208 for the bundled model
#: (best mean of the pooled partner F with the ground-truth and the predicted segmentation;
#: ``python benchmarks/eval_partners.py --tune``); the ``synful`` stage's defaults
TUNED_DEFAULTS: dict[str, dict[str, Any]] = {
    "vector": {"threshold": 0.9, "min_voxels": 200, "location": "edt-max",
               "vector_from": "mean", "cleft_width_nm": 20.0, "rejoin_small_pieces": True},
    # the same on the 8-mirroring average (`tta`, the main job): its mask is smoother, the
    # threshold re-chosen on development seeds
    "vector, tta": {"threshold": 0.85, "min_voxels": 200, "location": "edt-max",
                    "vector_from": "mean", "cleft_width_nm": 20.0, "rejoin_small_pieces": True},
    "direction": {"threshold": 0.9, "min_voxels": 200, "location": "edt-max",
                  "vector_from": "location", "cleft_width_nm": 40.0,
                  "rejoin_small_pieces": False},
    # synful's rows joined with EMSynConn's (combine = "emsynconn")
    "vector+emsynconn": {"threshold": 0.9, "min_voxels": 200, "location": "edt-max",
                         "vector_from": "mean", "cleft_width_nm": 20.0,
                         "rejoin_small_pieces": False},
    # EMSynConn's rows plus the synful rows its pruning CNN keeps (combine = "verified"; the
    # synful rows as the vector head's, the cut-off chosen on development seeds)
    "vector+verified": {"threshold": 0.9, "min_voxels": 200, "location": "edt-max",
                        "vector_from": "mean", "cleft_width_nm": 20.0,
                        "rejoin_small_pieces": True},
}  # fmt: skip


@dataclass(frozen=True)
class SynfulSettings:
    """Extraction parameters (see the module docstring)."""

    head: Literal["vector", "direction"] = "vector"
    threshold: float = 0.5
    min_voxels: int = 20
    location: Literal["edt-max", "centre"] = "edt-max"
    score: Literal["sum", "mean", "max"] = "sum"
    vector_from: Literal["location", "mean"] = "location"
    split_by_segment: bool = True
    rejoin_small_pieces: bool = False
    min_score: float = 0.0
    group_distance_nm: float = 150.0
    dedup_distance_nm: float = 400.0
    direction_distance_nm: float = 120.0
    cleft_width_nm: float = 20.0
    distance: Literal["clefts", "segment", "fixed"] = "clefts"
    segment_depth_nm: float = 40.0
    snap_to_segment: bool = False
    max_reach_nm: float = 400.0


def _component_location(comp: np.ndarray, prob: np.ndarray, grid: Grid, how: str) -> np.ndarray:
    """Voxel (within the box) of a component: distance-transform maximum or weighted centre."""
    if how == "edt-max":
        padded = np.pad(comp, 1)
        dist = ndimage.distance_transform_edt(padded, sampling=grid.voxel_size_nm)[1:-1, 1:-1, 1:-1]
        # ties (flat maxima): the one with the highest mask probability
        top = dist >= dist.max() - 1e-6
        cand = np.argwhere(top & comp)
        return cand[int(np.argmax(prob[tuple(cand.T)]))]
    coords = np.argwhere(comp)
    w = prob[tuple(coords.T)].astype(np.float64)
    centre = (coords * w[:, None]).sum(0) / max(w.sum(), 1e-12)
    vs = np.asarray(grid.voxel_size_nm)
    return coords[int(np.argmin((((coords - centre) * vs) ** 2).sum(1)))]


def _components(
    prob: np.ndarray, seg: np.ndarray, s: SynfulSettings
) -> tuple[np.ndarray, np.ndarray]:
    """The sites' components and the whole ones: 26-connected components of ``prob >
    threshold``, split where the segmentation changes (``split_by_segment``; small pieces
    rejoined with ``rejoin_small_pieces``), and the unsplit components they are pieces of.
    No size filter (see :func:`block_sites`). Each piece lies in one whole component, and
    depends on nothing outside it."""
    mask = prob > s.threshold
    whole = cc3d.connected_components(mask, connectivity=26)
    if not s.split_by_segment:
        return whole, whole
    pieces = cc3d.connected_components(np.where(mask, seg, 0), connectivity=26)
    if s.rejoin_small_pieces:
        pieces = _rejoin_small_pieces(pieces, whole, s.min_voxels)
    return pieces, whole


def _rejoin_small_pieces(pieces: np.ndarray, whole: np.ndarray, min_voxels: int) -> np.ndarray:
    """``pieces`` with each piece below ``min_voxels`` relabelled as the largest piece of its
    whole component (ties: the piece whose first voxel comes first in C order); when every
    piece is small they all become one."""
    flat, wflat = pieces.reshape(-1), whole.reshape(-1)
    n = int(flat.max(initial=0))
    if n == 0:
        return pieces
    ids, first, sizes = _first_voxels(pieces)
    owner = wflat[first]
    order = np.lexsort((first, -sizes, owner))  # by whole component, largest piece first
    lead = np.r_[True, owner[order][1:] != owner[order][:-1]]
    largest = np.zeros(int(wflat.max()) + 1, ids.dtype)
    largest[owner[order][lead]] = ids[order][lead]
    remap = np.arange(n + 1, dtype=pieces.dtype)
    small = sizes < min_voxels
    remap[ids[small]] = largest[owner[small]]
    return remap[pieces]


@dataclass(frozen=True)
class Sites:
    """Post sites of mask components, before any lookup outside their component: the
    component's first voxel (flat C-order index in the whole volume; it orders the rows), the
    site voxel (z, y, x, whole volume), the score, and ``vector``: the pre site (nm) for the
    vector head, the unit direction for the direction head."""

    first: np.ndarray  # (N,) int64
    location: np.ndarray  # (N, 3) int64
    score: np.ndarray  # (N,) float64
    vector: np.ndarray  # (N, 3) float64

    @classmethod
    def empty(cls) -> Sites:
        return cls(np.zeros(0, np.int64), np.zeros((0, 3), np.int64), np.zeros(0),
                   np.zeros((0, 3)))  # fmt: skip

    def select(self, keep: np.ndarray) -> Sites:
        return Sites(self.first[keep], self.location[keep], self.score[keep], self.vector[keep])

    @classmethod
    def concat(cls, parts: Sequence[Sites]) -> Sites:
        """All parts' rows in the order of their first voxels."""
        parts = [p for p in parts if len(p.first)] or [cls.empty()]
        cat = cls(*(np.concatenate([getattr(p, k) for p in parts])
                    for k in ("first", "location", "score", "vector")))  # fmt: skip
        return cat.select(np.argsort(cat.first, kind="stable"))


#: a component that may continue beyond its block: (first voxel, flat index; bounding box)
Partial = tuple[int, tuple[tuple[int, int], ...]]


def block_sites(
    prob: np.ndarray,
    field: np.ndarray,
    seg: np.ndarray,
    grid: Grid,
    s: SynfulSettings,
    origin: Sequence[int] = (0, 0, 0),
    own: Sequence[tuple[int, int]] | None = None,
) -> tuple[Sites, list[Partial]]:
    """Sites of the mask components in a region (``prob``, ``field``: the head's 3 channels,
    ``seg``) that starts at voxel ``origin`` of the whole volume (``grid``).

    A whole (unsplit) component belongs to the region when its first voxel lies in ``own``
    (whole-volume voxel ranges per axis; default: the region); its pieces (see
    :func:`_components`) are measured there. A kept whole component that touches a face of the
    region inside the volume may continue beyond it: its pieces are not measured, it is
    returned as ``(first voxel, bounding box)`` in the second list (see
    :func:`complete_component`). Pieces smaller than ``min_voxels`` are dropped, as
    ``cc3d.dust`` would on the whole volume."""
    labels, whole = _components(prob, seg, s)
    shape = np.asarray(grid.shape)
    o = np.asarray(origin, np.int64)
    stop = o + np.asarray(labels.shape)
    inner_lo, inner_hi = o > 0, stop < shape  # faces of the region inside the volume
    own_lo = np.asarray([a for a, _ in own]) if own is not None else o
    own_hi = np.asarray([b for _, b in own]) if own is not None else stop
    partial: list[Partial] = []
    kept = np.zeros(int(whole.max(initial=0)) + 1, bool)
    w_boxes = ndimage.find_objects(whole)
    for w, f in zip(*(a.tolist() for a in _first_voxels(whole)[:2]), strict=True):
        at = o + np.unravel_index(f, whole.shape)
        if np.any(at < own_lo) or np.any(at >= own_hi):
            continue
        lo = np.asarray([b.start for b in w_boxes[w - 1]])
        hi = np.asarray([b.stop for b in w_boxes[w - 1]])
        if np.any(inner_lo & (lo == 0)) or np.any(inner_hi & (hi == whole.shape)):
            flat = int(np.ravel_multi_index(tuple(at), grid.shape))
            partial.append((flat, tuple(zip((o + lo).tolist(), (o + hi).tolist(), strict=True))))
        else:
            kept[w] = True
    ids, first, counts = _first_voxels(labels)
    boxes = ndimage.find_objects(labels)
    wflat = whole.reshape(-1)
    rows: dict[str, list] = {k: [] for k in ("first", "location", "score", "vector")}
    for k, f, n in zip(ids.tolist(), first.tolist(), counts.tolist(), strict=True):
        if k == 0 or not kept[wflat[f]] or n < s.min_voxels:
            continue
        box = boxes[k - 1]
        at = o + np.unravel_index(f, labels.shape)
        loc, score, vec = _site(labels[box] == k, prob[box], field[(slice(None), *box)],
                                o + np.asarray([b.start for b in box]), grid, s)  # fmt: skip
        if score < s.min_score:
            continue
        flat = int(np.ravel_multi_index(tuple(at), grid.shape))
        for key, v in zip(rows, (flat, loc, score, vec), strict=True):
            rows[key].append(v)
    if not rows["first"]:
        return Sites.empty(), partial
    return Sites(np.asarray(rows["first"], np.int64), np.asarray(rows["location"], np.int64),
                 np.asarray(rows["score"], np.float64),
                 np.asarray(rows["vector"], np.float64)), partial  # fmt: skip


def _first_voxels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (> 0), the flat index of their first voxel and their sizes. cc3d numbers
    components in C order of their first voxels, which a running maximum finds in one pass
    (``np.unique`` sorts, 20x slower); other numberings take ``np.unique``."""
    flat = labels.reshape(-1)
    n = int(flat.max(initial=0))
    run = np.maximum.accumulate(flat)
    first = np.flatnonzero(run[1:] > run[:-1]) + 1
    if flat.size and flat[0] > 0:
        first = np.concatenate([[0], first])
    ids = np.arange(1, n + 1)
    if len(first) != n or not np.array_equal(flat[first], ids):
        ids, first, counts = np.unique(flat, return_index=True, return_counts=True)
        return ids[ids > 0], first[ids > 0], counts[ids > 0]
    return ids, first, np.bincount(flat, minlength=n + 1)[1:]


def _site(
    comp: np.ndarray, p: np.ndarray, field: np.ndarray, starts: np.ndarray, grid: Grid,
    s: SynfulSettings,
) -> tuple[np.ndarray, float, np.ndarray]:  # fmt: skip
    """One component (``comp`` in its bounding box at whole-volume voxel ``starts``): site
    voxel, score, and the pre site (vector head) or unit direction (direction head)."""
    loc = _component_location(comp, p, grid, s.location)
    vals = p[comp]
    score = float(vals.sum() if s.score == "sum" else vals.mean() if s.score == "mean"
                  else vals.max())  # fmt: skip
    loc_vox = loc + starts
    if s.head == "vector":
        if s.vector_from == "mean":
            coords = np.argwhere(comp)
            w = p[comp].astype(np.float64)
            pts = grid.to_world(coords + starts) + field[:, comp].T
            vec = (pts * w[:, None]).sum(0) / max(w.sum(), 1e-12)
        else:
            vec = grid.to_world(loc_vox)[0] + field[:, loc[0], loc[1], loc[2]]
    else:
        if s.vector_from == "mean":
            u = (field[:, comp] * p[comp][None]).sum(1)
        else:
            u = field[:, loc[0], loc[1], loc[2]].astype(np.float64)
        vec = u / max(float(np.linalg.norm(u)), 1e-6)
    return loc_vox, score, np.asarray(vec, np.float64)


def complete_component(
    prob: Any, field: Any, seg: Any, grid: Grid, s: SynfulSettings, partial: Partial
) -> tuple[Sites, tuple[slice, ...], np.ndarray]:
    """The whole component through a partial one's first voxel, read from whole-volume arrays
    (numpy, zarr or h5py; ``field`` (3, z, y, x)) in a region grown from the partial box until
    the component fits: the sites of its pieces (none if its first voxel is not the partial
    one's: the partial whose first voxel it is, or the block owning it, holds them), its
    bounding box and its mask in that box."""
    seed, box = partial
    shape = np.asarray(grid.shape)
    at = np.asarray(np.unravel_index(seed, grid.shape))
    lo = np.maximum(np.asarray([a for a, _ in box]) - 1, 0)
    hi = np.minimum(np.asarray([b for _, b in box]) + 1, shape)
    while True:
        roi = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        p, sg = np.asarray(prob[roi]), np.asarray(seg[roi])
        _, whole = _components(p, sg, s)
        comp = whole == whole[tuple(at - lo)]
        comp_box = ndimage.find_objects(comp.astype(np.uint8))[0]
        c_lo = lo + [b.start for b in comp_box]
        c_hi = lo + [b.stop for b in comp_box]
        grow_lo = (c_lo == lo) & (lo > 0)
        grow_hi = (c_hi == hi) & (hi < shape)
        if not grow_lo.any() and not grow_hi.any():
            break
        size = hi - lo
        lo = np.where(grow_lo, np.maximum(lo - size, 0), lo)
        hi = np.where(grow_hi, np.minimum(hi + size, shape), hi)
    whole_box = tuple(slice(int(a), int(b)) for a, b in zip(c_lo, c_hi, strict=True))
    mask = comp[comp_box]
    if int(np.ravel_multi_index(tuple(c_lo + np.argwhere(mask)[0]), grid.shape)) != seed:
        return Sites.empty(), whole_box, mask
    own = tuple(zip(c_lo.tolist(), c_hi.tolist(), strict=True))
    f = np.asarray(field[(slice(None), *roi)])
    sites, _ = block_sites(p, f, sg, grid, s, lo.tolist(), own)  # ours is complete here
    inside = np.stack(np.unravel_index(sites.first, grid.shape), axis=1) - lo
    return sites.select(comp[tuple(inside.T)]), whole_box, mask


def extract_partners(
    prediction: np.ndarray,
    segmentation: np.ndarray,
    grid: Grid,
    settings: SynfulSettings | None = None,
    clefts: np.ndarray | None = None,
) -> PartnerTable:
    """Partners from a synful prediction ((7, z, y, x): mask, vector nm, unit direction) and a
    segmentation on the same grid; ``clefts`` (CREMI cleft labels) set the direction head's
    distance. Returns a de-duplicated :class:`PartnerTable` (polyadic synapses grouped).
    This is one block of :func:`synapse_toolkit.synapses.synful_blockwise.synful_blockwise`."""
    s = settings or SynfulSettings()
    pred = np.asarray(prediction)
    if pred.ndim != 4 or pred.shape[0] != N_CHANNELS:
        raise DataError(f"synful prediction must be ({N_CHANNELS}, z, y, x), got {pred.shape}")
    seg = np.asarray(segmentation)
    if pred.shape[1:] != seg.shape or tuple(seg.shape) != tuple(grid.shape):
        raise DataError(
            f"synful prediction {pred.shape[1:]} and segmentation {seg.shape} are on different "
            f"grids"
        )
    field = pred[VECTOR if s.head == "vector" else DIRECTION]
    sites, partial = block_sites(pred[MASK], field, seg, grid, s)
    assert not partial  # the whole volume: nothing continues beyond it
    return finish_partners(sites, seg, grid, s, clefts)


def finish_partners(
    sites: Sites, seg: Any, grid: Grid, s: SynfulSettings, clefts: Any = None
) -> PartnerTable:
    """The partner table of ``sites`` (in order of their first voxels): pre sites (the direction
    head's distance from ``clefts``, the segmentation or fixed; ``snap_to_segment``), segment
    lookups (whole-volume arrays: numpy, zarr or h5py, read at points only), rows within one
    segment dropped, polyadic grouping, de-duplication."""
    if len(sites.first) == 0:
        return PartnerTable.empty()
    post = grid.to_world(sites.location)
    if s.head == "vector":
        pre = sites.vector.copy()
    else:
        pre = np.empty_like(post)
        use_clefts = s.distance == "clefts" and clefts is not None and _any_cleft(clefts)
        for i, (loc_nm, u) in enumerate(zip(post, sites.vector, strict=True)):
            if s.distance == "segment":
                hit = _march(seg, grid, loc_nm, u, s.segment_depth_nm, s.max_reach_nm)
                pre[i] = hit if hit is not None else loc_nm
            elif use_clefts:
                d = nearest_cleft_nm(clefts, grid, sites.location[i])
                pre[i] = loc_nm + (2.0 * d + s.cleft_width_nm) * u
            else:
                pre[i] = loc_nm + s.direction_distance_nm * u
    if s.snap_to_segment:
        for i in range(len(pre)):
            here = segment_ids_in(seg, grid, np.stack([post[i], pre[i]]))
            step = pre[i] - post[i]
            norm = float(np.linalg.norm(step))
            if (here[1] == here[0] or here[1] == 0) and norm > 0:
                hit = _march(seg, grid, post[i], step / norm, s.segment_depth_nm, s.max_reach_nm)
                pre[i] = hit if hit is not None else pre[i]
    pre_seg = segment_ids_in(seg, grid, pre)
    post_seg = segment_ids_in(seg, grid, post)
    keep = (pre_seg != 0) & (post_seg != 0) & (pre_seg != post_seg)
    if not keep.any():
        return PartnerTable.empty()
    pre, post, pre_seg, post_seg = pre[keep], post[keep], pre_seg[keep], post_seg[keep]
    sid = group_synapses(pre, pre_seg, s.group_distance_nm)
    table = PartnerTable(pre, post, pre_seg, post_seg, sites.score[keep], sid)
    return deduplicate(table, s.dedup_distance_nm)


def _inside_cleft(cl: np.ndarray) -> np.ndarray:
    return (cl != CLEFT_BACKGROUND) & (cl != CLEFT_INVALID)


def _any_cleft(clefts: Any, block: tuple[int, int, int] = (32, 256, 256)) -> bool:
    from synapse_toolkit.blockwise import iter_blocks

    shape = tuple(int(n) for n in clefts.shape)
    step = tuple(min(b, n) for b, n in zip(block, shape, strict=True))
    return any(_inside_cleft(np.asarray(clefts[b.write])).any() for b in iter_blocks(shape, step))


def nearest_cleft_nm(clefts: Any, grid: Grid, voxel: np.ndarray, radius_nm: float = 200.0) -> float:
    """Distance (nm, at float32 precision) from ``voxel`` to the nearest cleft voxel of a CREMI
    cleft volume (0 inside a cleft, inf if there is none), read in a window grown until it must
    hold the nearest one: the whole-volume Euclidean distance transform at that voxel."""
    vs = np.asarray(grid.voxel_size_nm, np.float64)
    shape = np.asarray(grid.shape)
    v = np.asarray(voxel, np.int64)
    while True:
        half = np.ceil(radius_nm / vs).astype(np.int64)
        lo, hi = np.maximum(v - half, 0), np.minimum(v + half + 1, shape)
        roi = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        pts = np.argwhere(_inside_cleft(np.asarray(clefts[roi])))
        whole = bool(np.all(lo == 0) and np.all(hi == shape))
        if len(pts):
            d = float(np.sqrt(((((pts + lo - v) * vs) ** 2).sum(1)).min()))
            if d <= radius_nm or whole:  # any voxel outside the window is farther than radius
                return float(np.float32(d))
        elif whole:
            return float("inf")
        radius_nm *= 2.0


def _march(
    seg: Any, grid: Grid, start_nm: np.ndarray, u: np.ndarray, depth_nm: float,
    max_nm: float,
) -> np.ndarray | None:  # fmt: skip
    """The point ``depth_nm`` beyond where the ray ``start + t u`` first enters a segment other
    than the one at ``start`` (the entry point itself if the ray has left that segment again);
    None if no other segment is met within ``max_nm``."""
    t = np.arange(2.0, max_nm + depth_nm + 2.0, 2.0)
    pts = start_nm[None] + t[:, None] * u[None]
    ids = segment_ids_in(seg, grid, np.vstack([start_nm[None], pts]))
    own, ids = ids[0], ids[1:]
    other = np.flatnonzero((ids != own) & (ids != 0) & (t <= max_nm))
    if len(other) == 0:
        return None
    first = int(other[0])
    deeper = int(np.searchsorted(t, t[first] + depth_nm))
    if deeper < len(t) and np.all(ids[first : deeper + 1] == ids[first]):
        return pts[deeper]
    return pts[first]


def group_synapses(pre_nm: np.ndarray, pre_segment: np.ndarray, distance_nm: float) -> np.ndarray:
    """Synapse ids (1..K): rows whose pre sites share a segment and are linked by steps of at
    most ``distance_nm`` form one (polyadic) synapse."""
    n = len(pre_nm)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if (
                pre_segment[i] == pre_segment[j]
                and np.linalg.norm(pre_nm[i] - pre_nm[j]) <= distance_nm
            ):
                parent[find(i)] = find(j)
    roots = np.asarray([find(i) for i in range(n)])
    _, ids = np.unique(roots, return_inverse=True)
    return (ids + 1).astype(np.uint64)


def union(a: PartnerTable, b: PartnerTable, dedup_distance_nm: float = 400.0) -> PartnerTable:
    """Rows of two assigners in one table (scores scaled to [0, 1] per table, ``b``'s synapse
    ids shifted), de-duplicated per segment pair and place (the higher scaled score kept)."""
    if len(a) == 0 or len(b) == 0:
        return a if len(b) == 0 else b
    assert a.synapse_type is not None and b.synapse_type is not None
    shift = int(a.synapse_id.max()) + 1
    table = PartnerTable(
        np.vstack([a.pre_nm, b.pre_nm]), np.vstack([a.post_nm, b.post_nm]),
        np.concatenate([a.pre_segment, b.pre_segment]),
        np.concatenate([a.post_segment, b.post_segment]),
        np.concatenate([a.score / max(a.score.max(), 1e-12), b.score / max(b.score.max(), 1e-12)]),
        np.concatenate([a.synapse_id, b.synapse_id + shift]),
    )  # fmt: skip
    return deduplicate(table, dedup_distance_nm)
