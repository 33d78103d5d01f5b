"""The global merge by independent components of the cheap-edge graph: equal to the whole-graph
merge (and so to waterz) wherever it claims to be, with fewer edges held."""

from __future__ import annotations

import numpy as np
import pytest

from synapse_toolkit.inference import agglomeration_blockwise as ab
from synapse_toolkit.inference import regiongraph as rg
from synapse_toolkit.inference.agglomeration import agglomerate
from tests.test_blockwise_agglomeration import _affs, _labels

ALIGNED = [0.25, 0.5, 0.75]  # multiples of 1/256


def _blockwise(affs, tmp_path, name, ths, **kw) -> tuple[np.ndarray, ab.BlockwiseResult]:
    out = np.zeros((len(ths), *affs.shape[1:]), np.uint64)
    res = ab.agglomerate_blockwise(affs, out, ths, tmp_path / name, **kw)
    return out, res


def test_exactness_rule():
    assert rg.components_are_exact([0.5])
    assert rg.components_are_exact([0.25, 0.5, 255 / 256])
    assert not rg.components_are_exact([0.3])
    assert not rg.components_are_exact([1.0])
    assert rg.components_are_exact([0.3, 0.7], discretize_queue=0)


def test_union_find_roots_are_smallest_members():
    parent = np.arange(8, dtype=np.int32)
    rg.union_edges(parent, np.array([5, 6, 2, 7], np.int32), np.array([6, 3, 7, 1], np.int32))
    rg.flatten_roots(parent)
    assert parent.tolist() == [0, 1, 1, 3, 4, 3, 3, 1]
    counts = np.zeros(8, np.int32)
    rg.count_internal(parent, np.array([5, 0, 2], np.int32), np.array([3, 4, 7], np.int32), counts)
    assert counts.tolist() == [0, 1, 0, 1, 0, 0, 0, 0]


def test_initial_scores_are_the_kernels():
    """A graph of single edges: each merges exactly when its initial score is below the
    threshold, so the helper's scores must agree with the kernel's on either side of it."""
    rng = np.random.default_rng(0)
    n = 200
    bins = rng.integers(0, 256, n).astype(np.uint8)
    u = np.arange(0, 2 * n, 2, dtype=np.int32)
    s = rg.initial_scores("quantile50", max_bin=bins)
    roots = rg.merge_regions(2 * n, u, u + 1, [0.5], scoring="quantile50", max_bin=bins)[0]
    assert np.array_equal(roots[u + 1] == u, s < 0.5)
    sums = rng.uniform(0, 5, n)
    cnt = rng.integers(1, 6, n)
    s = rg.initial_scores("mean", aff_sum=sums, aff_count=cnt)
    expect = (1 - (sums / cnt).astype(np.float32)).astype(np.float32)
    assert np.array_equal(s, expect)


@pytest.mark.parametrize("scoring", ["quantile50", "quantile75", "mean"])
def test_components_equal_waterz_bit_for_bit(scoring, tmp_path, monkeypatch):
    """Given fragments, many blocks, tiny batches: split by components (the default at thresholds
    that are multiples of 1/256) equals in-memory waterz and the whole-graph merge exactly,
    while holding far fewer edges than the graph has."""
    monkeypatch.setattr(ab, "BATCH_EDGES", 300)
    affs = _affs(_labels(seed=11), seed=12)
    frag = ab.waterz_fragments(affs)
    ref = np.stack(agglomerate(affs, ALIGNED, fragments=frag, scoring=scoring))
    kw = {"fragments": frag, "scoring": scoring, "block_shape": (4, 24, 20)}
    out, res = _blockwise(affs, tmp_path, "split", ALIGNED, **kw)
    whole, res_whole = _blockwise(affs, tmp_path, "whole", ALIGNED, components="never", **kw)
    assert res.graph["components"] and not res_whole.graph["components"]
    assert res.graph["batches"] > 1
    assert res.graph["edges"] >= res_whole.n_edges  # rows: a pair on a block face counts twice
    assert res.graph["kept_edges"] < res.graph["edges"]
    assert np.array_equal(out, ref)
    assert np.array_equal(whole, ref)


def test_components_with_own_fragments_equal_the_whole_graph(tmp_path, monkeypatch):
    """Per-block fragments (numbered by block, no id array): the same segmentation as the merge
    of the whole graph."""
    monkeypatch.setattr(ab, "BATCH_EDGES", 100)
    affs = _affs(_labels(shape=(12, 64, 64), n=50, seed=13), noise=0.25, seed=14)
    kw = {"scoring": "quantile75", "block_shape": (6, 32, 24), "context": (2, 8, 8)}
    out, res = _blockwise(affs, tmp_path, "split", [0.5], **kw)
    whole, _ = _blockwise(affs, tmp_path, "whole", [0.5], components="never", **kw)
    assert res.graph["components"] and res.graph["nodes"] == res.n_fragments
    assert res.graph["kept_edges"] < res.graph["edges"]
    assert np.array_equal(out, whole)


def test_heap_queue_is_exact_at_any_threshold(tmp_path):
    affs = _affs(_labels(seed=15), seed=16)
    frag = ab.waterz_fragments(affs)
    ths = [0.3, 0.45, 0.7]
    kw = {"fragments": frag, "scoring": "quantile50", "discretize_queue": 0}
    out, res = _blockwise(affs, tmp_path, "split", ths, block_shape=(5, 32, 32), **kw)
    whole, _ = _blockwise(affs, tmp_path, "whole", ths, components="never", **kw)
    assert res.graph["components"]
    assert np.array_equal(out, whole)


def test_unaligned_thresholds_use_the_whole_graph_unless_asked(tmp_path):
    affs = _affs(_labels(seed=17), seed=18)
    frag = ab.waterz_fragments(affs)
    ths = [0.3, 0.6]
    ref = np.stack(agglomerate(affs, ths, fragments=frag, scoring="quantile50"))
    out, res = _blockwise(affs, tmp_path, "auto", ths, fragments=frag, scoring="quantile50")
    assert not res.graph["components"] and np.array_equal(out, ref)
    forced, res2 = _blockwise(affs, tmp_path, "always", ths, fragments=frag,
                              scoring="quantile50", components="always")  # fmt: skip
    assert res2.graph["components"]
    # only merges of edges scoring within the thresholds' 1/256 bins may differ
    assert np.mean(forced == ref) > 0.9


def test_bad_components_option(tmp_path):
    affs = _affs(_labels(seed=1), seed=2)
    with pytest.raises(ab.SyntkError, match="components must be"):
        _blockwise(affs, tmp_path, "bad", [0.5], components="sometimes")
