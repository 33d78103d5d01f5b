"""The numba hash-grouping kernels behind the neuron metrics agree with numpy.unique, also when
their tables grow far past the initial size."""

from __future__ import annotations

import numpy as np

from synapse_toolkit.metrics._hashcount import group_sum, key_sums


def test_group_sum_and_key_sums_match_numpy_unique_across_table_growth() -> None:
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 20000, 100000).astype(np.uint64)
    counts = rng.integers(1, 5, keys.size).astype(np.uint64)
    uniq, sums, inverse = group_sum(keys, counts)
    ref_keys, ref_inv = np.unique(keys, return_inverse=True)
    order = np.argsort(uniq)
    np.testing.assert_array_equal(uniq[order], ref_keys)
    np.testing.assert_array_equal(
        sums[order], np.bincount(ref_inv, weights=counts).astype(np.uint64)
    )
    np.testing.assert_array_equal(uniq[inverse], keys)
    rows = np.stack([keys, keys[::-1], counts], axis=1)
    k2, s2 = key_sums(rows, 1)
    ref2, inv2 = np.unique(rows[:, 1], return_inverse=True)
    o2 = np.argsort(k2)
    np.testing.assert_array_equal(k2[o2], ref2)
    np.testing.assert_array_equal(s2[o2], np.bincount(inv2, weights=counts).astype(np.uint64))
