"""CREMI synaptic-partner metric: F-score of pre→post pairs by minimum-cost assignment.

Semantics of the CREMI reference evaluator (cremi_python ``synaptic_partners_fscore``):

- Each pair (one row of ``annotations.partners``, in file order) has a pre and a post site;
  locations are shifted into the truth segmentation's frame,
  ``loc + (annotations.offset - segmentation.offset)`` (nm), and looked up in the truth
  segmentation at voxel ``round(loc / voxel_size)``. The challenge server rounded like
  Python 2 (half away from zero, ``rounding="half_away"``, default); ``rounding="half_even"``
  gives Python 3's ``round``.
- A predicted pair i and a truth pair j can match only if their label pairs
  ``(label(pre), label(post))`` are identical (no background special case, site types are not
  checked) and both the pre and the post distance are ``<= matching_threshold`` (400 nm); the
  cost is then the mean of the two distances, otherwise ``2 * matching_threshold``.
- The square cost matrix (padded with ``2 * threshold``) is solved by
  ``scipy.optimize.linear_sum_assignment`` — a *minimum-cost* assignment, not a maximum
  matching (CREMI case P08) — and assignments with cost ``<= threshold`` are the matches.
  FP = #predicted pairs - TP, FN = #truth pairs - TP, F = 2PR / (P + R).

Speed: candidate pairs come from a k-d tree (pre sites within the threshold), so 10,000 vs
10,000 pairs take well under a second. Up to ``dense_limit`` pairs the reference's dense matrix is
solved exactly as the reference does (same tie-breaking); above it each connected component of
the candidate graph is solved on its own (same minimum total cost and, barring exact cost ties
between different assignments, the same matches).

Defined where the reference raises: a ratio with a zero denominator (no predicted pairs, no truth
pairs, or no match at all) is 0.0, except when both sides are empty, which scores 1.0
(precision = recall = F = 1). A site outside the truth segmentation cannot match anything (its
pair is only ever a FP or FN) instead of raising IndexError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from synapse_toolkit.data import Annotations, Volume
from synapse_toolkit.errors import DataError

Rounding = Literal["half_away", "half_even"]


@dataclass(frozen=True)
class PartnerScores:
    """Partner scores; ``matches`` are (predicted pair index, truth pair index, cost nm)."""

    fscore: float
    precision: float
    recall: float
    tp: int
    fp: int
    fn: int
    matches: list[tuple[int, int, float]] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, float]:
        return {"fscore": self.fscore, "precision": self.precision, "recall": self.recall,
                "tp": self.tp, "fp": self.fp, "fn": self.fn}  # fmt: skip


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Python 2 ``round``: nearest integer, ties away from zero (exact, no ``x + 0.5`` error)."""
    a = np.abs(x)
    f = np.floor(a)
    r = f + ((a - f) >= 0.5)
    return np.copysign(r, x)


def round_voxels(x: np.ndarray, rounding: Rounding = "half_away") -> np.ndarray:
    if rounding == "half_away":
        return round_half_away(x)
    if rounding == "half_even":
        return np.rint(x)
    raise ValueError(f"rounding must be 'half_away' or 'half_even', got {rounding!r}")


def pair_locations(ann: Annotations, seg_offset_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pre and post locations (M, 3) of every partner row, in the segmentation's frame (nm)."""
    if len(ann.partners) == 0:
        z = np.zeros((0, 3), np.float64)
        return z, z
    order = np.argsort(ann.ids, kind="stable")
    sorted_ids = ann.ids[order]

    def rows(site_ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(sorted_ids, site_ids)
        return order[pos]

    shift = np.asarray(ann.offset_nm, np.float64) - seg_offset_nm
    loc = ann.locations_nm + shift
    return loc[rows(ann.partners[:, 0])], loc[rows(ann.partners[:, 1])]


def pairs_outside(ann: Annotations, volume: Volume, rounding: Rounding = "half_away") -> int:
    """How many partner rows of ``ann`` have a site outside ``volume``'s voxels: such a truth pair
    can never be matched (it counts as missed)."""
    offset = np.asarray(volume.offset_nm, np.float64)
    res = np.asarray(volume.voxel_size_nm, np.float64)
    pre, post = pair_locations(ann, offset)
    shape = np.asarray(volume.shape[-3:])

    def inside(loc: np.ndarray) -> np.ndarray:
        idx = round_voxels(loc / res, rounding)
        return np.all((idx >= 0) & (idx < shape), axis=1)

    return int((~(inside(pre) & inside(post))).sum()) if len(pre) else 0


def lookup_labels(
    seg: Any, loc: np.ndarray, voxel_size: np.ndarray, rounding: Rounding
) -> tuple[np.ndarray, np.ndarray]:
    """(labels uint64, inside bool) of the segmentation at locations (nm, segmentation frame)."""
    idx = round_voxels(loc / voxel_size, rounding)
    shape = np.asarray(seg.shape[-3:])
    inside = np.all((idx >= 0) & (idx < shape), axis=1) if idx.size else np.zeros(0, bool)
    labels = np.zeros(idx.shape[0], np.uint64)
    ii = idx[inside].astype(np.int64)
    if ii.shape[0]:
        if isinstance(seg, np.ndarray):
            labels[inside] = seg[ii[:, 0], ii[:, 1], ii[:, 2]]
        else:  # h5py/zarr: read the bounding box of the points of each section
            out = np.zeros(ii.shape[0], np.uint64)
            for z in np.unique(ii[:, 0]):
                sel = ii[:, 0] == z
                y0, x0 = ii[sel, 1].min(), ii[sel, 2].min()
                y1, x1 = ii[sel, 1].max() + 1, ii[sel, 2].max() + 1
                box = np.asarray(seg[int(z), int(y0) : int(y1), int(x0) : int(x1)])
                out[sel] = box[ii[sel, 1] - y0, ii[sel, 2] - x0]
            labels[inside] = out
    return labels, inside


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a - b
    d = d * d
    return np.sqrt((d[:, 0] + d[:, 1]) + d[:, 2])


def _ratio(num: int, den: int, both_empty: bool) -> float:
    if den == 0:
        return 1.0 if both_empty else 0.0
    return num / den


def score_partners(
    pred: Annotations,
    truth: Annotations,
    truth_neuron_ids: Volume,
    *,
    matching_threshold: float = 400.0,
    rounding: Rounding = "half_away",
    dense_limit: int = 2000,
) -> PartnerScores:
    """CREMI synaptic-partner scores of ``pred`` against ``truth`` (see the module docstring)."""
    if not isinstance(truth_neuron_ids, Volume):
        raise DataError("truth_neuron_ids must be a Volume (with voxel size and offset in nm)")
    seg = truth_neuron_ids.data
    off = np.asarray(truth_neuron_ids.offset_nm, np.float64)
    res = np.asarray(truth_neuron_ids.voxel_size_nm, np.float64)
    r_pre, r_post = pair_locations(pred, off)
    g_pre, g_post = pair_locations(truth, off)
    nr, ng = r_pre.shape[0], g_pre.shape[0]
    thr = float(matching_threshold)
    max_cost = 2.0 * thr

    labels = {}
    for key, locs in (("r_pre", r_pre), ("r_post", r_post), ("g_pre", g_pre), ("g_post", g_post)):
        labels[key] = lookup_labels(seg, locs, res, rounding)

    # candidate pairs: pre sites within the threshold (k-d tree), then the exact reference test
    if nr and ng:
        tree_g = cKDTree(g_pre)
        tree_r = cKDTree(r_pre)
        sdm = tree_r.sparse_distance_matrix(tree_g, thr * (1 + 1e-9) + 1e-9, output_type="ndarray")
        ri = sdm["i"].astype(np.int64)
        gj = sdm["j"].astype(np.int64)
    else:
        ri = gj = np.zeros(0, np.int64)
    pre_d = _dist(r_pre[ri], g_pre[gj])
    post_d = _dist(r_post[ri], g_post[gj])
    (rl_pre, rin_pre), (rl_post, rin_post) = labels["r_pre"], labels["r_post"]
    (gl_pre, gin_pre), (gl_post, gin_post) = labels["g_pre"], labels["g_post"]
    ok = (
        (pre_d <= thr) & (post_d <= thr)
        & rin_pre[ri] & rin_post[ri] & gin_pre[gj] & gin_post[gj]
        & (rl_pre[ri] == gl_pre[gj]) & (rl_post[ri] == gl_post[gj])
    )  # fmt: skip
    ri, gj = ri[ok], gj[ok]
    cost = 0.5 * (pre_d[ok] + post_d[ok])

    size = max(nr, ng)
    matches: list[tuple[int, int, float]] = []
    if ri.size and size <= dense_limit:
        costs = np.full((size, size), max_cost)
        costs[ri, gj] = cost
        rows, cols = linear_sum_assignment(costs - np.amax(costs) - 1)
        matches = [(int(i), int(j), float(costs[i, j])) for i, j in zip(rows, cols, strict=True)
                   if costs[i, j] <= thr]  # fmt: skip
    elif ri.size:
        matches = _sparse_assignment(ri, gj, cost, nr, ng, max_cost, thr)
    matches.sort()
    tp = len(matches)
    fp = nr - tp
    fn = ng - tp
    both_empty = nr == 0 and ng == 0
    precision = _ratio(tp, tp + fp, both_empty)
    recall = _ratio(tp, tp + fn, both_empty)
    fscore = 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return PartnerScores(fscore, precision, recall, tp, fp, fn, matches)


def _sparse_assignment(
    ri: np.ndarray, gj: np.ndarray, cost: np.ndarray, nr: int, ng: int, max_cost: float, thr: float
) -> list[tuple[int, int, float]]:
    """Min-cost assignment per connected component of the candidate graph (rows and columns of
    each component in index order, every row free to stay unmatched at ``max_cost``)."""
    n = nr + ng
    graph = coo_matrix((np.ones(ri.size), (ri, gj + nr)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    comp_of_edge = comp[ri]
    order = np.argsort(comp_of_edge, kind="stable")
    bounds = np.flatnonzero(np.diff(comp_of_edge[order])) + 1
    matches: list[tuple[int, int, float]] = []
    for edges in np.split(order, bounds):
        er, eg, ec = ri[edges], gj[edges], cost[edges]
        if edges.size == 1:
            matches.append((int(er[0]), int(eg[0]), float(ec[0])))
            continue
        rows = np.unique(er)
        cols = np.unique(eg)
        k = max(rows.size, cols.size)
        sub = np.full((k, k), max_cost)
        sub[np.searchsorted(rows, er), np.searchsorted(cols, eg)] = ec
        a, b = linear_sum_assignment(sub - np.amax(sub) - 1)
        for i, j in zip(a, b, strict=True):
            if i < rows.size and j < cols.size and sub[i, j] <= thr:
                matches.append((int(rows[i]), int(cols[j]), float(sub[i, j])))
    return matches
