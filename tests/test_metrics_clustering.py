"""Clustering metrics: scikit-learn values and Hungarian-matched accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from synapse_toolkit.errors import DataError
from synapse_toolkit.metrics.clustering import hungarian_accuracy, score_clustering


def test_permuted_labels_are_perfect() -> None:
    t = np.array([0, 0, 1, 1, 2, 2, 2])
    s = score_clustering(t, (t + 1) % 3 + 10)
    assert s.ari == s.nmi == s.accuracy == pytest.approx(1.0)
    assert (s.n_items, s.n_classes, s.n_clusters) == (7, 3, 3)


def test_values_match_sklearn_and_hungarian() -> None:
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.7, t, rng.integers(0, 5, 200))
    s = score_clustering(t, p)
    assert s.ari == skm.adjusted_rand_score(t, p)
    assert s.ami == skm.adjusted_mutual_info_score(t, p)
    assert s.homogeneity == pytest.approx(skm.homogeneity_score(t, p))
    # brute-force accuracy over all maps of 5 clusters to 4 classes (one-to-one)
    from itertools import permutations

    best = 0
    for perm in permutations(range(5), 4):
        mapping = {c: k for k, c in enumerate(perm)}
        best = max(best, sum(mapping.get(q, -1) == x for x, q in zip(t, p, strict=True)))
    assert hungarian_accuracy(t, p) == pytest.approx(best / 200)


def test_edge_cases() -> None:
    assert score_clustering([], []).accuracy == 1.0
    with pytest.raises(DataError, match="labels"):
        score_clustering([0, 1], [0])
    assert hungarian_accuracy([0, 0, 0], [1, 2, 3]) == pytest.approx(1 / 3)
