"""CREMI synaptic-partner scores equal the reference evaluator (both roundings); edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synapse_toolkit.data import Annotations, Volume
from synapse_toolkit.metrics.cremi_partners import round_half_away, score_partners

DATA = Path(__file__).parent / "data" / "cremi-reference"
RESULTS = json.loads((DATA / "results.json").read_text())["synaptic_partners"]
ROUNDING = {"result": "half_away", "result_py3_rounding": "half_even"}


def _case(name: str) -> tuple[Annotations, Annotations, Volume]:
    d = np.load(DATA / "synaptic_partners" / f"{name}.npz")

    def ann(p: str) -> Annotations:
        return Annotations(d[f"{p}_ids"], tuple(str(t) for t in d[f"{p}_types"]),
                           d[f"{p}_locations"].reshape(-1, 3), d[f"{p}_partners"].reshape(-1, 2),
                           tuple(d[f"{p}_offset"]))  # fmt: skip

    seg = Volume(d["truth_neuron_ids"], tuple(d["resolution"]), tuple(d["neuron_ids_offset"]))
    return ann("test"), ann("truth"), seg


@pytest.mark.parametrize("dense_limit", [1000, 0])
@pytest.mark.parametrize("key", sorted(ROUNDING))
@pytest.mark.parametrize("name", sorted(RESULTS))
def test_reference_values(name: str, key: str, dense_limit: int) -> None:
    pred, truth, seg = _case(name)
    s = score_partners(pred, truth, seg, rounding=ROUNDING[key], dense_limit=dense_limit)
    want = RESULTS[name][key]
    if "error" in want:  # P12: empty prediction -> defined as F = P = R = 0
        assert (s.fscore, s.precision, s.recall, s.tp, s.fp) == (0.0, 0.0, 0.0, 0, 0)
        assert s.fn == len(truth.partners)
        return
    assert (s.tp, s.fp, s.fn) == (want["tp"], want["fp"], want["fn"])
    for k in ("fscore", "precision", "recall"):
        assert abs(getattr(s, k) - want[k]) <= 1e-9 * want[k]
    assert len(s.matches) == len(want["matches"])
    for (i, j, c), (wi, wj, wc) in zip(s.matches, want["matches"], strict=True):
        assert (i, j) == (wi, wj) and abs(c - wc) <= 1e-9 * max(wc, 1.0)


def test_python2_rounding() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999999999999994, 2.4999999999999996])
    np.testing.assert_array_equal(round_half_away(x), [1, 2, 3, -1, -3, 0, 2])
    np.testing.assert_array_equal(np.rint(x), [0, 2, 2, -0, -2, 0, 2])


def _pairs(pre: list[list[float]], post: list[list[float]], offset=(0.0, 0.0, 0.0)) -> Annotations:
    n = len(pre)
    locs = np.concatenate([np.asarray(pre, float), np.asarray(post, float)]).reshape(-1, 3)
    ids = np.arange(2 * n, dtype=np.uint64)
    types = ("presynaptic_site",) * n + ("postsynaptic_site",) * n
    partners = np.stack([ids[:n], ids[n:]], axis=1)
    return Annotations(ids, types, locs, partners, offset)


def test_rounding_modes_differ_at_half_voxel() -> None:
    seg = np.zeros((1, 4, 8), np.uint64)
    seg[0, :, 3:] = 1  # x voxel 2 -> label 0, x voxel 3 -> label 1
    vol = Volume(seg, (40.0, 4.0, 4.0))
    truth = _pairs([[0, 0, 16.0]], [[0, 4, 16.0]])  # voxel x = 4 -> label 1
    pred = _pairs([[0, 0, 10.0]], [[0, 4, 16.0]])  # x = 10 nm = voxel 2.5
    assert score_partners(pred, truth, vol, rounding="half_away").tp == 1  # 2.5 -> 3
    assert score_partners(pred, truth, vol, rounding="half_even").tp == 0  # 2.5 -> 2


def test_offsets_are_applied() -> None:
    seg = np.zeros((1, 4, 8), np.uint64)
    seg[0, :, 4:] = 1
    vol = Volume(seg, (40.0, 4.0, 4.0), offset_nm=(0.0, 0.0, 100.0))
    truth = _pairs([[0, 0, 120.0]], [[0, 4, 120.0]])  # world x = 120 -> voxel 5 -> label 1
    # the same world points stored relative to an annotation offset of 100 nm
    pred = _pairs([[0, 0, 20.0]], [[0, 4, 20.0]], offset=(0.0, 0.0, 100.0))
    s = score_partners(pred, truth, vol)
    assert s.tp == 1 and s.matches[0][2] == 0.0


def test_empty_sides_and_outside_sites() -> None:
    vol = Volume(np.ones((1, 4, 4), np.uint64), (40.0, 4.0, 4.0))
    one = _pairs([[0, 0, 0]], [[0, 4, 4]])
    empty = Annotations.empty()
    both = score_partners(empty, empty, vol)
    assert (both.fscore, both.precision, both.recall) == (1.0, 1.0, 1.0)
    no_truth = score_partners(one, empty, vol)
    assert (no_truth.fscore, no_truth.fp, no_truth.fn) == (0.0, 1, 0)
    outside = _pairs([[0, 0, 1000.0]], [[0, 4, 4]])
    s = score_partners(outside, one, vol)
    assert (s.tp, s.fp, s.fn, s.fscore) == (0, 1, 1, 0.0)


def test_sparse_equals_dense_on_random_problems() -> None:
    rng = np.random.default_rng(5)
    seg = rng.integers(0, 3, (4, 40, 40)).astype(np.uint64)
    vol = Volume(np.repeat(np.repeat(seg, 10, axis=1), 10, axis=2), (40.0, 40.0, 40.0))
    for _ in range(5):
        n, m = rng.integers(20, 60, 2)
        gt_pre = rng.uniform(0, 3000, (n, 3)) * [0.05, 1, 1]
        gt_post = gt_pre + rng.normal(0, 150, (n, 3)) * [0.05, 1, 1]
        idx = rng.integers(0, n, m)
        p_pre = gt_pre[idx] + rng.normal(0, 150, (m, 3)) * [0.05, 1, 1]
        p_post = gt_post[idx] + rng.normal(0, 150, (m, 3)) * [0.05, 1, 1]
        clip = np.array([159, 15999, 15999])
        truth = _pairs(np.clip(gt_pre, 0, clip), np.clip(gt_post, 0, clip))
        pred = _pairs(np.clip(p_pre, 0, clip), np.clip(p_post, 0, clip))
        dense = score_partners(pred, truth, vol, dense_limit=10_000)
        sparse = score_partners(pred, truth, vol, dense_limit=0)
        assert (dense.tp, dense.fp, dense.fn) == (sparse.tp, sparse.fp, sparse.fn)
        assert sum(c for *_, c in dense.matches) == pytest.approx(
            sum(c for *_, c in sparse.matches)
        )
