"""Hierarchical agglomeration of a fragment graph with waterz's semantics, without voxels.

The global step of blockwise agglomeration
(:mod:`synapse_toolkit.inference.agglomeration_blockwise`): given the region-adjacency graph
of the fragments and each edge's mergeable statistics, merge
regions in order of their edge scores and re-score merged edges, exactly as waterz's
``IterativeRegionMerging`` does (waterz 0.10.1, ``backend/IterativeRegionMerging.hpp``):

- an edge's score is ``1 - statistic`` (waterz's ``OneMinus``) in float32;
- ``quantile<q>``: waterz's ``HistogramQuantileAffinity<..., q, float, 256, InitWithMax=true>``:
  the histogram of a fragment pair starts as a single count in the bin of the pair's *maximum*
  affinity (``bin = min(int(a * 256), 255)``); when two region edges merge their histograms add;
  the statistic is the centre ``(bin + 0.5) / 256`` of the bin holding the
  ``(q * count // 100 + 1)``-th smallest value;
- ``mean``: the mean affinity over every voxel pair along the edge (sum and count, added on merge);
- the queue pops the cheapest edge; a popped edge with score ``>= threshold`` stops the level; a
  deleted edge is skipped; a stale edge (its statistics changed by a merge) is re-scored and pushed
  back; merging edge (u, v), u < v, keeps u (so a region's id is its smallest fragment id); b's
  edges move to a, and an edge to a neighbour both share is merged into the one with the lower
  (last computed) score, which becomes stale;
- ``discretize_queue=256``: waterz's ``BinQueue`` (256 FIFO bins of ``int(score * 256)``); edges
  are first pushed in (u, v) order as waterz does; ``0``: a binary heap ordered by (score, edge)
  (waterz's ``std::priority_queue`` leaves ties in an unspecified order).

With the same fragments, the same edge order and quantile scoring, the result equals waterz's bit
for bit (tested). Memory: O(nodes + edges); a quantile histogram is a list of the pair bins it holds
until it has more than :data:`LIST_LIMIT` of them, then a dense 256-bin row, so at most
``edges / (LIST_LIMIT + 1)`` dense rows exist at any time (waterz keeps one per edge).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from synapse_toolkit.errors import SyntkError

BINS = 256
#: Region edges holding at most this many fragment-pair bins keep them as a list, not a histogram.
LIST_LIMIT = 32


def affinity_bins(affinities: np.ndarray) -> np.ndarray:
    """waterz's ``discretize<int>(a, 256)``: NaN and ``a <= 0`` go to 0, ``a >= 1`` to 255."""
    a = np.asarray(affinities, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        b = np.floor(np.nan_to_num(a, nan=0.0) * np.float32(BINS))
    return np.clip(b, 0, BINS - 1).astype(np.uint8)


def parse_scoring(scoring: str) -> int:
    """Quantile q for ``"quantile<q>"`` (5..95 in steps of 5, as waterz's wheel), -1 for mean."""
    from synapse_toolkit.inference.agglomeration import scoring_function

    scoring_function(scoring)  # the one validation, with its error message
    return -1 if scoring == "mean" else int(scoring[len("quantile") :])


# --------------------------------------------------------------------------------------------
# compiled kernel


@njit(cache=True)
def _quantile_score(
    e: int,
    q: int,
    cnt: np.ndarray,
    slot: np.ndarray,
    hist: np.ndarray,
    lhead: np.ndarray,
    onext: np.ndarray,
    obin: np.ndarray,
    buf: np.ndarray,
) -> np.float32:
    pivot = q * cnt[e] // 100 + 1  # 1-based rank, as waterz
    b = 0
    if slot[e] >= 0:
        s = 0
        row = slot[e]
        for b in range(BINS):
            s += hist[row, b]
            if s >= pivot:
                break
    else:
        n = 0
        o = lhead[e]
        while o >= 0:  # insertion sort of at most LIST_LIMIT bins
            v = obin[o]
            i = n
            while i > 0 and buf[i - 1] > v:
                buf[i] = buf[i - 1]
                i -= 1
            buf[i] = v
            n += 1
            o = onext[o]
        b = buf[pivot - 1]
    stat = np.float32((b + 0.5) / BINS)
    return np.float32(1.0 - stat)


@njit(cache=True)
def _mean_score(e: int, msum: np.ndarray, mcnt: np.ndarray) -> np.float32:
    return np.float32(1.0 - np.float32(msum[e] / mcnt[e]))


@njit(cache=True)
def _qbin(score: np.float32, nbins: int) -> int:
    if not score > 0:
        return 0
    if score >= 1:
        return nbins - 1
    return min(int(score * np.float32(nbins)), nbins - 1)


@njit(cache=True)
def _merge_regions(
    n_nodes: int,
    edge_u: np.ndarray,
    edge_v: np.ndarray,
    obin: np.ndarray,
    msum0: np.ndarray,
    mcnt0: np.ndarray,
    q: int,
    thresholds: np.ndarray,
    nbins: int,
    list_limit: int,
) -> np.ndarray:
    n_edges = edge_u.shape[0]
    quantile = q >= 0
    eu = edge_u.copy()
    ev = edge_v.copy()
    score = np.zeros(n_edges, np.float32)
    stale = np.zeros(n_edges, np.bool_)
    deleted = np.zeros(n_edges, np.bool_)
    parent = np.arange(n_nodes)

    # statistics
    cnt = np.ones(n_edges, np.int64)
    slot = -np.ones(n_edges, np.int64)
    lhead = np.arange(n_edges)
    ltail = np.arange(n_edges)
    onext = -np.ones(n_edges, np.int64)
    n_slots = (n_edges // (list_limit + 1) + 1) if quantile else 1
    hist = np.zeros((n_slots, BINS), np.int64)
    free_slots = np.arange(n_slots - 1, -1, -1)
    n_free = n_slots
    buf = np.zeros(list_limit + 1, np.int64)
    msum = msum0.copy()
    mcnt = mcnt0.copy()

    # incidence lists (entries are reused when an edge moves from b to a)
    ent_edge = np.empty(2 * n_edges, np.int64)
    ent_next = -np.ones(2 * n_edges, np.int64)
    head = -np.ones(n_nodes, np.int64)
    tail = -np.ones(n_nodes, np.int64)
    for e in range(n_edges):
        for k in range(2):
            node = eu[e] if k == 0 else ev[e]
            ent = 2 * e + k
            ent_edge[ent] = e
            if head[node] < 0:
                head[node] = ent
            else:
                ent_next[tail[node]] = ent
            tail[node] = ent
    # (u, v) -> edge
    pairs = dict()
    for e in range(n_edges):
        pairs[eu[e] * n_nodes + ev[e]] = e

    # queue: FIFO bins (nbins > 0) or a binary heap of (score, edge) (nbins == 0)
    q_edge = np.empty(max(n_edges, 1), np.int64)
    q_next = -np.ones(max(n_edges, 1), np.int64)
    q_free = np.arange(max(n_edges, 1) - 1, -1, -1)
    n_qfree = max(n_edges, 1)
    nb = max(nbins, 1)
    bin_head = -np.ones(nb, np.int64)
    bin_tail = -np.ones(nb, np.int64)
    min_bin = -1
    heap_s = np.empty(max(n_edges, 1), np.float32)
    heap_e = np.empty(max(n_edges, 1), np.int64)
    heap_n = 0

    out = np.empty((thresholds.shape[0], n_nodes), np.int64)

    for e in range(n_edges):  # initial scores, pushed in edge order
        s = (
            _quantile_score(e, q, cnt, slot, hist, lhead, onext, obin, buf)
            if quantile
            else _mean_score(e, msum, mcnt)
        )
        score[e] = s
        if nbins > 0:
            b = _qbin(s, nbins)
            n_qfree -= 1
            node = q_free[n_qfree]
            q_edge[node] = e
            q_next[node] = -1
            if bin_head[b] < 0:
                bin_head[b] = node
            else:
                q_next[bin_tail[b]] = node
            bin_tail[b] = node
            if min_bin < 0 or b < min_bin:
                min_bin = b
        else:
            i = heap_n
            heap_n += 1
            while i > 0:
                p = (i - 1) // 2
                if heap_s[p] < s or (heap_s[p] == s and heap_e[p] < e):
                    break
                heap_s[i] = heap_s[p]
                heap_e[i] = heap_e[p]
                i = p
            heap_s[i] = s
            heap_e[i] = e

    for t in range(thresholds.shape[0]):
        threshold = np.float32(thresholds[t])
        while True:
            # top
            if nbins > 0:
                if min_bin < 0:
                    break
                top = q_edge[bin_head[min_bin]]
            else:
                if heap_n == 0:
                    break
                top = heap_e[0]
            if score[top] >= threshold:
                break
            # pop
            if nbins > 0:
                node = bin_head[min_bin]
                bin_head[min_bin] = q_next[node]
                q_free[n_qfree] = node
                n_qfree += 1
                if bin_head[min_bin] < 0:
                    bin_tail[min_bin] = -1
                    while min_bin < nbins and bin_head[min_bin] < 0:
                        min_bin += 1
                    if min_bin == nbins:
                        min_bin = -1
            else:
                heap_n -= 1
                ls = heap_s[heap_n]
                le = heap_e[heap_n]
                i = 0
                while True:
                    c = 2 * i + 1
                    if c >= heap_n:
                        break
                    if c + 1 < heap_n and (
                        heap_s[c + 1] < heap_s[c]
                        or (heap_s[c + 1] == heap_s[c] and heap_e[c + 1] < heap_e[c])
                    ):
                        c += 1
                    if ls < heap_s[c] or (ls == heap_s[c] and le < heap_e[c]):
                        break
                    heap_s[i] = heap_s[c]
                    heap_e[i] = heap_e[c]
                    i = c
                heap_s[i] = ls
                heap_e[i] = le
            if deleted[top]:
                continue
            if stale[top]:
                s = (
                    _quantile_score(top, q, cnt, slot, hist, lhead, onext, obin, buf)
                    if quantile
                    else _mean_score(top, msum, mcnt)
                )
                score[top] = s
                stale[top] = False
                if nbins > 0:
                    b = _qbin(s, nbins)
                    n_qfree -= 1
                    node = q_free[n_qfree]
                    q_edge[node] = top
                    q_next[node] = -1
                    if bin_head[b] < 0:
                        bin_head[b] = node
                    else:
                        q_next[bin_tail[b]] = node
                    bin_tail[b] = node
                    if min_bin < 0 or b < min_bin:
                        min_bin = b
                else:
                    i = heap_n
                    heap_n += 1
                    while i > 0:
                        p = (i - 1) // 2
                        if heap_s[p] < s or (heap_s[p] == s and heap_e[p] < top):
                            break
                        heap_s[i] = heap_s[p]
                        heap_e[i] = heap_e[p]
                        i = p
                    heap_s[i] = s
                    heap_e[i] = top
                continue

            # merge b into a
            a = eu[top]
            bb = ev[top]
            parent[bb] = a
            deleted[top] = True  # now inside a region (waterz never looks at it again)
            pairs.pop(a * n_nodes + bb)
            ent = head[bb]
            head[bb] = -1
            tail[bb] = -1
            while ent >= 0:
                nxt = ent_next[ent]
                f = ent_edge[ent]
                if deleted[f] or (eu[f] != bb and ev[f] != bb):
                    ent = nxt
                    continue
                nb_node = ev[f] if eu[f] == bb else eu[f]
                pairs.pop(min(bb, nb_node) * n_nodes + max(bb, nb_node))
                key = min(a, nb_node) * n_nodes + max(a, nb_node)
                g = -1
                if key in pairs:
                    g = pairs[key]
                keep = f
                if g < 0:
                    move = True
                elif score[f] > score[g]:
                    # merge f's statistics into a's edge g; delete f
                    keep = g
                    move = False
                else:
                    # merge g into f; delete g; f moves to a
                    move = True
                if g >= 0:
                    src = g if keep == f else f
                    dst = keep
                    if quantile:
                        if slot[dst] < 0 and slot[src] < 0 and cnt[dst] + cnt[src] <= list_limit:
                            onext[ltail[dst]] = lhead[src]
                            ltail[dst] = ltail[src]
                        else:
                            if slot[dst] < 0:
                                n_free -= 1
                                row = free_slots[n_free]
                                hist[row, :] = 0
                                o = lhead[dst]
                                while o >= 0:
                                    hist[row, obin[o]] += 1
                                    o = onext[o]
                                slot[dst] = row
                            row = slot[dst]
                            if slot[src] >= 0:
                                hist[row, :] += hist[slot[src], :]
                                free_slots[n_free] = slot[src]
                                n_free += 1
                                slot[src] = -1
                            else:
                                o = lhead[src]
                                while o >= 0:
                                    hist[row, obin[o]] += 1
                                    o = onext[o]
                        cnt[dst] += cnt[src]
                    else:
                        msum[dst] += msum[src]
                        mcnt[dst] += mcnt[src]
                    deleted[src] = True
                    stale[dst] = True
                    if src == g:
                        pairs.pop(key)
                if move:
                    if a < nb_node:
                        eu[f] = a
                        ev[f] = nb_node
                    else:
                        eu[f] = nb_node
                        ev[f] = a
                    pairs[key] = f
                    ent_next[ent] = -1  # the entry joins a's list
                    if head[a] < 0:
                        head[a] = ent
                    else:
                        ent_next[tail[a]] = ent
                    tail[a] = ent
                ent = nxt

        for i in range(n_nodes):  # roots, with path compression
            r = i
            while parent[r] != r:
                r = parent[r]
            j = i
            while parent[j] != r:
                nxt = parent[j]
                parent[j] = r
                j = nxt
            out[t, i] = r
    return out


def merge_regions(
    n_nodes: int,
    edge_u: np.ndarray,
    edge_v: np.ndarray,
    thresholds: Sequence[float],
    *,
    scoring: str = "quantile50",
    max_bin: np.ndarray | None = None,
    aff_sum: np.ndarray | None = None,
    aff_count: np.ndarray | None = None,
    discretize_queue: int = 256,
) -> np.ndarray:
    """Region (smallest member node index) of every node at each threshold: ``(T, n_nodes)``.

    Nodes are ``0..n_nodes-1``, numbered in the order of their fragment ids; edges ``u < v`` are
    sorted by ``(u, v)``, each pair once. Quantile scoring needs ``max_bin`` (uint8, the pair's
    maximum affinity bin, :func:`affinity_bins`); mean scoring needs ``aff_sum`` and
    ``aff_count`` (the pair's affinity sum and number of voxel pairs). Thresholds ascending.
    """
    q = parse_scoring(scoring)
    if discretize_queue not in (0, 256):
        raise SyntkError(f"discretize_queue must be 0 or 256, got {discretize_queue}")
    u = np.ascontiguousarray(edge_u, dtype=np.int64)
    v = np.ascontiguousarray(edge_v, dtype=np.int64)
    n = u.shape[0]
    if v.shape != u.shape:
        raise SyntkError("merge_regions: edge_u and edge_v differ in length")
    if n and (np.any(u >= v) or u.min() < 0 or v.max() >= n_nodes):
        raise SyntkError("merge_regions: edges must satisfy 0 <= u < v < n_nodes")
    if n > 1:
        key = u * n_nodes + v
        if np.any(np.diff(key) <= 0):
            raise SyntkError("merge_regions: edges must be sorted by (u, v) without repeats")
    ths = np.asarray(sorted(float(t) for t in thresholds), dtype=np.float32)
    if q >= 0:
        if max_bin is None or len(max_bin) != n:
            raise SyntkError("merge_regions: quantile scoring needs max_bin per edge")
        obin = np.ascontiguousarray(max_bin, dtype=np.int64)
        msum = np.zeros(0, np.float64)
        mcnt = np.zeros(0, np.int64)
    else:
        if aff_sum is None or aff_count is None or len(aff_sum) != n or len(aff_count) != n:
            raise SyntkError("merge_regions: mean scoring needs aff_sum and aff_count per edge")
        obin = np.zeros(0, np.int64)
        msum = np.ascontiguousarray(aff_sum, dtype=np.float64)
        mcnt = np.ascontiguousarray(aff_count, dtype=np.int64)
        if n and mcnt.min() <= 0:
            raise SyntkError("merge_regions: aff_count must be positive")
    return _merge_regions(
        int(n_nodes), u, v, obin, msum, mcnt, q, ths, int(discretize_queue), LIST_LIMIT
    )
