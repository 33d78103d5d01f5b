"""Partner assigners (numpy): EMSynConn (candidates + optional pruning CNN) and a geometric
baseline (clefts + polarity, no learning). Both return a :class:`PartnerTable`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import cc3d
import numpy as np
from scipy import ndimage

from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND
from synapse_toolkit.data import PartnerTable
from synapse_toolkit.synapses.candidates import CandidateSettings
from synapse_toolkit.synapses.pruning import PrunerONNX
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
    (``pruner``; None keeps all), then de-duplicated per segment pair and place. In memory, as
    one block of :func:`synapse_toolkit.synapses.blockwise.emsynconn_blockwise`."""
    from synapse_toolkit.synapses.blockwise import emsynconn_blockwise

    table, _ = emsynconn_blockwise(
        raw, proximity, segmentation, grid.voxel_size_nm, grid.offset_nm, settings=settings,
        pruner=pruner,
    )  # fmt: skip
    return table


def cleft_labels(
    probability: np.ndarray,
    grid: Grid,
    threshold: float = 0.5,
    min_voxels: int = 200,
) -> np.ndarray:
    """CREMI cleft volume from a cleft probability map: threshold (strict ``>``), 26-connected
    components, components below ``min_voxels`` dropped; background 0xffffffffffffffff, clefts
    numbered 1..N. In memory, as one block of
    :func:`synapse_toolkit.synapses.blockwise.cleft_labels_blockwise`."""
    from synapse_toolkit.synapses.blockwise import cleft_labels_blockwise

    del grid  # kept for a uniform signature (sizes in voxels)
    prob = np.asarray(probability)
    out = np.zeros(prob.shape[-3:], np.uint64)
    cleft_labels_blockwise(prob, out, threshold, min_voxels)
    return out


@dataclass(frozen=True)
class BaselineSettings:
    """Geometric baseline: the neighbourhood of a cleft and the polarity thresholds."""

    neighbourhood_nm: float = 80.0
    min_pre_polarity: float = 0.1
    max_post_polarity: float = -0.1
    min_overlap_voxels: int = 20


def cleft_neighbourhoods(
    clefts: np.ndarray,
    segmentation: np.ndarray,
    grid: Grid,
    neighbourhood_nm: float,
    min_overlap_voxels: int,
) -> Iterator[tuple[int, tuple[slice, ...], list[tuple[int, np.ndarray]]]]:
    """Per predicted cleft (26-connected components of the CREMI cleft volume's non-background
    voxels, numbered 1..N): its number, the box around it grown by ``neighbourhood_nm``, and
    each segment with at least ``min_overlap_voxels`` voxels within ``neighbourhood_nm`` of it
    (in-plane, then along z) with those voxels as a mask in box coordinates, by segment id."""
    vs = np.asarray(grid.voxel_size_nm)
    reach = np.maximum(np.round(neighbourhood_nm / vs).astype(int), 0)
    cl = np.asarray(clefts)
    valid = cl != CLEFT_BACKGROUND
    # cleft ids are arbitrary (0 is a valid CREMI cleft id): renumber to 1..N
    lab = (cc3d.connected_components(valid, connectivity=26) if valid.any()
           else np.zeros(cl.shape, np.uint32))  # fmt: skip
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = True
    for k, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is None:
            continue
        big = tuple(
            slice(max(0, b.start - int(r)), min(n, b.stop + int(r)))
            for b, r, n in zip(box, reach, cl.shape, strict=True)
        )
        near = ndimage.binary_dilation(lab[big] == k, structure=in_plane,
                                       iterations=int(max(1, reach[1])))  # fmt: skip
        if reach[0] > 0:
            near = ndimage.binary_dilation(
                near, structure=np.ones((3, 1, 1), bool), iterations=int(reach[0])
            )
        seg = segmentation[big]
        segs, counts = np.unique(seg[near & (seg != 0)], return_counts=True)
        yield k, big, [(int(sid), near & (seg == sid))
                       for sid, cnt in zip(segs, counts, strict=True)
                       if cnt >= min_overlap_voxels]  # fmt: skip


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
    rows: dict[str, list] = {k: [] for k in ("pre", "post", "ps", "qs", "score", "sid")}
    for k, big, near_segments in cleft_neighbourhoods(
        clefts, segmentation, grid, s.neighbourhood_nm, s.min_overlap_voxels
    ):
        prox = proximity[big]
        stats = [(sid, float(prox[m].mean()), m) for sid, m in near_segments]
        if not stats:
            continue
        pre_sid, pre_val, pre_m = max(stats, key=lambda t: t[1])
        if pre_val < s.min_pre_polarity:
            continue
        starts = np.asarray([b.start for b in big])
        pre_vox = anchor_voxel(pre_m) + starts
        for sid, val, m in stats:
            if sid == pre_sid or val > s.max_post_polarity:
                continue
            rows["pre"].append(pre_vox)
            rows["post"].append(anchor_voxel(m) + starts)
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


def anchor_voxel(mask: np.ndarray) -> np.ndarray:
    """The voxel of ``mask`` closest to its centroid (a site that lies inside the mask)."""
    coords = np.argwhere(mask)
    c = coords.mean(axis=0)
    return coords[np.argmin(((coords - c) ** 2).sum(axis=1))]
