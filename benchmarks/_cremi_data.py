"""Synthetic CREMI-size label pair for the neuron-scoring benchmark (see bench_cremi_neurons.py)."""

from __future__ import annotations

import numpy as np


def make_pair(
    shape: tuple[int, int, int] = (125, 1250, 1250),
    grid: tuple[int, int, int] = (5, 64, 64),
    change_fraction: float = 0.10,
    salt_fraction: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Truth: a blocky partition (``grid`` boxes, ~20k segments) under random uint64 ids.
    Prediction: the same partition with ``change_fraction`` of segments merged into a
    neighbour or split in two, plus ``salt_fraction`` of voxels set to random uint64 ids."""
    rng = np.random.default_rng(seed)
    n_seg = grid[0] * grid[1] * grid[2]
    truth_ids = rng.integers(1, 2**64 - 2, size=n_seg, dtype=np.uint64)
    pred_ids = truth_ids.copy()
    split_ids = truth_ids.copy()
    changed = rng.choice(n_seg, size=int(change_fraction * n_seg), replace=False)
    merge = changed[: len(changed) // 2]
    split = changed[len(changed) // 2 :]
    pred_ids[merge] = truth_ids[(merge + 1) % n_seg]  # merged into the next box along x
    split_ids[split] = rng.integers(1, 2**64 - 2, size=len(split), dtype=np.uint64)

    edges = [np.linspace(0, s, g + 1).astype(np.int64) for s, g in zip(shape, grid, strict=True)]
    cell = [
        np.searchsorted(e, np.arange(s), side="right") - 1
        for e, s in zip(edges, shape, strict=True)
    ]
    # the second half (in x) of a split box takes a new id
    mid_x = (edges[2][:-1] + edges[2][1:]) // 2
    upper_x = np.arange(shape[2]) >= mid_x[cell[2]]

    truth = np.empty(shape, dtype=np.uint64)
    pred = np.empty(shape, dtype=np.uint64)
    yx = (cell[1][:, None] * grid[2] + cell[2][None, :]).astype(np.int64)
    for z in range(shape[0]):
        idx = cell[0][z] * grid[1] * grid[2] + yx
        truth[z] = truth_ids[idx]
        pz = pred_ids[idx]
        pz[:, upper_x] = np.where(
            np.isin(idx[:, upper_x], split), split_ids[idx[:, upper_x]], pz[:, upper_x]
        )
        pred[z] = pz
    n_salt = int(salt_fraction * truth.size)
    flat = pred.reshape(-1)
    pos = (
        rng.choice(truth.size, size=n_salt, replace=False)
        if truth.size < 2**24
        else (rng.integers(0, truth.size, size=n_salt))
    )
    flat[pos] = rng.integers(1, 2**64 - 2, size=n_salt, dtype=np.uint64)
    return truth, pred
