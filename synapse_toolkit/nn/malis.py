"""MALIS loss (Turaga et al. 2009) and its constrained form (Funke et al., TPAMI 2019).

For every pair of voxels ``(u, v)`` the *maximin edge* is the edge whose affinity is the largest
minimum along all paths between ``u`` and ``v``; it lies on the maximum spanning tree (MST) of the
affinity graph. MALIS penalises, for every pair, the affinity of that edge: it should be high for
pairs in the same object (positive pairs) and low for pairs in different objects (negative
pairs). Edge weights = number of positive / negative pairs an edge is the maximin edge of; they are
found with Kruskal's algorithm: when an MST edge joins components ``A`` and ``B`` it is the maximin
edge of exactly the ``|A|·|B|`` pairs across, of which ``Σ_l A_l·B_l`` are positive.

Label 0 marks boundary voxels: each one is an object of its own (all its pairs are negative), so
affinities into boundaries are pushed down. Voxels outside ``mask`` take part in no pair.

The pair counting (a numba kernel) runs on the detached prediction; the loss is then a weighted
squared error in torch, so gradients flow through the chosen edges only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numba
import numpy as np

from synapse_toolkit.affinities import NEAREST_NEIGHBOURS, Offset, labels_to_affinities

if TYPE_CHECKING:
    import torch  # imported lazily at run time


@numba.njit(cache=True)
def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@numba.njit(cache=True)
def _kruskal_pair_counts(
    order: np.ndarray,
    edge_u: np.ndarray,
    edge_v: np.ndarray,
    labels: np.ndarray,
    counted: np.ndarray,
    n_labels: int,
) -> tuple[np.ndarray, np.ndarray]:
    n = labels.shape[0]
    parent = np.arange(n)
    size = np.zeros(n, dtype=np.int64)
    hist = np.zeros((n, n_labels), dtype=np.int64)
    for i in range(n):
        if counted[i]:
            size[i] = 1
            hist[i, labels[i]] = 1
    n_edges = order.shape[0]
    pos = np.zeros(n_edges, dtype=np.float64)
    neg = np.zeros(n_edges, dtype=np.float64)
    for k in range(n_edges):
        e = order[k]
        ra = _find(parent, edge_u[e])
        rb = _find(parent, edge_v[e])
        if ra == rb:
            continue
        p = 0
        for lab in range(1, n_labels):  # label 0 (boundary) never forms positive pairs
            p += hist[ra, lab] * hist[rb, lab]
        pos[e] = p
        neg[e] = size[ra] * size[rb] - p
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        parent[rb] = ra
        size[ra] += size[rb]
        for lab in range(n_labels):
            hist[ra, lab] += hist[rb, lab]
    return pos, neg


def _graph(
    shape: Sequence[int], offsets: Sequence[Offset]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edge endpoints (flat voxel indices) and the flat index of each edge into the affinities."""
    n = int(np.prod(shape))
    idx = np.arange(n, dtype=np.int64).reshape(shape)
    us, vs, eids = [], [], []
    for c, off in enumerate(offsets):
        a = tuple(slice(max(0, -o), s - max(0, o)) for s, o in zip(shape, off, strict=True))
        b = tuple(slice(max(0, o), s - max(0, -o)) for s, o in zip(shape, off, strict=True))
        us.append(idx[a].ravel())
        vs.append(idx[b].ravel())
        eids.append(c * n + idx[a].ravel())
    return np.concatenate(us), np.concatenate(vs), np.concatenate(eids)


def malis_pair_counts(
    affinities: np.ndarray,
    labels: np.ndarray,
    offsets: Sequence[Offset] = NEAREST_NEIGHBOURS,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per edge: number of positive and negative pairs whose maximin edge it is.

    ``affinities`` has shape ``(len(offsets), z, y, x)`` (edge ``c, v`` joins ``v`` and
    ``v + offsets[c]``), ``labels`` shape ``(z, y, x)`` with 0 = boundary. Returns two float64
    arrays shaped like ``affinities``.
    """
    affinities = np.asarray(affinities)
    labels = np.asarray(labels)
    if affinities.shape != (len(offsets), *labels.shape):
        raise ValueError(
            f"affinities shape {affinities.shape} does not match {len(offsets)} offsets "
            f"x labels shape {labels.shape}"
        )
    uniq, dense = np.unique(labels, return_inverse=True)
    dense = dense.reshape(-1).astype(np.int64)
    if uniq[0] != 0:  # no boundary voxel: shift so that index 0 stays "boundary"
        dense += 1
    n_labels = int(dense.max()) + 1 if dense.size else 1
    counted = (
        np.ones(labels.size, dtype=np.bool_) if mask is None else np.asarray(mask).reshape(-1) > 0
    )
    u, v, eid = _graph(labels.shape, offsets)
    flat = affinities.reshape(-1)[eid]
    order = np.argsort(-flat, kind="stable").astype(np.int64)
    pos_e, neg_e = _kruskal_pair_counts(order, u, v, dense, counted, n_labels)
    pos = np.zeros(affinities.size, dtype=np.float64)
    neg = np.zeros(affinities.size, dtype=np.float64)
    pos[eid] = pos_e
    neg[eid] = neg_e
    return pos.reshape(affinities.shape), neg.reshape(affinities.shape)


def malis_weights(
    affinities: np.ndarray,
    labels: np.ndarray,
    offsets: Sequence[Offset] = NEAREST_NEIGHBOURS,
    *,
    constrained: bool = True,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative MALIS weights for a prediction.

    ``constrained=True`` (Funke et al. 2019) counts positive pairs on ``min(pred, gt)`` (edges
    between objects cut) and negative pairs on ``max(pred, gt)`` (edges inside objects joined);
    otherwise both counts come from the prediction itself (Turaga et al. 2009).
    """
    if not constrained:
        return malis_pair_counts(affinities, labels, offsets, mask)
    gt = labels_to_affinities(labels, offsets, dtype=affinities.dtype)
    pos, _ = malis_pair_counts(np.minimum(affinities, gt), labels, offsets, mask)
    _, neg = malis_pair_counts(np.maximum(affinities, gt), labels, offsets, mask)
    return pos, neg


def malis_loss(
    prediction: torch.Tensor,
    labels: np.ndarray,
    offsets: Sequence[Offset] = NEAREST_NEIGHBOURS,
    *,
    constrained: bool = True,
    mask: np.ndarray | None = None,
    negative_weight: float = 1.0,
) -> torch.Tensor:
    """MALIS loss of ``prediction`` ``(B, C, z, y, x)`` against labels ``(B, z, y, x)``.

    Squared error on the maximin edges, positive and negative parts each normalised by their pair
    count and summed: ``Σ w⁺(1-a)²/Σw⁺ + λ Σ w⁻a²/Σw⁻``; ``λ = negative_weight`` weighs the edges
    that merge different objects against those that split one.
    """
    import torch

    pred_np = prediction.detach().cpu().numpy()
    labels = np.asarray(labels)
    w_pos = np.zeros(pred_np.shape, dtype=np.float32)
    w_neg = np.zeros(pred_np.shape, dtype=np.float32)
    for b in range(pred_np.shape[0]):
        m = None if mask is None else mask[b]
        p, n = malis_weights(pred_np[b], labels[b], offsets, constrained=constrained, mask=m)
        w_pos[b], w_neg[b] = p, n
    sp, sn = max(float(w_pos.sum()), 1.0), max(float(w_neg.sum()), 1.0)
    wp = torch.from_numpy(w_pos / sp).to(prediction.device)
    wn = torch.from_numpy(w_neg / sn).to(prediction.device)
    return (wp * (1 - prediction) ** 2).sum() + negative_weight * (wn * prediction**2).sum()
