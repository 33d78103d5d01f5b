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
(optionally split where the segmentation changes), drop components below ``min_voxels``, place
each synapse at the component's distance-transform maximum (nm-weighted, so anisotropic voxels
are respected) or at its mask-weighted centre (snapped to the nearest component voxel), score it
(sum, mean or max of m), pre = location + d(location) (or the mask-weighted mean of the pre
points v + d(v) over the component), look both segment ids up (CREMI rounding), group rows whose
pre sites share a segment and lie close (one polyadic synapse), de-duplicate per segment pair
(:func:`synapse_toolkit.synapses.partners.deduplicate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import cc3d
import numpy as np
from scipy import ndimage

from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND, CLEFT_INVALID
from synapse_toolkit.data import Annotations, PartnerTable
from synapse_toolkit.errors import DataError
from synapse_toolkit.synapses.partners import deduplicate
from synapse_toolkit.synapses.targets import Grid, partner_vectors

#: channels of the model output
MASK, VECTOR, DIRECTION = 0, slice(1, 4), slice(4, 7)
N_CHANNELS = 7


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
               "vector_from": "mean", "cleft_width_nm": 20.0},
    "direction": {"threshold": 0.8, "min_voxels": 500, "location": "centre",
                  "vector_from": "location", "cleft_width_nm": 40.0},
    # synful's rows joined with EMSynConn's (combine = "emsynconn"): only its confident ones
    "vector+emsynconn": {"threshold": 0.95, "min_voxels": 500, "location": "edt-max",
                         "vector_from": "mean", "cleft_width_nm": 20.0},
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


def _cleft_distance(clefts: np.ndarray | None, grid: Grid) -> np.ndarray | None:
    if clefts is None:
        return None
    cl = np.asarray(clefts)
    inside = (cl != CLEFT_BACKGROUND) & (cl != CLEFT_INVALID)
    if not inside.any():
        return None
    return ndimage.distance_transform_edt(~inside, sampling=grid.voxel_size_nm).astype(np.float32)


def _components(prob: np.ndarray, seg: np.ndarray, s: SynfulSettings) -> np.ndarray:
    mask = prob > s.threshold
    if s.split_by_segment:
        lab_in = np.where(mask, seg, 0)
        labels = cc3d.connected_components(lab_in, connectivity=26)
    else:
        labels = cc3d.connected_components(mask, connectivity=26)
    if s.min_voxels > 1 and labels.max() > 0:
        labels = cc3d.dust(labels, threshold=s.min_voxels, connectivity=26, in_place=True)
    return labels


def extract_partners(
    prediction: np.ndarray,
    segmentation: np.ndarray,
    grid: Grid,
    settings: SynfulSettings | None = None,
    clefts: np.ndarray | None = None,
) -> PartnerTable:
    """Partners from a synful prediction ((7, z, y, x): mask, vector nm, unit direction) and a
    segmentation on the same grid; ``clefts`` (CREMI cleft labels) set the direction head's
    distance. Returns a de-duplicated :class:`PartnerTable` (polyadic synapses grouped)."""
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
    prob = pred[MASK]
    labels = _components(prob, seg, s)
    use_clefts = s.head == "direction" and s.distance == "clefts"
    cdist = _cleft_distance(clefts, grid) if use_clefts else None
    rows: dict[str, list] = {k: [] for k in ("pre", "post", "score")}
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        comp = labels[box] == k
        p = prob[box]
        loc = _component_location(comp, p, grid, s.location)
        vals = p[comp]
        score = float(vals.sum() if s.score == "sum" else vals.mean() if s.score == "mean"
                      else vals.max())  # fmt: skip
        if score < s.min_score:
            continue
        starts = np.asarray([b.start for b in box])
        loc_vox = loc + starts
        loc_nm = grid.to_world(loc_vox)[0]
        if s.head == "vector":
            field = pred[VECTOR][(slice(None), *box)]
            if s.vector_from == "mean":
                coords = np.argwhere(comp)
                w = p[comp].astype(np.float64)
                pts = grid.to_world(coords + starts) + field[:, comp].T
                pre_nm = (pts * w[:, None]).sum(0) / max(w.sum(), 1e-12)
            else:
                pre_nm = loc_nm + field[:, loc[0], loc[1], loc[2]]
        else:
            field = pred[DIRECTION][(slice(None), *box)]
            if s.vector_from == "mean":
                u = (field[:, comp] * p[comp][None]).sum(1)
            else:
                u = field[:, loc[0], loc[1], loc[2]].astype(np.float64)
            u = u / max(float(np.linalg.norm(u)), 1e-6)
            if s.distance == "segment":
                hit = _march(seg, grid, loc_nm, u, s.segment_depth_nm, s.max_reach_nm)
                pre_nm = hit if hit is not None else loc_nm
            elif cdist is not None:
                pre_nm = loc_nm + (2.0 * float(cdist[tuple(loc_vox)]) + s.cleft_width_nm) * u
            else:
                pre_nm = loc_nm + s.direction_distance_nm * u
        if s.snap_to_segment:
            here = _segments_at(seg, grid, np.stack([loc_nm, pre_nm]))
            step = pre_nm - loc_nm
            norm = float(np.linalg.norm(step))
            if (here[1] == here[0] or here[1] == 0) and norm > 0:
                hit = _march(seg, grid, loc_nm, step / norm, s.segment_depth_nm, s.max_reach_nm)
                pre_nm = hit if hit is not None else pre_nm
        rows["pre"].append(pre_nm)
        rows["post"].append(loc_nm)
        rows["score"].append(score)
    if not rows["pre"]:
        return PartnerTable.empty()
    pre = np.asarray(rows["pre"], np.float64)
    post = np.asarray(rows["post"], np.float64)
    pre_seg = _segments_at(seg, grid, pre)
    post_seg = _segments_at(seg, grid, post)
    keep = (pre_seg != 0) & (post_seg != 0) & (pre_seg != post_seg)
    pre, post, pre_seg, post_seg = pre[keep], post[keep], pre_seg[keep], post_seg[keep]
    score = np.asarray(rows["score"])[keep]
    if len(pre) == 0:
        return PartnerTable.empty()
    sid = group_synapses(pre, pre_seg, s.group_distance_nm)
    table = PartnerTable(pre, post, pre_seg, post_seg, score, sid)
    return deduplicate(table, s.dedup_distance_nm)


def _march(
    seg: np.ndarray, grid: Grid, start_nm: np.ndarray, u: np.ndarray, depth_nm: float,
    max_nm: float,
) -> np.ndarray | None:  # fmt: skip
    """The point ``depth_nm`` beyond where the ray ``start + t u`` first enters a segment other
    than the one at ``start`` (the entry point itself if the ray has left that segment again);
    None if no other segment is met within ``max_nm``."""
    t = np.arange(2.0, max_nm + depth_nm + 2.0, 2.0)
    pts = start_nm[None] + t[:, None] * u[None]
    ids = _segments_at(seg, grid, np.vstack([start_nm[None], pts]))
    own, ids = ids[0], ids[1:]
    other = np.flatnonzero((ids != own) & (ids != 0) & (t <= max_nm))
    if len(other) == 0:
        return None
    first = int(other[0])
    deeper = int(np.searchsorted(t, t[first] + depth_nm))
    if deeper < len(t) and np.all(ids[first : deeper + 1] == ids[first]):
        return pts[deeper]
    return pts[first]


def _segments_at(seg: np.ndarray, grid: Grid, pts: np.ndarray) -> np.ndarray:
    idx = grid.nearest_voxel(pts)
    out = np.zeros(len(idx), np.uint64)
    inside = np.all((idx >= 0) & (idx < np.asarray(grid.shape)), axis=1)
    out[inside] = seg[tuple(idx[inside].T)]
    return out


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
