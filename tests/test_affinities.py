"""Labels → affinities (boundary label 0 has affinity 0), masks and class balancing."""

from __future__ import annotations

import numpy as np
import pytest

from synapse_toolkit.affinities import (
    NEAREST_NEIGHBOURS,
    affinity_mask,
    balance_weights,
    labels_to_affinities,
    long_range_offsets,
)


def _brute(labels, offsets, boundary=True):
    out = np.zeros((len(offsets), *labels.shape), np.float32)
    for c, off in enumerate(offsets):
        for v in np.ndindex(labels.shape):
            u = tuple(a + o for a, o in zip(v, off, strict=True))
            if all(0 <= x < n for x, n in zip(u, labels.shape, strict=True)):
                same = labels[v] == labels[u] and (labels[v] != 0 or not boundary)
                out[(c, *v)] = same
    return out


@pytest.mark.parametrize("boundary", [True, False])
@pytest.mark.parametrize("long_range", [[], [2, 3]])
def test_affinities_equal_brute_force(boundary: bool, long_range: list[int]) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=(3, 4, 5))
    offs = long_range_offsets(long_range) if long_range else NEAREST_NEIGHBOURS
    got = labels_to_affinities(labels, offs, background_is_boundary=boundary)
    np.testing.assert_array_equal(got, _brute(labels, offs, boundary))


def test_boundary_voxels_cut_and_mask_marks_borders() -> None:
    labels = np.ones((2, 3, 3), np.uint64)
    labels[:, :, 1] = 0
    aff = labels_to_affinities(labels)
    assert aff[2, :, :, 1].sum() == 0 and aff[2, :, :, 2].sum() == 0  # into/out of the boundary
    assert aff[1, :, 1:, 0].all()  # along y inside object
    m = affinity_mask(labels.shape)
    assert m[0, 0].sum() == 0 and m[0, 1].all() and m[2, :, :, 0].sum() == 0


def test_balance_weights_give_each_class_half() -> None:
    t = np.zeros((10, 10))
    t[:2] = 1
    w = balance_weights(t)
    assert w[t == 1].sum() == pytest.approx(50) and w[t == 0].sum() == pytest.approx(50)
    assert balance_weights(np.ones(4)).max() < 1e3  # clipped, finite


def test_long_range_rejects_nearest() -> None:
    with pytest.raises(ValueError):
        long_range_offsets([1])
