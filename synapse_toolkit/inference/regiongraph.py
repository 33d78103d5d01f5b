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
for bit (tested). Memory: O(nodes + edges), about 45-50 bytes per edge (int32 ends and list and
queue links, the float32 score, the pair table of int32 edge ids); a quantile histogram is a list
of the pair bins it holds until it has more than :data:`LIST_LIMIT` of them, then a dense 256-bin
row, so at most ``edges / (LIST_LIMIT + 1)`` dense rows exist at any time (waterz keeps one per
edge).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from synapse_toolkit.errors import SyntkError

BINS = 256
#: Region edges holding at most this many fragment-pair bins keep them as a list, not a histogram.
LIST_LIMIT = 32
#: Dense histogram rows allocated at first (the pool doubles when full).
INITIAL_ROWS = 1024


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
        o = e  # an edge's list starts with its own fragment pair
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


_EMPTY = -1


@njit(cache=True)
def _hslot(key: int, mask: int) -> int:
    x = np.uint64(key) * np.uint64(11400714819323198485)  # Fibonacci hashing
    return int(np.int64(x >> np.uint64(32))) & mask


# The (u, v) -> edge table holds edge ids only (4 bytes a slot): an entry's key is its edge's
# current ``eu * n_nodes + ev`` (an edge's ends change only while it is out of the table).


@njit(cache=True)
def _hfind(table: np.ndarray, key: int, mask: int, eu, ev, n_nodes: int) -> int:
    """Slot of the edge with ``key`` in the linear-probing table, or -1."""
    i = _hslot(key, mask)
    while table[i] != _EMPTY:
        e = table[i]
        if np.int64(eu[e]) * n_nodes + ev[e] == key:
            return i
        i = (i + 1) & mask
    return -1


@njit(cache=True)
def _hput(table: np.ndarray, key: int, edge: int, mask: int) -> None:
    """Insert ``edge`` (not in the table) under ``key``."""
    i = _hslot(key, mask)
    while table[i] != _EMPTY:
        i = (i + 1) & mask
    table[i] = edge


@njit(cache=True)
def _hdel(table: np.ndarray, key: int, mask: int, eu, ev, n_nodes: int) -> None:
    """Remove the edge with ``key`` (backward-shift deletion: no tombstones)."""
    i = _hfind(table, key, mask, eu, ev, n_nodes)
    if i < 0:
        return
    j = i
    while True:
        j = (j + 1) & mask
        if table[j] == _EMPTY:
            break
        e = table[j]
        k = _hslot(np.int64(eu[e]) * n_nodes + ev[e], mask)
        if (i <= j and i < k <= j) or (i > j and (k > i or k <= j)):
            continue  # table[j] is still reachable from its home slot
        table[i] = table[j]
        i = j
    table[i] = _EMPTY


@njit(cache=True)
def _iota(n: int) -> np.ndarray:
    out = np.empty(n, np.int32)
    for i in range(n):
        out[i] = i
    return out


# queue state: st[1] = smallest non-empty bin (-1: empty), st[2] = heap size. An edge is in the
# queue at most once at a time, so the bin queue's list node of an edge is the edge itself.


@njit(cache=True)
def _push(e, s, nbins, st, q_next, bin_head, bin_tail, heap_s, heap_e):
    if nbins > 0:  # FIFO bin queue (waterz's BinQueue)
        b = _qbin(s, nbins)
        q_next[e] = -1
        if bin_head[b] < 0:
            bin_head[b] = e
        else:
            q_next[bin_tail[b]] = e
        bin_tail[b] = e
        if st[1] < 0 or b < st[1]:
            st[1] = b
        return
    i = st[2]  # binary heap on (score, edge)
    st[2] += 1
    while i > 0:
        p = (i - 1) // 2
        if heap_s[p] < s or (heap_s[p] == s and heap_e[p] < e):
            break
        heap_s[i] = heap_s[p]
        heap_e[i] = heap_e[p]
        i = p
    heap_s[i] = s
    heap_e[i] = e


@njit(cache=True)
def _top(nbins, st, bin_head, heap_e):
    if nbins > 0:
        return -1 if st[1] < 0 else bin_head[st[1]]
    return -1 if st[2] == 0 else heap_e[0]


@njit(cache=True)
def _pop(nbins, st, q_next, bin_head, bin_tail, heap_s, heap_e):
    if nbins > 0:
        mb = st[1]
        bin_head[mb] = q_next[bin_head[mb]]
        if bin_head[mb] < 0:
            bin_tail[mb] = -1
            while mb < nbins and bin_head[mb] < 0:
                mb += 1
            st[1] = -1 if mb == nbins else mb
        return
    st[2] -= 1
    n = st[2]
    ls = heap_s[n]
    le = heap_e[n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and (
            heap_s[c + 1] < heap_s[c] or (heap_s[c + 1] == heap_s[c] and heap_e[c + 1] < heap_e[c])
        ):
            c += 1
        if ls < heap_s[c] or (ls == heap_s[c] and le < heap_e[c]):
            break
        heap_s[i] = heap_s[c]
        heap_e[i] = heap_e[c]
        i = c
    heap_s[i] = ls
    heap_e[i] = le


@njit(cache=True)
def _merge_stats(
    src, dst, quantile, list_limit, cnt, slot, hist, free, ltail, onext, obin, msum, mcnt
):
    """Add edge ``src``'s statistics to ``dst``'s (``free[0]`` = number of free dense rows,
    ``free[1:]`` their indices)."""
    if not quantile:
        msum[dst] += msum[src]
        mcnt[dst] += mcnt[src]
        return
    if slot[dst] < 0 and slot[src] < 0 and cnt[dst] + cnt[src] <= list_limit:
        onext[ltail[dst]] = src  # an edge's list starts with its own fragment pair
        ltail[dst] = ltail[src]
    else:
        if slot[dst] < 0:
            free[0] -= 1
            row = free[1 + free[0]]
            hist[row, :] = 0
            o = dst
            while o >= 0:
                hist[row, obin[o]] += 1
                o = onext[o]
            slot[dst] = row
        row = slot[dst]
        if slot[src] >= 0:
            for b in range(BINS):
                hist[row, b] += hist[slot[src], b]
            free[1 + free[0]] = slot[src]
            free[0] += 1
            slot[src] = -1
        else:
            o = src
            while o >= 0:
                hist[row, obin[o]] += 1
                o = onext[o]
    cnt[dst] += cnt[src]


@njit(cache=True)
def _grow_rows(hist, free, max_slots):
    """Twice the dense histogram rows (at most ``max_slots``), the new ones free."""
    n = hist.shape[0]
    m = min(max(2 * n, 1), max_slots)
    grown = np.zeros((m, BINS), np.int32)
    grown[:n] = hist
    free2 = np.empty(m + 1, np.int64)
    free2[0] = m - n
    for i in range(m - n):
        free2[1 + i] = m - 1 - i
    return grown, free2


@njit(cache=True)
def _score(e, q, cnt, slot, hist, onext, obin, buf, msum, mcnt):
    if q >= 0:
        return _quantile_score(e, q, cnt, slot, hist, onext, obin, buf)
    return _mean_score(e, msum, mcnt)


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
    initial_rows: int,
) -> np.ndarray:
    n_edges = edge_u.shape[0]
    quantile = q >= 0
    eu = edge_u  # int32 node indices (the caller's private copies, updated in place);
    ev = edge_v  # edge indices are int32 too (4 bytes, not 8)
    score = np.zeros(n_edges, np.float32)
    stale = np.zeros(n_edges, np.bool_)
    deleted = np.zeros(n_edges, np.bool_)
    parent = _iota(n_nodes)

    # statistics: list of fragment-pair bins, or a dense histogram row
    cnt = np.ones(n_edges, np.int32)
    slot = -np.ones(n_edges, np.int32)
    ltail = _iota(n_edges)
    onext = -np.ones(n_edges, np.int32)
    # dense rows: at most n_edges // (list_limit + 1) + 1 in use at once; grown on demand
    max_slots = (n_edges // (list_limit + 1) + 1) if quantile else 1
    hist = np.zeros((min(initial_rows, max_slots), BINS), np.int32)
    free = np.empty(hist.shape[0] + 1, np.int64)
    free[0] = hist.shape[0]
    free[1:] = np.arange(hist.shape[0] - 1, -1, -1)
    buf = np.zeros(list_limit + 1, np.int64)
    msum = msum0.copy()
    mcnt = mcnt0.copy()

    # incidence lists (an entry moves with its edge from b's list to a's)
    ent_next = -np.ones(2 * n_edges, np.int32)
    head = -np.ones(n_nodes, np.int32)
    tail = -np.ones(n_nodes, np.int32)
    for e in range(n_edges):
        for k in range(2):
            node = eu[e] if k == 0 else ev[e]
            ent = 2 * e + k
            if head[node] < 0:
                head[node] = ent
            else:
                ent_next[tail[node]] = ent
            tail[node] = ent
    # (u, v) -> edge: a linear-probing hash table of edge ids
    cap = 1
    while cap < n_edges + n_edges // 2 + 2:  # load factor <= 2/3
        cap *= 2
    hmask = cap - 1
    table = np.full(cap, _EMPTY, np.int32)
    for e in range(n_edges):
        _hput(table, np.int64(eu[e]) * n_nodes + ev[e], e, hmask)

    # queue
    m = max(n_edges, 1)  # at most one queue entry per edge at any time
    mq = m if nbins > 0 else 1
    mh = 1 if nbins > 0 else m
    st = np.array([0, -1, 0], np.int64)
    q_next = -np.ones(mq, np.int32)
    bin_head = -np.ones(max(nbins, 1), np.int32)
    bin_tail = -np.ones(max(nbins, 1), np.int32)
    heap_s = np.empty(mh, np.float32)
    heap_e = np.empty(mh, np.int32)

    out = np.empty((thresholds.shape[0], n_nodes), np.int32)
    for e in range(n_edges):  # initial scores, pushed in edge order
        s = _score(e, q, cnt, slot, hist, onext, obin, buf, msum, mcnt)
        score[e] = s
        _push(e, s, nbins, st, q_next, bin_head, bin_tail, heap_s, heap_e)

    for t in range(thresholds.shape[0]):
        threshold = np.float32(thresholds[t])
        while True:
            top = _top(nbins, st, bin_head, heap_e)
            if top < 0 or score[top] >= threshold:
                break
            _pop(nbins, st, q_next, bin_head, bin_tail, heap_s, heap_e)
            if deleted[top]:
                continue
            if stale[top]:
                s = _score(top, q, cnt, slot, hist, onext, obin, buf, msum, mcnt)
                score[top] = s
                stale[top] = False
                _push(top, s, nbins, st, q_next, bin_head, bin_tail, heap_s, heap_e)
                continue
            # merge region b into region a
            a = eu[top]
            bb = ev[top]
            parent[bb] = a
            deleted[top] = True  # now inside a region (waterz never looks at it again)
            _hdel(table, np.int64(a) * n_nodes + bb, hmask, eu, ev, n_nodes)
            ent = head[bb]
            head[bb] = -1
            tail[bb] = -1
            while ent >= 0:
                nxt = ent_next[ent]
                f = ent >> 1  # entry 2e + k belongs to edge e
                if deleted[f] or (eu[f] != bb and ev[f] != bb):
                    ent = nxt
                    continue
                nb_node = ev[f] if eu[f] == bb else eu[f]
                _hdel(table, np.int64(min(bb, nb_node)) * n_nodes + max(bb, nb_node), hmask, eu,
                      ev, n_nodes)  # fmt: skip
                key = np.int64(min(a, nb_node)) * n_nodes + max(a, nb_node)
                slot_g = _hfind(table, key, hmask, eu, ev, n_nodes)
                g = table[slot_g] if slot_g >= 0 else -1
                move = True
                if g >= 0:
                    # a shared neighbour: the edge with the higher (last) score merges into the
                    # other one, which becomes stale; ties keep b's edge, as waterz
                    if score[f] > score[g]:
                        src, dst, move = f, g, False
                    else:
                        src, dst = g, f
                        _hdel(table, key, hmask, eu, ev, n_nodes)
                    if quantile and free[0] == 0:
                        hist, free = _grow_rows(hist, free, max_slots)
                    _merge_stats(src, dst, quantile, list_limit, cnt, slot, hist, free, ltail,
                                 onext, obin, msum, mcnt)  # fmt: skip
                    deleted[src] = True
                    stale[dst] = True
                if move:
                    eu[f] = min(a, nb_node)
                    ev[f] = max(a, nb_node)
                    _hput(table, key, f, hmask)
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
    copy: bool = True,
) -> np.ndarray:
    """Region (smallest member node index) of every node at each threshold: ``(T, n_nodes)``.

    Nodes are ``0..n_nodes-1``, numbered in the order of their fragment ids; edges ``u < v`` are
    sorted by ``(u, v)``, each pair once. Quantile scoring needs ``max_bin`` (uint8, the pair's
    maximum affinity bin, :func:`affinity_bins`); mean scoring needs ``aff_sum`` and
    ``aff_count`` (the pair's affinity sum and number of voxel pairs). Thresholds ascending.
    ``copy=False`` lets the merge overwrite int32 ``edge_u``/``edge_v`` instead of copying them.
    """
    q = parse_scoring(scoring)
    if discretize_queue not in (0, 256):
        raise SyntkError(f"discretize_queue must be 0 or 256, got {discretize_queue}")
    n = int(np.shape(edge_u)[0])
    if n >= 2**30 or n_nodes >= 2**31:
        raise SyntkError(f"merge_regions: {n} edges / {n_nodes} nodes exceed the int32 indices")
    if np.shape(edge_v) != np.shape(edge_u):
        raise SyntkError("merge_regions: edge_u and edge_v differ in length")
    # checked in pieces, so the check holds no more than a piece of int64 keys at a time
    last = -1
    for i in range(0, n, 1 << 22):
        u = np.asarray(edge_u[i : i + (1 << 22)], dtype=np.int64)
        v = np.asarray(edge_v[i : i + (1 << 22)], dtype=np.int64)
        if np.any(u >= v) or u.min() < 0 or v.max() >= n_nodes:
            raise SyntkError("merge_regions: edges must satisfy 0 <= u < v < n_nodes")
        key = u * n_nodes + v
        if key[0] <= last or np.any(np.diff(key) <= 0):
            raise SyntkError("merge_regions: edges must be sorted by (u, v) without repeats")
        last = int(key[-1])
    # private int32 copies: the kernel updates edge endpoints in place
    own = not copy and all(
        isinstance(a, np.ndarray) and a.dtype == np.int32 and a.flags.c_contiguous
        for a in (edge_u, edge_v)
    )
    u32 = edge_u if own else np.array(edge_u, dtype=np.int32, copy=True)
    v32 = edge_v if own else np.array(edge_v, dtype=np.int32, copy=True)
    ths = np.asarray(sorted(float(t) for t in thresholds), dtype=np.float32)
    if q >= 0:
        if max_bin is None or len(max_bin) != n:
            raise SyntkError("merge_regions: quantile scoring needs max_bin per edge")
        obin = np.ascontiguousarray(max_bin, dtype=np.uint8)
        msum = np.zeros(0, np.float64)
        mcnt = np.zeros(0, np.int64)
    else:
        if aff_sum is None or aff_count is None or len(aff_sum) != n or len(aff_count) != n:
            raise SyntkError("merge_regions: mean scoring needs aff_sum and aff_count per edge")
        obin = np.zeros(0, np.uint8)
        msum = np.ascontiguousarray(aff_sum, dtype=np.float64)
        mcnt = np.ascontiguousarray(aff_count, dtype=np.int64)
        if n and mcnt.min() <= 0:
            raise SyntkError("merge_regions: aff_count must be positive")
    return _merge_regions(
        int(n_nodes),
        u32,
        v32,
        obin,
        msum,
        mcnt,
        q,
        ths,
        int(discretize_queue),
        LIST_LIMIT,
        INITIAL_ROWS,
    )


# --------------------------------------------------------------------------------------------
# exact graph reduction: independent components of the cheap-edge graph


@njit(cache=True)
def _initial_scores(q: int, obin: np.ndarray, msum: np.ndarray, mcnt: np.ndarray) -> np.ndarray:
    n = obin.shape[0] if q >= 0 else msum.shape[0]
    out = np.empty(n, np.float32)
    for e in range(n):
        if q >= 0:  # a one-pair histogram: its only bin is the statistic (as _quantile_score)
            stat = np.float32((obin[e] + 0.5) / BINS)
            out[e] = np.float32(1.0 - stat)
        else:
            out[e] = _mean_score(e, msum, mcnt)
    return out


def initial_scores(
    scoring: str,
    *,
    max_bin: np.ndarray | None = None,
    aff_sum: np.ndarray | None = None,
    aff_count: np.ndarray | None = None,
) -> np.ndarray:
    """Each edge's score before any merge (float32, computed as :func:`merge_regions` does)."""
    q = parse_scoring(scoring)
    if q >= 0:
        if max_bin is None:
            raise SyntkError("initial_scores: quantile scoring needs max_bin")
        obin = np.ascontiguousarray(max_bin, dtype=np.uint8)
        return _initial_scores(q, obin, np.zeros(0, np.float64), np.zeros(0, np.int64))
    if aff_sum is None or aff_count is None:
        raise SyntkError("initial_scores: mean scoring needs aff_sum and aff_count")
    msum = np.ascontiguousarray(aff_sum, dtype=np.float64)
    mcnt = np.ascontiguousarray(aff_count, dtype=np.int64)
    return _initial_scores(q, np.zeros(0, np.uint8), msum, mcnt)


@njit(cache=True)
def _find(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]  # path halving
        x = parent[x]
    return x


@njit(cache=True)
def union_edges(parent: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
    """Join the sets of ``u[i]`` and ``v[i]`` in the int32 union-find forest ``parent``; a set's
    root is its smallest node."""
    for i in range(u.shape[0]):
        a = _find(parent, u[i])
        b = _find(parent, v[i])
        if a < b:
            parent[b] = a
        elif b < a:
            parent[a] = b


@njit(cache=True)
def flatten_roots(parent: np.ndarray) -> None:
    """``parent[i]`` becomes the root (smallest node) of i's set, in place."""
    for i in range(parent.shape[0]):  # a root is smaller than its members: ascending order works
        parent[i] = parent[parent[i]]


def components_are_exact(thresholds: Sequence[float], discretize_queue: int = 256) -> bool:
    """Whether merging each component of the cheap-edge graph on its own (:func:`merge_regions`
    per component) gives exactly the whole graph's result.

    A merged edge's statistic lies between its parts' (quantiles of a union lie between the
    parts' quantiles, a mean between the parts' means), so its score is never below its
    cheapest initial edge: every region stays inside one connected component of the edges whose
    initial score is below the largest threshold, and edges between components never merge.
    Within a component, merges happen in the same order as in the whole graph. What can differ is
    where a level stops: waterz's bin queue stops at the first popped edge scoring ``>=``
    threshold, and a threshold inside a 1/256 bin leaves the bin's later entries unmerged,
    wherever they are; so the split is exact for the heap queue (``discretize_queue=0``) and for
    thresholds that are multiples of 1/256 (such as 0.5).
    """
    if discretize_queue == 0:
        return True
    for t in thresholds:
        k = float(np.float32(t)) * BINS
        if k != int(k) or not 0 <= k <= BINS - 1:
            return False
    return True


@njit(cache=True)
def count_internal(comp: np.ndarray, u: np.ndarray, v: np.ndarray, counts: np.ndarray) -> None:
    """``counts[c] += 1`` for each edge whose ends are both in component ``c`` (``comp``: each
    node's component root, :func:`flatten_roots`)."""
    for i in range(u.shape[0]):
        c = comp[u[i]]
        if c == comp[v[i]]:
            counts[c] += 1
