"""VOI / adapted Rand / CREMI score for segmentations (fast local helper).

Used by training validation and threshold selection. Semantics follow CREMI
(``shared/data/cremi-reference/README.md``): VOI in bits (split = H(test|truth),
merge = H(truth|test)); adapted Rand error with test label 0 counted as singletons;
CREMI score = sqrt((split + merge) * ARAND). Tested equal to the project's CREMI scorer
(:func:`project_scorer_scores`, :mod:`synapse_toolkit.metrics`), which ``benchmarks/eval_fib.py``
uses for the reported numbers. Truth voxels equal to ``ignore_label`` are left out of both
volumes (for gala data, truth label 0 = boundary/unlabelled). No border mask is applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse


@dataclass(frozen=True)
class SegScores:
    voi_split: float
    voi_merge: float
    arand: float

    @property
    def voi(self) -> float:
        return self.voi_split + self.voi_merge

    @property
    def cremi_score(self) -> float:
        return float(np.sqrt(self.voi * self.arand))

    def to_dict(self) -> dict[str, float]:
        return {
            "voi_split": self.voi_split,
            "voi_merge": self.voi_merge,
            "voi": self.voi,
            "arand": self.arand,
            "cremi_score": self.cremi_score,
        }


def project_scorer_scores(
    test: np.ndarray, truth: np.ndarray, ignore_label: int | Sequence[int] | None = 0
) -> SegScores:
    """The same scores from the project's CREMI scorer (:mod:`synapse_toolkit.metrics`).

    Exact reference semantics, but its numba kernels take seconds to load in a fresh process,
    so loops (validation, threshold selection) use :func:`segmentation_scores` instead.
    """
    from synapse_toolkit.metrics.cremi_neurons import score_neuron_ids

    truth = np.asarray(truth)
    ignore = [] if ignore_label is None else np.atleast_1d(ignore_label).tolist()
    t = truth.astype(np.uint64)
    if ignore:
        t[np.isin(truth, np.asarray(ignore).astype(truth.dtype))] = _IGNORE
    s = score_neuron_ids(t, np.asarray(test).astype(np.uint64, copy=False))
    if not np.isfinite(s.voi_split):  # nothing evaluated
        return SegScores(0.0, 0.0, 0.0)
    return SegScores(float(s.voi_split) + 0.0, float(s.voi_merge) + 0.0, float(s.adapted_rand))


_IGNORE = np.uint64(0xFFFFFFFFFFFFFFFF)


def segmentation_scores(
    test: np.ndarray, truth: np.ndarray, ignore_label: int | Sequence[int] | None = 0
) -> SegScores:
    """VOI split/merge (bits) and adapted Rand error of ``test`` against ``truth``.

    Truth voxels with ``ignore_label`` (one label or several) and always CREMI's ignore label
    0xffffffffffffffff (for unsigned truth) are left out.
    """
    test = np.asarray(test).reshape(-1)
    truth = np.asarray(truth).reshape(-1)
    if test.shape != truth.shape:
        raise ValueError(f"test and truth differ in size: {test.size} vs {truth.size}")
    ignore = [] if ignore_label is None else np.atleast_1d(ignore_label).tolist()
    if truth.dtype == np.uint64:
        ignore.append(0xFFFFFFFFFFFFFFFF)
    if ignore:
        keep = ~np.isin(truth, np.asarray(ignore, dtype=truth.dtype))
        test, truth = test[keep], truth[keep]
    n = truth.size
    if n == 0:
        return SegScores(0.0, 0.0, 0.0)
    _, t_idx = np.unique(truth, return_inverse=True)
    s_vals, s_idx = np.unique(test, return_inverse=True)
    cont = sparse.coo_matrix(
        (np.ones(n, dtype=np.float64), (t_idx.reshape(-1), s_idx.reshape(-1)))
    ).tocsr()
    cont.sum_duplicates()
    p = cont.data / n
    rows = np.repeat(np.arange(cont.shape[0]), np.diff(cont.indptr))
    cols = cont.indices
    pt = np.asarray(cont.sum(axis=1)).ravel() / n
    ps = np.asarray(cont.sum(axis=0)).ravel() / n
    # H(test | truth) = -Σ p_ij log(p_ij / p_i.)
    split = float(-np.sum(p * np.log2(p / pt[rows])))
    merge = float(-np.sum(p * np.log2(p / ps[cols])))
    # adapted Rand: test label 0 = singletons
    counts = cont.data
    zero_col = np.flatnonzero(s_vals == 0)
    is_zero = np.isin(cols, zero_col)
    c = counts[is_zero].sum()
    a_i = np.asarray(cont.sum(axis=1)).ravel()
    b_j = np.asarray(cont.sum(axis=0)).ravel()
    if zero_col.size:
        b_j = np.delete(b_j, zero_col)
    sum_a = float(np.sum(a_i * a_i))
    sum_b = float(np.sum(b_j * b_j) + c / n)
    sum_ab = float(np.sum(counts[~is_zero] ** 2) + c / n)
    precision = sum_ab / sum_b
    recall = sum_ab / sum_a
    arand = 1.0 - 2.0 * precision * recall / (precision + recall)
    return SegScores(max(split, 0.0) + 0.0, max(merge, 0.0) + 0.0, float(arand))
