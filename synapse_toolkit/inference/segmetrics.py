"""VOI / adapted Rand / CREMI score of in-memory segmentations, for loops such as training
validation and threshold selection.

A thin adapter over the project's one CREMI neuron scorer
(:func:`synapse_toolkit.metrics.cremi_neurons.score_neuron_ids`): the same numbers, with a
choice of truth labels to leave out and inputs of any dimensionality (2D sections included).
VOI in bits (split = H(test|truth), merge = H(truth|test)); adapted Rand error with test label 0
counted as singletons; CREMI score = sqrt((split + merge) * ARAND). No border mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from synapse_toolkit.cremi_ids import NEURON_IGNORE as IGNORE_LABEL


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


def segmentation_scores(
    test: np.ndarray, truth: np.ndarray, ignore_label: int | Sequence[int] | None = 0
) -> SegScores:
    """VOI split/merge (bits) and adapted Rand error of ``test`` against ``truth``.

    Truth voxels with ``ignore_label`` (one label or several) and always CREMI's ignore label
    0xffffffffffffffff are left out. All zeros when nothing is left to score.
    """
    from synapse_toolkit.metrics.cremi_neurons import score_neuron_ids

    test, truth = np.asarray(test), np.asarray(truth)
    if test.shape != truth.shape:
        raise ValueError(f"test and truth differ in shape: {test.shape} vs {truth.shape}")
    t = truth.astype(np.uint64)
    ignore = [] if ignore_label is None else np.atleast_1d(ignore_label).tolist()
    if ignore:
        t[np.isin(truth, np.asarray(ignore).astype(truth.dtype))] = IGNORE_LABEL
    as3d = (1,) * max(0, 3 - t.ndim) + t.shape if t.ndim <= 3 else (-1, *t.shape[-2:])
    s = score_neuron_ids(t.reshape(as3d), test.astype(np.uint64, copy=False).reshape(as3d))
    if not np.isfinite(s.voi_split):  # nothing evaluated
        return SegScores(0.0, 0.0, 0.0)
    return SegScores(float(s.voi_split) + 0.0, float(s.voi_merge) + 0.0, float(s.adapted_rand))
