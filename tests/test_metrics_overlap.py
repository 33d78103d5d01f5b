"""Synapse detection by overlap: best matches, thresholds, blockwise == in-memory."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from synapse_toolkit.metrics.overlap import score_overlap


def _volumes() -> tuple[np.ndarray, np.ndarray]:
    t = np.zeros((6, 40, 40), np.uint64)
    t[:, 2:10, 2:10] = 1  # detected well (IoU 0.75)
    t[:, 20:24, 20:24] = 2  # missed
    t[:, 30:38, 2:10] = 3  # half covered (IoU 1/3)
    p = np.zeros_like(t)
    p[:, 2:10, 4:10] = 11
    p[:, 30:38, 6:14] = 12
    p[:, 12:16, 30:34] = 13  # false detection
    return t, p


def test_best_matches_and_scores() -> None:
    t, p = _volumes()
    s = score_overlap(t, p, threshold=0.5)
    assert (s.n_truth, s.n_pred, s.truth_detected, s.pred_correct) == (3, 3, 1, 1)
    assert s.precision == pytest.approx(1 / 3) and s.recall == pytest.approx(1 / 3)
    tm = dict(zip(s.truth_matches.ids.tolist(), s.truth_matches.best.tolist(), strict=True))
    assert tm == {1: 11, 2: 0, 3: 12}
    assert s.truth_matches.measure.tolist() == pytest.approx([0.75, 0.0, 1 / 3])
    low = score_overlap(t, p, threshold=0.3)
    assert (low.truth_detected, low.pred_correct) == (2, 2)
    cov = score_overlap(t, p, threshold=0.5, measure="coverage")
    # coverage: truth 1 by pred 11 = 0.75, truth 3 by pred 12 = 0.5, pred 11 = 1, pred 12 = 0.5
    assert (cov.truth_detected, cov.pred_correct) == (2, 2)


def test_best_match_ties_go_to_smallest_id() -> None:
    t = np.zeros((1, 4, 4), np.uint64)
    t[0, :, :2] = 5
    p = np.zeros_like(t)
    p[0, :2, :2] = 9
    p[0, 2:, :2] = 7
    s = score_overlap(t, p, threshold=0.1)
    assert s.truth_matches.best.tolist() == [7]


def test_blockwise_equals_in_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    t = rng.integers(0, 30, (8, 50, 50)).astype(np.uint64)
    p = np.where(rng.random(t.shape) < 0.8, t + 100, rng.integers(0, 30, t.shape)).astype(np.uint64)
    p[t == 0] = 0
    whole = score_overlap(t, p, threshold=0.4)
    blocks = score_overlap(t, p, threshold=0.4, block_shape=(3, 17, 19))
    assert blocks.as_dict() == whole.as_dict()
    np.testing.assert_array_equal(blocks.pred_matches.best, whole.pred_matches.best)
    np.testing.assert_array_equal(blocks.truth_matches.measure, whole.truth_matches.measure)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["t"], f["p"] = t, p
        assert score_overlap(f["t"], f["p"], threshold=0.4).as_dict() == whole.as_dict()


def test_cremi_background_and_empty() -> None:
    bg = 0xFFFFFFFFFFFFFFFF
    t = np.full((2, 5, 5), bg, np.uint64)
    t[0, 1:3, 1:3] = 0  # id 0 is a synapse when the background is 2**64 - 1
    s = score_overlap(t, t.copy(), background=bg)
    assert (s.precision, s.recall, s.f1) == (1.0, 1.0, 1.0)
    empty = np.zeros((2, 5, 5), np.uint64)
    both = score_overlap(empty, empty)
    assert (both.precision, both.recall, both.f1) == (1.0, 1.0, 1.0)
    none = score_overlap(np.ones_like(empty), empty)
    assert (none.precision, none.recall, none.f1) == (0.0, 0.0, 0.0)
