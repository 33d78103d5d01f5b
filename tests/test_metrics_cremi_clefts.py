"""CREMI cleft scores equal the reference evaluator; blockwise equals in-memory; edge cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import ndimage

from synapse_toolkit.errors import DataError
from synapse_toolkit.metrics.cremi_clefts import BACKGROUND, INVALID, score_clefts

DATA = Path(__file__).parent / "data" / "cremi-reference"
RESULTS = json.loads((DATA / "results.json").read_text())["clefts"]
EMPTY = {"C11_empty_test", "C12_empty_truth"}


def _load(name: str) -> dict[str, np.ndarray]:
    return dict(np.load(DATA / "clefts" / f"{name}.npz"))


def _close(got: float, want: float) -> bool:
    return got == want if want == 0 else abs(got - want) <= 1e-9 * abs(want)


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_reference_values(name: str) -> None:
    d, want = _load(name), RESULTS[name]
    s = score_clefts(d["truth"], d["test"], voxel_size_nm=tuple(d["resolution"]),
                     reference_artifacts=name in EMPTY)  # fmt: skip
    assert s.false_positives == want["count_false_positives"]
    assert s.false_negatives == want["count_false_negatives"]
    assert s.count_false_positives(100) == want["count_false_positives_threshold_100"]
    assert s.count_false_negatives(100) == want["count_false_negatives_threshold_100"]
    assert s.n_test_voxels == want["n_test_cleft_voxels_evaluated"]
    assert s.n_truth_voxels == want["n_truth_cleft_voxels_evaluated"]
    for key, stats in (("acc_false_positives", s.fp_stats), ("acc_false_negatives", s.fn_stats)):
        if "error" in want[key]:  # the reference raises: we report NaN with count 0
            assert stats.count == 0 and math.isnan(stats.mean)
            continue
        for k, v in want[key].items():
            assert _close(getattr(stats, k), v), (key, k, getattr(stats, k), v)
    if "cremi_score_avg_distance" in want:
        assert _close(s.cremi_score, want["cremi_score_avg_distance"])
    if "derived_voxel_fscore" in want:
        assert _close(s.voxel_fscore, want["derived_voxel_fscore"])


@pytest.mark.parametrize("name", sorted(set(RESULTS) - EMPTY))
def test_blockwise_equals_in_memory(name: str, tmp_path: Path) -> None:
    d = _load(name)
    vs = tuple(d["resolution"])
    whole = score_clefts(d["truth"], d["test"], voxel_size_nm=vs).as_dict()
    assert score_clefts(d["truth"], d["test"], voxel_size_nm=vs,
                        block_shape=(3, 17, 23)).as_dict() == whole  # fmt: skip
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("t", data=d["truth"], chunks=(2, 32, 32))
        f.create_dataset("p", data=d["test"], chunks=(2, 32, 32))
        assert score_clefts(f["t"], f["p"], voxel_size_nm=vs).as_dict() == whole


def test_matches_scipy_edt_definition_on_random_volume() -> None:
    rng = np.random.default_rng(3)
    shape, res = (6, 30, 40), (40.0, 4.0, 4.0)
    truth = np.full(shape, BACKGROUND, np.uint64)
    test = np.full(shape, BACKGROUND, np.uint64)
    truth[rng.random(shape) < 0.01] = 0
    test[rng.random(shape) < 0.01] = 3
    truth[:, 25:, 30:] = INVALID
    invalid = truth == INVALID
    t_mask = (truth == BACKGROUND) | invalid
    p_mask = (test == BACKGROUND) | invalid
    t_edt = ndimage.distance_transform_edt(t_mask, sampling=res)
    p_edt = ndimage.distance_transform_edt(p_mask, sampling=res)
    s = score_clefts(truth, test, voxel_size_nm=res)
    np.testing.assert_array_equal(s.fp_distances, t_edt[~p_mask])
    np.testing.assert_array_equal(s.fn_distances, p_edt[~t_mask])
    for thr in (10.0, 40.0, 57.0, 200.0):
        assert s.count_false_positives(thr) == int(np.sum(t_edt[~p_mask] > thr))


def test_empty_sides_default_definition() -> None:
    truth = np.full((3, 10, 10), BACKGROUND, np.uint64)
    truth[1, 4:6, 4:6] = 1
    empty = np.full_like(truth, BACKGROUND)
    s = score_clefts(truth, empty, voxel_size_nm=(40, 4, 4))
    assert s.false_negatives == 4 and s.false_positives == 0
    assert math.isinf(s.fn_stats.mean) and s.fp_stats.count == 0 and math.isinf(s.cremi_score)
    assert s.voxel_fscore == 0.0
    both = score_clefts(empty, empty, voxel_size_nm=(40, 4, 4))
    assert both.cremi_score == 0.0 and both.voxel_fscore == 1.0
    assert both.false_positives == both.false_negatives == 0


def test_errors() -> None:
    a = np.zeros((2, 3, 3), np.uint64)
    with pytest.raises(DataError, match="voxel size"):
        score_clefts(a, a)
    with pytest.raises(DataError, match="shape"):
        score_clefts(a, np.zeros((2, 3, 4), np.uint64), voxel_size_nm=(1, 1, 1))
