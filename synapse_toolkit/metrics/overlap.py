"""Synapse detection scored by voxel overlap of detected and ground-truth synapse labels.

Every object (label != ``background``) of each volume is paired with its best match in the other
volume: the object there with the largest overlap measure (ties: the smallest id). With
``measure="iou"`` (default) the measure is |A∩B| / |A∪B|; with ``measure="coverage"`` it is
|A∩B| / |A| for the object A being matched. A truth object is *detected* when its best measure
is ``>= threshold``; a detection is *correct* when its best measure is ``>= threshold``.
precision = correct detections / detections, recall = detected truth objects / truth objects,
F1 = 2PR / (P + R). A zero denominator gives 0.0, or 1.0 when both volumes hold no object.

Counting goes through a :class:`~synapse_toolkit.metrics.contingency.Contingency` table, read
block by block for h5py/zarr volumes; block tables add up, so blockwise equals in-memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from synapse_toolkit.blockwise import iter_blocks
from synapse_toolkit.errors import DataError
from synapse_toolkit.metrics._volumes import check_labels, unwrap
from synapse_toolkit.metrics.contingency import Contingency, ContingencyCounter, count_arrays

Measure = Literal["iou", "coverage"]


@dataclass(frozen=True)
class BestMatches:
    """For each object id: its best partner id in the other volume (or ``background``) and
    the measure (0 if it overlaps nothing)."""

    ids: np.ndarray
    best: np.ndarray
    measure: np.ndarray


@dataclass(frozen=True)
class OverlapScores:
    precision: float
    recall: float
    f1: float
    n_truth: int
    n_pred: int
    truth_detected: int
    pred_correct: int
    threshold: float
    truth_matches: BestMatches = field(repr=False)
    pred_matches: BestMatches = field(repr=False)

    def as_dict(self) -> dict[str, float]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1,
                "n_truth": self.n_truth, "n_pred": self.n_pred,
                "truth_detected": self.truth_detected, "pred_correct": self.pred_correct,
                "threshold": self.threshold}  # fmt: skip


def overlap_contingency(
    truth: Any, pred: Any, *, block_shape: tuple[int, int, int] | None = None, n_threads: int = 2
) -> Contingency:
    """Contingency table over all voxels (background included), block by block if asked or
    if the inputs are not in memory."""
    t_arr, _ = unwrap(truth, "truth synapses")
    p_arr, _ = unwrap(pred, "predicted synapses")
    check_labels(t_arr, "truth synapses")
    check_labels(p_arr, "predicted synapses")
    shape = tuple(int(s) for s in t_arr.shape)
    if tuple(p_arr.shape) != shape:
        raise DataError(f"truth shape {shape} != prediction shape {tuple(p_arr.shape)}")
    if isinstance(t_arr, np.ndarray) and isinstance(p_arr, np.ndarray) and block_shape is None:
        return count_arrays(t_arr, p_arr, ignore_truth=None, n_threads=n_threads)
    bs = block_shape or (16, *shape[1:])
    counter = ContingencyCounter(ignore_truth=None, n_threads=n_threads)
    for block in iter_blocks(shape, bs):
        counter.update(np.asarray(t_arr[block.write]), np.asarray(p_arr[block.write]))
    return counter.result()


def _best(
    ids: np.ndarray, own: np.ndarray, other: np.ndarray, inter: np.ndarray, union: np.ndarray,
    size_own: np.ndarray, measure: Measure, background: np.uint64,
) -> BestMatches:  # fmt: skip
    values = inter / (union if measure == "iou" else size_own)
    best = np.full(ids.size, background, np.uint64)
    best_v = np.zeros(ids.size, np.float64)
    if own.size:
        pos = np.searchsorted(ids, own)
        # sort by (own, -value, other id) so the first row of each object is its best match
        order = np.lexsort((other, -values, pos))
        first = np.ones(order.size, bool)
        first[1:] = pos[order][1:] != pos[order][:-1]
        sel = order[first]
        best[pos[sel]] = other[sel]
        best_v[pos[sel]] = values[sel]
    return BestMatches(ids, best, best_v)


def scores_from_table(
    table: Contingency, *, threshold: float = 0.5, measure: Measure = "iou",
    background: int = 0,
) -> OverlapScores:  # fmt: skip
    """Overlap scores from a contingency table over all voxels."""
    if measure not in ("iou", "coverage"):
        raise ValueError(f"measure must be 'iou' or 'coverage', got {measure!r}")
    bg = np.uint64(background)
    t_ids, t_inv = np.unique(table.truth, return_inverse=True)
    p_ids, p_inv = np.unique(table.pred, return_inverse=True)
    t_size = np.bincount(t_inv, weights=table.count, minlength=t_ids.size)
    p_size = np.bincount(p_inv, weights=table.count, minlength=p_ids.size)
    both = (table.truth != bg) & (table.pred != bg)
    tt, pp, inter = table.truth[both], table.pred[both], table.count[both].astype(np.float64)
    ts = t_size[np.searchsorted(t_ids, tt)]
    ps = p_size[np.searchsorted(p_ids, pp)]
    union = ts + ps - inter
    truth_objs = t_ids[t_ids != bg]
    pred_objs = p_ids[p_ids != bg]
    tm = _best(truth_objs, tt, pp, inter, union, ts, measure, bg)
    pm = _best(pred_objs, pp, tt, inter, union, ps, measure, bg)
    detected = int(np.count_nonzero((tm.measure >= threshold) & (tm.measure > 0)))
    correct = int(np.count_nonzero((pm.measure >= threshold) & (pm.measure > 0)))
    n_t, n_p = int(truth_objs.size), int(pred_objs.size)
    both_empty = n_t == 0 and n_p == 0
    precision = correct / n_p if n_p else (1.0 if both_empty else 0.0)
    recall = detected / n_t if n_t else (1.0 if both_empty else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return OverlapScores(precision, recall, f1, n_t, n_p, detected, correct, float(threshold),
                         tm, pm)  # fmt: skip


def score_overlap(
    truth: Any, pred: Any, *, threshold: float = 0.5, measure: Measure = "iou",
    background: int = 0, block_shape: tuple[int, int, int] | None = None, n_threads: int = 2,
) -> OverlapScores:  # fmt: skip
    """Overlap-based synapse detection scores of ``pred`` against ``truth`` (module docstring).
    Use ``background=0xffffffffffffffff`` for CREMI cleft volumes."""
    table = overlap_contingency(truth, pred, block_shape=block_shape, n_threads=n_threads)
    return scores_from_table(table, threshold=threshold, measure=measure, background=background)
