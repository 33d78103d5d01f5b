"""MALIS pair counts equal brute-force maximin edges on tiny graphs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from synapse_toolkit.affinities import NEAREST_NEIGHBOURS
from synapse_toolkit.nn.malis import _graph, malis_pair_counts, malis_weights


def brute_force_counts(affs: np.ndarray, labels: np.ndarray, mask=None):
    """Widest-path (max-min) closure by Floyd-Warshall, then the edge carrying each pair's value."""
    shape = labels.shape
    n = labels.size
    u, v, eid = _graph(shape, NEAREST_NEIGHBOURS)
    w = affs.reshape(-1)[eid]
    best = np.full((n, n), -np.inf)
    for a, b, x in zip(u, v, w, strict=True):
        best[a, b] = best[b, a] = x
    for k in range(n):
        best = np.maximum(best, np.minimum(best[:, k : k + 1], best[k : k + 1, :]))
    value_to_edge = {float(x): int(e) for x, e in zip(w, eid, strict=True)}
    lab = labels.reshape(-1)
    keep = np.ones(n, bool) if mask is None else mask.reshape(-1) > 0
    pos = np.zeros(affs.size)
    neg = np.zeros(affs.size)
    for a, b in itertools.combinations(range(n), 2):
        if not (keep[a] and keep[b]) or not np.isfinite(best[a, b]):
            continue
        e = value_to_edge[float(best[a, b])]
        if lab[a] == lab[b] and lab[a] != 0:
            pos[e] += 1
        else:
            neg[e] += 1
    return pos.reshape(affs.shape), neg.reshape(affs.shape)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(1, 3, 4), (2, 3, 3), (3, 2, 2)])
def test_pair_counts_match_brute_force(seed: int, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=shape)
    affs = rng.permutation(3 * labels.size).reshape(3, *shape).astype(np.float64) / (
        3 * labels.size
    )
    mask = (rng.random(shape) > 0.2) if seed % 2 else None
    pos, neg = malis_pair_counts(affs, labels, mask=mask)
    bpos, bneg = brute_force_counts(affs, labels, mask)
    np.testing.assert_array_equal(pos, bpos)
    np.testing.assert_array_equal(neg, bneg)
    n = labels.size if mask is None else int(mask.sum())
    assert pos.sum() + neg.sum() == n * (n - 1) // 2  # connected grid: every pair counted once


def test_constrained_weights_on_perfect_prediction_are_harmless() -> None:
    labels = np.zeros((2, 4, 4), int)
    labels[:, :, :2] = 1
    labels[:, :, 3] = 2  # column x=2 is boundary
    from synapse_toolkit.affinities import labels_to_affinities

    gt = labels_to_affinities(labels).astype(np.float64)
    pos, neg = malis_weights(gt, labels)
    # positive pairs only land on edges inside objects, negative ones only on cut edges
    assert pos[gt == 0].sum() == 0
    assert neg[gt == 1].sum() == 0
    assert pos.sum() > 0 and neg.sum() > 0


def test_malis_loss_gradient_pushes_the_right_way() -> None:
    torch = pytest.importorskip("torch")
    from synapse_toolkit.nn.malis import malis_loss

    labels = np.zeros((1, 2, 4, 4), int)
    labels[0, :, :, :2] = 1
    labels[0, :, :, 2:] = 2
    pred = torch.full((1, 3, 2, 4, 4), 0.5, requires_grad=True)
    loss = malis_loss(pred, labels)
    loss.backward()
    from synapse_toolkit.affinities import labels_to_affinities

    gt = labels_to_affinities(labels[0])
    g = pred.grad[0].numpy()
    assert (g[gt == 1] <= 0).all() and (g[gt == 1] < 0).any()  # raise affinities inside objects
    assert (g[gt == 0] >= 0).all() and (g[gt == 0] > 0).any()  # lower affinities across the cut


def test_negative_weight_scales_the_merge_part_only() -> None:
    """``negative_weight`` multiplies the gradient on the edges across objects and leaves the
    edges inside objects as they are."""
    torch = pytest.importorskip("torch")
    from synapse_toolkit.affinities import labels_to_affinities
    from synapse_toolkit.nn.malis import malis_loss

    labels = np.zeros((1, 2, 4, 4), int)
    labels[0, :, :, :2] = 1
    labels[0, :, :, 2:] = 2
    gt = labels_to_affinities(labels[0])
    grads = []
    for w in (1.0, 2.0):
        pred = torch.full((1, 3, 2, 4, 4), 0.5, requires_grad=True)
        malis_loss(pred, labels, negative_weight=w).backward()
        grads.append(pred.grad[0].numpy())
    np.testing.assert_allclose(grads[1][gt == 0], 2 * grads[0][gt == 0], rtol=1e-6)
    np.testing.assert_allclose(grads[1][gt == 1], grads[0][gt == 1], rtol=1e-6)
    assert np.abs(grads[0][gt == 0]).max() > 0
