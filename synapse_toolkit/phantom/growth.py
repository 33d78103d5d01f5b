"""Self-avoiding growth of neurite trees into an occupancy grid (numba kernel).

Each neuron starts at a random free point with a log-normal radius and grows in both directions
as a persistent random walk of 40-nm steps: at every step seven candidate directions (the current
direction slightly perturbed, and six strongly perturbed ones) are probed, and the walk takes the
first candidate if almost free (<= 5 % of its probe cells owned by another neuron), else the
freest one; it stops when every candidate is > 25 % blocked, on leaving the domain, or with
probability 0.002 per step. The radius follows an AR(1) process in log space; thin neurites get
varicosities (x up to 1.9 for 4-8 steps). Branches start with probability ``branch_probability``
per step (up to six per neuron, grown forward after the main neurite, not branching further).
Cells within the radius of each step are marked with the neuron id. Growth ends when the volume
(without its margin) is ``fill_fraction`` occupied or 400 random starts in a row fail.

Randomness comes from numba's generator seeded with a value derived from the phantom seed, so
the result is deterministic per seed.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_CELL = 40.0
_STEP = 40.0
_N_KEYS = 160  # radius keys: key = round(radius / cell * 4)
_MAX_PROBE = 160


def _probe_table() -> tuple[np.ndarray, np.ndarray]:
    """Probe offsets per radius key (a ball, subsampled with a fixed stride to <= 160 cells)."""
    table = np.zeros((_N_KEYS, _MAX_PROBE, 3), np.int64)
    counts = np.zeros(_N_KEYS, np.int64)
    for key in range(_N_KEYS):
        rad = max(key / 4, 0.5)
        r = int(np.ceil(rad))
        g = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1].reshape(3, -1).T
        ball = g[(g**2).sum(1) <= rad**2]
        if len(ball) > _MAX_PROBE:
            ball = ball[np.linspace(0, len(ball) - 1, _MAX_PROBE).astype(np.int64)]
        table[key, : len(ball)] = ball
        counts[key] = len(ball)
    return table, counts


@njit(cache=True, nogil=True)
def _key(radius: float) -> int:
    return min(int(np.round(radius / _CELL * 4.0)), _N_KEYS - 1)


@njit(cache=True, nogil=True)
def _cell(p: np.ndarray, lo: np.ndarray, i: int) -> int:
    return int(np.floor((p[i] - lo[i]) / _CELL))


@njit(cache=True, nogil=True)
def _blocked(occ, lo, centre, radius, neuron, probes, counts) -> float:
    k = _key(radius)
    n = counts[k]
    cz, cy, cx = _cell(centre, lo, 0), _cell(centre, lo, 1), _cell(centre, lo, 2)
    nz, ny, nx = occ.shape
    other = 0
    for j in range(n):
        z, y, x = cz + probes[k, j, 0], cy + probes[k, j, 1], cx + probes[k, j, 2]
        if 0 <= z < nz and 0 <= y < ny and 0 <= x < nx:
            o = occ[z, y, x]
            if o != 0 and o != neuron:
                other += 1
    return other / n


@njit(cache=True, nogil=True)
def _mark(occ, lo, centre, radius, neuron, inner_lo, inner_hi) -> int:
    """Mark free cells within ``radius`` of ``centre``; returns how many lie in the inner box."""
    rad = max(_key(radius) / 4.0, 0.5)
    r = int(np.ceil(rad))
    cz, cy, cx = _cell(centre, lo, 0), _cell(centre, lo, 1), _cell(centre, lo, 2)
    nz, ny, nx = occ.shape
    filled = 0
    for dz in range(-r, r + 1):
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if dz * dz + dy * dy + dx * dx > rad * rad:
                    continue
                z, y, x = cz + dz, cy + dy, cx + dx
                if 0 <= z < nz and 0 <= y < ny and 0 <= x < nx and occ[z, y, x] == 0:
                    occ[z, y, x] = neuron
                    if (inner_lo[0] <= z < inner_hi[0] and inner_lo[1] <= y < inner_hi[1]
                            and inner_lo[2] <= x < inner_hi[2]):  # fmt: skip
                        filled += 1
    return filled


@njit(cache=True, nogil=True)
def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.sqrt((v**2).sum())


@njit(cache=True, nogil=True)
def _walk(occ, lo, hi, start, direction, r0, neuron, probes, counts, inner_lo, inner_hi,
          branch_p, out_p, out_r, branches, n_branches, allow_branch):  # fmt: skip
    """One persistent random walk; fills out_p/out_r, returns (nodes, filled, n_branches)."""
    out_p[0] = start
    out_r[0] = r0
    n = 1
    filled = 0
    p = start.copy()
    d = _unit(direction)
    log_r = np.log(r0)
    bouton = 0
    cand = np.empty((7, 3))
    for _ in range(out_p.shape[0] - 1):
        if np.random.random() < 0.002:
            break
        log_r = 0.92 * log_r + 0.08 * np.log(r0) + 0.05 * np.random.normal()
        if bouton == 0 and r0 < 130.0 and np.random.random() < 0.025:
            bouton = 4 + int(np.random.random() * 4)
        r = np.exp(log_r)
        if bouton > 0:
            r *= 1.0 + 0.9 * np.sin(np.pi * bouton / 8.0)
            bouton -= 1
        best, best_b = 0, 2.0
        for c in range(7):
            s = 0.22 if c == 0 else 0.8
            for i in range(3):
                cand[c, i] = d[i] + s * np.random.normal()
            cand[c] = _unit(cand[c])
        for c in range(7):
            b = _blocked(occ, lo, p + _STEP * cand[c], r, neuron, probes, counts)
            if c == 0 and b <= 0.05:
                best, best_b = 0, b
                break
            if b < best_b:
                best, best_b = c, b
        if best_b > 0.25:
            break
        d = _unit(0.7 * d + 0.3 * cand[best])
        p = p + _STEP * cand[best]
        inside = True
        for i in range(3):
            if p[i] < lo[i] or p[i] >= hi[i]:
                inside = False
        if not inside:
            break
        out_p[n] = p
        out_r[n] = r
        n += 1
        filled += _mark(occ, lo, p, r, neuron, inner_lo, inner_hi)
        if allow_branch and np.random.random() < branch_p and n_branches < branches.shape[0]:
            for i in range(3):
                branches[n_branches, i] = p[i]
                branches[n_branches, 3 + i] = d[i] + 1.1 * np.random.normal()
            branches[n_branches, 6] = r0 * (0.45 + 0.45 * np.random.random())
            n_branches += 1
    return n, filled, n_branches


@njit(cache=True, nogil=True)
def _grow(seed, lo, hi, inner_lo, inner_hi, target, r_median, r_sigma, r_min, r_max, branch_p,
          probes, counts):  # fmt: skip
    np.random.seed(seed)
    shape = np.empty(3, np.int64)
    for i in range(3):
        shape[i] = int(np.ceil((hi[i] - lo[i]) / _CELL))
    occ = np.zeros((shape[0], shape[1], shape[2]), np.int32)
    cap = 1 << 16
    nodes = np.empty((cap, 3))
    radii = np.empty(cap)
    seg_start = [0]
    seg_neuron = [0]
    seg_neuron.pop()
    n_nodes = 0
    fwd_p, fwd_r = np.empty((4001, 3)), np.empty(4001)
    bwd_p, bwd_r = np.empty((4001, 3)), np.empty(4001)
    branches = np.empty((64, 7))
    filled, failures, neuron = 0, 0, 0
    while filled < target and failures < 400:
        start = np.empty(3)
        for i in range(3):
            start[i] = lo[i] + np.random.random() * (hi[i] - lo[i])
        r0 = min(max(np.exp(np.log(r_median) + r_sigma * np.random.normal()), r_min), r_max)
        if _blocked(occ, lo, start, r0 * 0.8, -1, probes, counts) > 0.05:
            failures += 1
            continue
        failures = 0
        neuron += 1
        direction = np.empty(3)
        for i in range(3):
            direction[i] = np.random.normal()
        filled += _mark(occ, lo, start, r0, neuron, inner_lo, inner_hi)
        nf, f1, nb = _walk(occ, lo, hi, start, direction, r0, neuron, probes, counts, inner_lo,
                           inner_hi, branch_p, fwd_p, fwd_r, branches, 0, True)  # fmt: skip
        nbw, f2, nb = _walk(occ, lo, hi, start, -direction, r0, neuron, probes, counts, inner_lo,
                            inner_hi, branch_p, bwd_p, bwd_r, branches, nb, True)  # fmt: skip
        filled += f1 + f2
        pieces = 1 + min(nb, 6)
        for piece in range(pieces):
            if piece == 0:
                m = nbw + nf - 1
            else:
                b = branches[piece - 1]
                m, f3, _ = _walk(occ, lo, hi, b[:3].copy(), b[3:6].copy(), b[6], neuron, probes,
                                 counts, inner_lo, inner_hi, branch_p, fwd_p, fwd_r, branches,
                                 64, False)  # fmt: skip
                filled += f3
                if m <= 2:
                    continue
            while n_nodes + m > nodes.shape[0]:
                bigger = np.empty((nodes.shape[0] * 2, 3))
                bigger[:n_nodes] = nodes[:n_nodes]
                nodes = bigger
                bigger_r = np.empty(radii.shape[0] * 2)
                bigger_r[:n_nodes] = radii[:n_nodes]
                radii = bigger_r
            if piece == 0:  # backward half reversed, then the forward half without the start
                for j in range(nbw):
                    nodes[n_nodes + j] = bwd_p[nbw - 1 - j]
                    radii[n_nodes + j] = bwd_r[nbw - 1 - j]
                for j in range(1, nf):
                    nodes[n_nodes + nbw - 1 + j] = fwd_p[j]
                    radii[n_nodes + nbw - 1 + j] = fwd_r[j]
            else:
                nodes[n_nodes : n_nodes + m] = fwd_p[:m]
                radii[n_nodes : n_nodes + m] = fwd_r[:m]
            n_nodes += m
            seg_start.append(n_nodes)
            seg_neuron.append(neuron)
    return nodes[:n_nodes].copy(), radii[:n_nodes].copy(), seg_start, seg_neuron, filled


def grow_neurites(
    seed: int, lo: np.ndarray, hi: np.ndarray, inner_lo: np.ndarray, inner_hi: np.ndarray,
    fill_fraction: float, radius_median: float, radius_sigma: float,
    radius_range: tuple[float, float], branch_probability: float,
) -> list[tuple[int, np.ndarray, np.ndarray]]:  # fmt: skip
    """Grow neurites in the domain [lo, hi) nm; returns (neuron id, nodes (n, 3), radii (n,))."""
    probes, counts = _probe_table()
    inner_cells = float(np.prod(inner_hi - inner_lo))
    nodes, radii, seg_start, seg_neuron, _ = _grow(
        int(seed), np.asarray(lo, np.float64), np.asarray(hi, np.float64),
        np.asarray(inner_lo, np.int64), np.asarray(inner_hi, np.int64),
        fill_fraction * inner_cells, float(radius_median), float(radius_sigma),
        float(radius_range[0]), float(radius_range[1]), float(branch_probability), probes, counts,
    )  # fmt: skip
    out = []
    for k, neuron in enumerate(seg_neuron):
        a, b = seg_start[k], seg_start[k + 1]
        out.append((int(neuron), nodes[a:b], radii[a:b]))
    return out
