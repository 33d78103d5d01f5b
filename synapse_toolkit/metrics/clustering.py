"""Clustering metrics against known classes: ARI, NMI, AMI, homogeneity, completeness (all from
scikit-learn) and Hungarian-matched accuracy (each cluster mapped to at most one class by a
maximum-weight assignment of the confusion matrix; accuracy = matched items / items).

Empty input (no items) scores 1.0 everywhere: there is nothing to disagree on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from synapse_toolkit.errors import DataError


@dataclass(frozen=True)
class ClusteringScores:
    ari: float
    nmi: float
    ami: float
    homogeneity: float
    completeness: float
    accuracy: float
    n_items: int
    n_classes: int
    n_clusters: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def hungarian_accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    """Fraction of items whose cluster maps to their class under the best one-to-one mapping."""
    t = np.asarray(truth).reshape(-1)
    p = np.asarray(pred).reshape(-1)
    if t.size == 0:
        return 1.0
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    conf = np.zeros((pi.max() + 1, ti.max() + 1), np.int64)
    np.add.at(conf, (pi, ti), 1)
    rows, cols = linear_sum_assignment(conf, maximize=True)
    return float(conf[rows, cols].sum()) / t.size


def score_clustering(truth: np.ndarray, pred: np.ndarray) -> ClusteringScores:
    """Scores of cluster labels ``pred`` against class labels ``truth`` (same length)."""
    from sklearn import metrics as skm  # imported here: sklearn costs ~160 MB and 3 s

    t = np.asarray(truth).reshape(-1)
    p = np.asarray(pred).reshape(-1)
    if t.shape != p.shape:
        raise DataError(f"clustering: {t.size} class labels but {p.size} cluster labels")
    if t.size == 0:
        return ClusteringScores(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0, 0, 0)
    h, c, _ = skm.homogeneity_completeness_v_measure(t, p)
    return ClusteringScores(
        ari=float(skm.adjusted_rand_score(t, p)),
        nmi=float(skm.normalized_mutual_info_score(t, p)),
        ami=float(skm.adjusted_mutual_info_score(t, p)),
        homogeneity=float(h),
        completeness=float(c),
        accuracy=hungarian_accuracy(t, p),
        n_items=int(t.size),
        n_classes=int(np.unique(t).size),
        n_clusters=int(np.unique(p).size),
    )


def match_nearest(points_nm: np.ndarray, reference_nm: np.ndarray, max_nm: float) -> np.ndarray:
    """Index of the nearest reference point (both (N, 3) nm) within ``max_nm``, -1 if none;
    e.g. to give found synapses the type of the annotated synapse whose pre site is nearest."""
    p = np.asarray(points_nm, np.float64).reshape(-1, 3)
    r = np.asarray(reference_nm, np.float64).reshape(-1, 3)
    if len(r) == 0 or len(p) == 0:
        return np.full(len(p), -1, np.int64)
    d = np.linalg.norm(p[:, None] - r[None], axis=2)
    j = d.argmin(axis=1)
    return np.where(d[np.arange(len(j)), j] <= max_nm, j, -1).astype(np.int64)
