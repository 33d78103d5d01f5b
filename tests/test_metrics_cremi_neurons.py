"""CREMI neuron scores equal the reference evaluator; blockwise equals in-memory; edge cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from synapse_toolkit.data import Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.metrics.contingency import ContingencyCounter, count_arrays, sum_tables
from synapse_toolkit.metrics.cremi_neurons import (
    IGNORE_LABEL,
    border_mask,
    neuron_contingency,
    score_neuron_ids,
    scores_from_contingency,
)

DATA = Path(__file__).parent / "data" / "cremi-reference"
RESULTS = json.loads((DATA / "results.json").read_text())["neuron_ids"]
KEYS = ("voi_split", "voi_merge", "adapted_rand", "adapted_rand_precision",
        "adapted_rand_recall", "voi_total", "cremi_score")  # fmt: skip
MODES = {"no_border_mask": None, "border_25nm": 25.0}


def _load(name: str) -> dict[str, np.ndarray]:
    return dict(np.load(DATA / "neuron_ids" / f"{name}.npz"))


def _close(got: float, want: float) -> bool:
    return got == want if want == 0 else abs(got - want) <= 1e-9 * abs(want)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", sorted(RESULTS))
def test_reference_values(name: str, mode: str) -> None:
    d = _load(name)
    want = RESULTS[name][mode]
    got = score_neuron_ids(
        d["truth"], d["test"], border_threshold_nm=MODES[mode],
        voxel_size_nm=tuple(d["resolution"]),
    ).as_dict()  # fmt: skip
    for key in KEYS:
        assert _close(got[key], want[key]), (key, got[key], want[key])
    assert got["n_voxels"] == want["n_voxels"]
    assert got["n_ignored_voxels"] == want["n_ignored_voxels"]


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_border_mask_equals_reference_mask(name: str) -> None:
    d = _load(name)
    truth = d["truth"]
    ref = np.unpackbits(d["ignore_mask_border_25nm"])[: truth.size].reshape(truth.shape)
    mine = border_mask(truth, 25.0 / d["resolution"][1]) | (truth == np.uint64(IGNORE_LABEL))
    np.testing.assert_array_equal(mine, ref.astype(bool))


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", ["N04_large_perturbed_voronoi", "N05_gt_ignore_label",
                                  "N08_salt_pepper_large_ids"])  # fmt: skip
def test_blockwise_equals_in_memory(name: str, mode: str, tmp_path: Path) -> None:
    d = _load(name)
    kw = {"border_threshold_nm": MODES[mode], "voxel_size_nm": tuple(d["resolution"])}
    whole = score_neuron_ids(d["truth"], d["test"], **kw)
    blocks = score_neuron_ids(d["truth"], d["test"], block_shape=(3, 37, 41), **kw)
    assert blocks == whole  # bit for bit
    # h5py- and zarr-backed volumes stream block by block
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["t"] = d["truth"]
        f["p"] = d["test"]
        h5 = score_neuron_ids(f["t"], f["p"], **kw)
    z = zarr.open_array(str(tmp_path / "p.zarr"), mode="w", shape=d["test"].shape,
                        chunks=(4, 50, 50), dtype=np.uint64)  # fmt: skip
    z[...] = d["test"]
    zr = score_neuron_ids(Volume(d["truth"], tuple(d["resolution"])), z, block_shape=(7, 64, 64),
                          border_threshold_nm=MODES[mode])  # fmt: skip
    assert h5 == whole
    assert zr == whole


def test_contingency_tables_add_up() -> None:
    rng = np.random.default_rng(1)
    t = rng.integers(0, 50, (20, 30, 30)).astype(np.uint64)
    p = rng.integers(0, 2**64 - 1, (20, 30, 30), dtype=np.uint64)
    p[rng.random(p.shape) < 0.7] = 7
    whole = count_arrays(t, p, n_threads=1)
    parts = [count_arrays(t[i : i + 5], p[i : i + 5], n_threads=1) for i in range(0, 20, 5)]
    total = sum_tables(parts)
    assert total.n_total == t.size
    for a, b in zip(total.to_dense(), whole.to_dense(), strict=True):
        np.testing.assert_array_equal(a, b)
    added = parts[0] + parts[1] + parts[2] + parts[3]
    np.testing.assert_array_equal(added.to_dense()[2], whole.to_dense()[2])
    # the dense table equals a plain numpy count
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    ref = np.zeros((ti.max() + 1, pi.max() + 1), np.int64)
    np.add.at(ref, (ti.ravel(), pi.ravel()), 1)
    np.testing.assert_array_equal(whole.to_dense()[2], ref)
    # pred marginal per row is the size of that prediction id
    sizes = dict(zip(*np.unique(p, return_counts=True), strict=True))
    assert all(sizes[q] == m for q, m in zip(whole.pred, whole.pred_marginal, strict=True))
    assert scores_from_contingency(total) == scores_from_contingency(whole)


def test_counter_compacts_large_buffers_correctly() -> None:
    rng = np.random.default_rng(2)
    t = rng.integers(0, 3, 300_000).astype(np.uint64)
    p = rng.integers(0, 40_000, 300_000).astype(np.uint64)
    c = ContingencyCounter()
    c.buffer_rows = 1000  # force many compactions
    for i in range(0, t.size, 7_000):
        c.update(t[i : i + 7000], p[i : i + 7000])
    got = c.result()
    ref = count_arrays(t, p, n_threads=2)
    for a, b in zip(got.to_dense(), ref.to_dense(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_identical_and_pure_split_merge_are_exact_zero() -> None:
    t = np.repeat(np.arange(4, dtype=np.uint64), 25).reshape(4, 5, 5)
    s = score_neuron_ids(t, t * 3 + 1)
    assert s.voi_split == 0.0 and s.voi_merge == 0.0 and s.adapted_rand == 0.0
    split = t.copy()
    split[:, :, 3:] += 100
    s = score_neuron_ids(t, split)
    assert s.voi_merge == 0.0 and s.voi_split > 0 and s.adapted_rand_precision == 1.0


def test_all_ignored_and_empty_are_nan() -> None:
    t = np.full((2, 4, 4), IGNORE_LABEL, np.uint64)
    s = score_neuron_ids(t, np.ones_like(t))
    assert math.isnan(s.voi_split) and math.isnan(s.adapted_rand) and math.isnan(s.cremi_score)
    assert s.n_voxels == 32 and s.n_ignored_voxels == 32
    e = score_neuron_ids(np.zeros((0, 4, 4), np.uint64), np.zeros((0, 4, 4), np.uint64))
    assert math.isnan(e.voi_merge) and e.n_voxels == 0


def test_prediction_all_zero_is_singletons() -> None:
    t = np.repeat(np.arange(1, 5, dtype=np.uint64), 16).reshape(1, 8, 8)
    s = score_neuron_ids(t, np.zeros_like(t))
    n = t.size
    # sumA = 4 * 16^2, sumB = sumAB = n / n = 1 -> precision 1, recall 1 / 1024
    assert s.adapted_rand_precision == 1.0
    assert s.adapted_rand_recall == pytest.approx(1 / 1024)
    assert s.voi_merge == pytest.approx(2.0)  # H(truth | one segment) = log2(4)
    assert n == 64


def test_single_label_section_reproduces_reference_corner() -> None:
    from scipy import ndimage

    t = np.ones((2, 12, 12), np.uint64)
    t[1, :, 6:] = 2  # section 1 has a boundary, section 0 holds one id
    mask = border_mask(t, 3.0)
    ref0 = ndimage.distance_transform_edt(np.ones((12, 12), bool)) <= 3.0  # scipy artifact
    np.testing.assert_array_equal(mask[0], ref0)
    assert not border_mask(t, 3.0, reference_single_label_sections=False)[0].any()
    # crops agree with the whole section
    crop = border_mask(t, 3.0, roi=(slice(0, 2), slice(2, 9), slice(1, 12)))
    np.testing.assert_array_equal(crop, mask[:, 2:9, 1:12])


def test_bad_inputs_raise_clear_errors() -> None:
    t = np.zeros((2, 4, 4), np.uint64)
    with pytest.raises(DataError, match="shape"):
        score_neuron_ids(t, np.zeros((2, 4, 5), np.uint64))
    with pytest.raises(DataError, match="voxel size"):
        score_neuron_ids(t, t, border_threshold_nm=25)
    with pytest.raises(DataError, match="integers"):
        score_neuron_ids(t, t.astype(np.float32))
    with pytest.raises(DataError, match="differ"):
        score_neuron_ids(Volume(t, (40, 4, 4)), Volume(t, (40, 8, 8)))


def test_neuron_contingency_counts_ignored_voxels() -> None:
    t = np.array([[[1, 2, IGNORE_LABEL, 0]]], dtype=np.uint64)
    table = neuron_contingency(t, np.array([[[5, 5, 5, 5]]], np.uint64))
    assert table.n_total == 4 and table.n_ignored == 1 and table.n_evaluated == 3
    assert sorted(table.truth.tolist()) == [0, 1, 2]


@pytest.mark.parametrize("name", ["N07_test_label_zero", "N08_salt_pepper_large_ids"])
def test_table_path_equals_fused_path(name: str) -> None:
    d = _load(name)
    kw = {"border_threshold_nm": 25.0, "voxel_size_nm": tuple(d["resolution"])}
    table = neuron_contingency(d["truth"], d["test"], **kw)
    assert scores_from_contingency(table) == score_neuron_ids(d["truth"], d["test"], **kw)


def _reference_formulas(truth: np.ndarray, test: np.ndarray, ignored: np.ndarray) -> tuple:
    """The reference definitions written out with scipy.sparse (independent of syntk's kernels):
    VOI on the contingency of evaluated voxels; adapted Rand with test label 0 as singletons."""
    from scipy import sparse

    keep = ~ignored.ravel()
    t = truth.ravel()[keep]
    s = test.ravel()[keep]
    _, ti = np.unique(t, return_inverse=True)
    su, si = np.unique(s, return_inverse=True)
    p = sparse.coo_matrix((np.ones(t.size), (si, ti))).tocsr().toarray() / t.size
    px, py = p.sum(axis=1), p.sum(axis=0)
    nz = p > 0
    split = -np.sum(p[nz] * np.log2((p / py[None, :])[nz]))
    merge = -np.sum(p[nz] * np.log2((p / px[:, None])[nz]))
    counts = p * t.size
    zero_row = su == 0
    c = counts[zero_row].sum()
    n = truth.size
    sum_a = np.sum(counts.sum(axis=0) ** 2)
    sum_b = np.sum(counts[~zero_row].sum(axis=1) ** 2) + c / n
    sum_ab = np.sum(counts[~zero_row] ** 2) + c / n
    prec, rec = sum_ab / sum_b, sum_ab / sum_a
    return split, merge, 1 - 2 * prec * rec / (prec + rec), prec, rec


@pytest.mark.parametrize("seed", range(6))
def test_random_volumes_match_reference_formulas(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (4, 23, 31)
    truth = rng.integers(0, 6, shape).astype(np.uint64)
    truth = np.repeat(np.repeat(truth[:, ::4, ::4], 4, axis=1), 4, axis=2)[:, :23, :31].copy()
    test = np.where(rng.random(shape) < 0.8, truth * 7, rng.integers(0, 4, shape)).astype(np.uint64)
    truth[rng.random(shape) < 0.05] = IGNORE_LABEL
    if seed % 2:
        truth[0] = 3  # a single-label section (reference corner artifact)
    for bt in (None, 8.0):
        ignored = truth == np.uint64(IGNORE_LABEL)
        if bt:
            ignored |= border_mask(truth, bt / 4.0)
        want = _reference_formulas(truth, test, ignored)
        got = score_neuron_ids(truth, test, border_threshold_nm=bt, voxel_size_nm=(40, 4, 4))
        vals = (got.voi_split, got.voi_merge, got.adapted_rand, got.adapted_rand_precision,
                got.adapted_rand_recall)  # fmt: skip
        np.testing.assert_allclose(vals, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("max_dist", [0.0, 0.5, 1.0, 1.5, 2.0, 3.7, 6.25])
def test_border_mask_equals_scipy_edt_rule(max_dist: float) -> None:
    from scipy import ndimage

    rng = np.random.default_rng(int(max_dist * 10))
    t = rng.integers(0, 4, (3, 9, 11)).astype(np.uint64)
    t = np.repeat(np.repeat(t, 4, axis=1), 3, axis=2)[:, :29, :31].copy()
    mask = border_mask(t, max_dist)
    for z in range(t.shape[0]):
        img = t[z]
        p = np.pad(img, 1, mode="edge")
        interior = ((img == p[:-2, 1:-1]) & (img == p[2:, 1:-1]) & (img == p[1:-1, :-2])
                    & (img == p[1:-1, 2:]))  # fmt: skip
        ref = ndimage.distance_transform_edt(interior) <= max_dist
        np.testing.assert_array_equal(mask[z], ref)
    crop = border_mask(t, max_dist, roi=(slice(1, 3), slice(5, 20), slice(3, 30)))
    np.testing.assert_array_equal(crop, mask[1:3, 5:20, 3:30])
