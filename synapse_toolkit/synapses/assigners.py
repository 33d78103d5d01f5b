"""Partner assigners (numpy): EMSynConn (candidates + optional pruning CNN) and a geometric
baseline (clefts + polarity, no learning). Both return a :class:`PartnerTable`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cc3d
import numpy as np
from scipy import ndimage

from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND
from synapse_toolkit.data import PartnerTable
from synapse_toolkit.synapses.candidates import CandidateSettings, find_candidates
from synapse_toolkit.synapses.partners import deduplicate
from synapse_toolkit.synapses.pruning import PrunerONNX, candidate_patches
from synapse_toolkit.synapses.targets import Grid


@dataclass(frozen=True)
class EMSynConnSettings:
    candidates: CandidateSettings = field(default_factory=CandidateSettings)
    prune_threshold: float = 0.5
    dedup_distance_nm: float = 400.0


def assign_emsynconn(
    raw: np.ndarray,
    proximity: np.ndarray,
    segmentation: np.ndarray,
    grid: Grid,
    pruner: PrunerONNX | None = None,
    settings: EMSynConnSettings | None = None,
) -> PartnerTable:
    """EMSynConn partners: candidates from the signed proximity, kept by the pruning CNN
    (``pruner``; None keeps all), then de-duplicated per segment pair and place."""
    s = settings or EMSynConnSettings()
    cands = find_candidates(proximity, segmentation, grid, s.candidates)
    if len(cands) == 0:
        return PartnerTable.empty()
    if pruner is None:
        table = cands.to_table()
    else:
        patches = candidate_patches(cands, raw, proximity, segmentation, pruner.patch_settings)
        scores = pruner.scores(patches)
        table = cands.to_table(scores).select(scores > s.prune_threshold)
    return deduplicate(table, s.dedup_distance_nm)


def cleft_labels(
    probability: np.ndarray,
    grid: Grid,
    threshold: float = 0.5,
    min_voxels: int = 200,
) -> np.ndarray:
    """CREMI cleft volume from a cleft probability map: threshold (strict ``>``), 26-connected
    components (cc3d), components below ``min_voxels`` dropped; background 0xffffffffffffffff,
    clefts numbered 1..N."""
    del grid  # kept for a uniform signature (sizes in voxels)
    mask = np.asarray(probability) > threshold
    labels = cc3d.connected_components(mask, connectivity=26).astype(np.uint64)
    if labels.max() > 0:
        labels = cc3d.dust(labels, threshold=min_voxels, connectivity=26, in_place=True)
        labels, _ = _relabel(labels)
    out = np.full(labels.shape, CLEFT_BACKGROUND, np.uint64)
    out[labels > 0] = labels[labels > 0]
    return out


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    import fastremap

    relabeled, mapping = fastremap.renumber(labels, start=1, preserve_zero=True)
    return relabeled.astype(np.uint64), len(mapping) - (1 if 0 in mapping else 0)


@dataclass(frozen=True)
class BaselineSettings:
    """Geometric baseline: the neighbourhood of a cleft and the polarity thresholds."""

    neighbourhood_nm: float = 80.0
    min_pre_polarity: float = 0.1
    max_post_polarity: float = -0.1
    min_overlap_voxels: int = 20


def assign_geometric(
    clefts: np.ndarray,
    proximity: np.ndarray,
    segmentation: np.ndarray,
    grid: Grid,
    settings: BaselineSettings | None = None,
) -> PartnerTable:
    """No-learning baseline: for each cleft, the segments around it are scored by their mean
    signed proximity near the cleft; the most positive one (≥ ``min_pre_polarity``) is the
    pre-synaptic partner, every segment with mean ≤ ``max_post_polarity`` a post-synaptic one.
    Sites are the segment voxels near the cleft closest to their centroid."""
    s = settings or BaselineSettings()
    vs = np.asarray(grid.voxel_size_nm)
    reach = np.maximum(np.round(s.neighbourhood_nm / vs).astype(int), 0)
    cl = np.asarray(clefts)
    valid = cl != CLEFT_BACKGROUND
    ids = np.where(valid, cl, 0).astype(np.uint64)
    # cleft ids are arbitrary (0 is a valid CREMI cleft id): renumber to 1..N
    lab = cc3d.connected_components(valid, connectivity=26) if valid.any() else np.zeros_like(ids)
    del ids
    rows: dict[str, list] = {k: [] for k in ("pre", "post", "ps", "qs", "score", "sid")}
    for k, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is None:
            continue
        big = tuple(
            slice(max(0, b.start - int(r)), min(n, b.stop + int(r)))
            for b, r, n in zip(box, reach, cl.shape, strict=True)
        )
        cleft = lab[big] == k
        struct = np.zeros((3, 3, 3), bool)
        struct[1] = True
        near = ndimage.binary_dilation(cleft, structure=struct, iterations=int(max(1, reach[1])))
        if reach[0] > 0:
            near = ndimage.binary_dilation(
                near, structure=np.ones((3, 1, 1), bool), iterations=int(reach[0])
            )
        seg = segmentation[big]
        prox = proximity[big]
        segs, counts = np.unique(seg[near & (seg != 0)], return_counts=True)
        stats = []
        for sid, cnt in zip(segs, counts, strict=True):
            if cnt < s.min_overlap_voxels:
                continue
            m = near & (seg == sid)
            stats.append((int(sid), float(prox[m].mean()), m))
        if not stats:
            continue
        pre_sid, pre_val, pre_m = max(stats, key=lambda t: t[1])
        if pre_val < s.min_pre_polarity:
            continue
        starts = np.asarray([b.start for b in big])
        pre_vox = _anchor(pre_m) + starts
        for sid, val, m in stats:
            if sid == pre_sid or val > s.max_post_polarity:
                continue
            rows["pre"].append(pre_vox)
            rows["post"].append(_anchor(m) + starts)
            rows["ps"].append(pre_sid)
            rows["qs"].append(sid)
            rows["score"].append(min(pre_val, -val))
            rows["sid"].append(k)
    if not rows["pre"]:
        return PartnerTable.empty()
    return PartnerTable(
        grid.to_world(np.stack(rows["pre"])), grid.to_world(np.stack(rows["post"])),
        np.asarray(rows["ps"], np.uint64), np.asarray(rows["qs"], np.uint64),
        np.asarray(rows["score"]), np.asarray(rows["sid"], np.uint64),
    )  # fmt: skip


def _anchor(mask: np.ndarray) -> np.ndarray:
    coords = np.argwhere(mask)
    c = coords.mean(axis=0)
    return coords[np.argmin(((coords - c) ** 2).sum(axis=1))]
