"""Compiled (numba) counting of label pairs: the engine behind the contingency tables.

Counting a pair of CREMI-size uint64 volumes must run near memory speed even when the
prediction holds millions of distinct ids (salt-and-pepper noise). A single large hash table
would pay a cache and TLB miss per new id, so counting is done in three cache-friendly steps:

1. :func:`count_runs` walks the voxels in memory order, counts runs of equal (a, b) pairs in a
   register and adds each run to a small direct-mapped cache (a table that fits in L2). A run
   whose slot holds another pair evicts that pair to an append-only buffer.
2. Compaction aggregates the buffer: entries are scattered into partitions by a hash of ``b``
   (a counting sort: :func:`partition_hist`, :func:`partition_scatter`), then each partition is
   summed with a small hash table that stays in cache (:func:`aggregate_parts`). All entries of
   one ``b`` land in one partition, so ``b``'s marginal count is available per pair at the same
   time (and :func:`sums_parts` computes the neuron sums right there).
3. :func:`group_sum` sums counts by key (used for the ``a`` marginals) and
   :func:`neuron_sums` accumulates the VOI / adapted-Rand sums in one pass.

Tables are ``(n, 3)`` uint64 arrays of rows ``(a, b, count)``; ``count == 0`` marks an empty
cache slot, so every uint64 label (including ``2**64 - 1``) is a valid key. All kernels are
serial and release the GIL; :mod:`~synapse_toolkit.metrics.contingency` runs them on row or
partition ranges in Python threads (no numba threading layer, no busy-waiting threads).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_S = np.uint64(31)
#: Direct-mapped cache slots (2**12 rows of 24 bytes = 96 KiB: stays in L2).
CACHE_SLOTS = 1 << 12
#: Target number of buffer entries per partition during compaction.
_PART_TARGET = 1 << 14


@njit(cache=True, nogil=True, inline="always")
def _mix1(b: np.uint64) -> np.uint64:
    h = (b ^ (b >> _S)) * _M1
    h ^= h >> np.uint64(29)
    h *= _M2
    h ^= h >> np.uint64(32)
    return h


@njit(cache=True, nogil=True, inline="always")
def _mix2(a: np.uint64, b: np.uint64) -> np.uint64:
    return _mix1(a * _M2 + _mix1(b))


@njit(cache=True, nogil=True)
def _grown(buf: np.ndarray, n: int) -> np.ndarray:
    new = np.empty((buf.shape[0] * 2, 3), dtype=np.uint64)
    new[:n] = buf[:n]
    return new


@njit(cache=True, nogil=True)
def _append(buf: np.ndarray, n: int, a: np.uint64, b: np.uint64, c: np.uint64):
    if n == buf.shape[0]:
        new = np.empty((buf.shape[0] * 2, 3), dtype=np.uint64)
        new[:n] = buf[:n]
        buf = new
    buf[n, 0] = a
    buf[n, 1] = b
    buf[n, 2] = c
    return buf, n + 1


@njit(cache=True, nogil=True)
def count_runs(
    a: np.ndarray,
    b: np.ndarray,
    ignore: np.ndarray,
    use_ignore_mask: bool,
    ignore_a: np.uint64,
    use_ignore_a: bool,
    cache: np.ndarray,
    buf: np.ndarray,
    n_buf: int,
):
    """Count pairs (a[i], b[i]) of two flat arrays into ``cache`` (evicting into ``buf``).

    Voxels flagged in ``ignore`` (uint8, if ``use_ignore_mask``) or with ``a == ignore_a`` (if
    ``use_ignore_a``) are skipped. Returns (buf, n_buf, n_ignored).
    """
    n = a.shape[0]
    cmask = np.uint64(cache.shape[0] - 1)
    cshift = np.uint64(40)
    n_ignored = 0
    run = np.uint64(0)
    ra = np.uint64(0)
    rb = np.uint64(0)
    for i in range(n + 1):
        if i < n:
            if use_ignore_mask and ignore[i] != 0:
                n_ignored += 1
                continue
            va = a[i]
            if use_ignore_a and va == ignore_a:
                n_ignored += 1
                continue
            vb = b[i]
            if run != 0 and va == ra and vb == rb:
                run += np.uint64(1)
                continue
        if run != 0:
            s = np.int64(((ra * _M1 + rb * _M2) >> cshift) & cmask)
            if cache[s, 2] == 0:
                cache[s, 0] = ra
                cache[s, 1] = rb
                cache[s, 2] = run
            elif cache[s, 0] == ra and cache[s, 1] == rb:
                cache[s, 2] += run
            else:
                if n_buf == buf.shape[0]:
                    buf = _grown(buf, n_buf)
                buf[n_buf, 0] = cache[s, 0]
                buf[n_buf, 1] = cache[s, 1]
                buf[n_buf, 2] = cache[s, 2]
                n_buf += 1
                cache[s, 0] = ra
                cache[s, 1] = rb
                cache[s, 2] = run
        if i < n:
            ra = va
            rb = vb
            run = np.uint64(1)
    return buf, n_buf, n_ignored


@njit(cache=True, nogil=True)
def flush_cache(cache: np.ndarray, buf: np.ndarray, n_buf: int):
    """Move every cache entry to the buffer and clear the cache. Returns (buf, n_buf)."""
    for s in range(cache.shape[0]):
        if cache[s, 2] != 0:
            buf, n_buf = _append(buf, n_buf, cache[s, 0], cache[s, 1], cache[s, 2])
            cache[s, 2] = 0
    return buf, n_buf


def n_partitions(n: int) -> tuple[int, int]:
    """(number of partitions, hash shift) for ``n`` buffered rows (~``_PART_TARGET`` rows each)."""
    n_parts = 1
    while n_parts * _PART_TARGET < n:
        n_parts *= 2
    return n_parts, 64 - (n_parts.bit_length() - 1)


@njit(cache=True, nogil=True, inline="always")
def _find_or_add(key: np.uint64, slot: np.ndarray, uniq: np.ndarray, sums: np.ndarray,
                 n_groups: int):  # fmt: skip
    """Group index of ``key`` in a growable open-addressing table (``slot``: group per slot,
    -1 = free, size a power of two, at most half full), adding ``key`` as a new group if absent.
    Returns (group, slot, uniq, sums, n_groups): the arrays are replaced when they grow."""
    mask = np.uint64(slot.shape[0] - 1)
    s = np.int64(_mix1(key) & mask)
    while slot[s] >= 0:
        g = slot[s]
        if uniq[g] == key:
            return g, slot, uniq, sums, n_groups
        s = (s + 1) & np.int64(mask)
    if n_groups == uniq.shape[0]:
        u2 = np.empty(2 * n_groups, dtype=np.uint64)
        u2[:n_groups] = uniq
        uniq = u2
        s2 = np.zeros(2 * n_groups, dtype=np.uint64)
        s2[:n_groups] = sums
        sums = s2
    if 2 * (n_groups + 1) > slot.shape[0]:
        mask = np.uint64(2 * slot.shape[0] - 1)
        slot = np.full(2 * slot.shape[0], -1, dtype=np.int64)
        for q in range(n_groups):
            t = np.int64(_mix1(uniq[q]) & mask)
            while slot[t] >= 0:
                t = (t + 1) & np.int64(mask)
            slot[t] = q
        s = np.int64(_mix1(key) & mask)
        while slot[s] >= 0:
            s = (s + 1) & np.int64(mask)
    slot[s] = n_groups
    uniq[n_groups] = key
    return n_groups, slot, uniq, sums, n_groups + 1


@njit(cache=True, nogil=True)
def partition_hist(buf: np.ndarray, lo: int, hi: int, n_parts: int,
                   shift: np.uint64, part: np.ndarray) -> np.ndarray:  # fmt: skip
    """Partition (top bits of hash(b)) of rows ``buf[lo:hi]`` into ``part``; their histogram."""
    hist = np.zeros(n_parts, dtype=np.int64)
    for i in range(lo, hi):
        k = 0 if n_parts == 1 else np.int64(_mix1(buf[i, 1]) >> shift)
        part[i] = k
        hist[k] += 1
    return hist


@njit(cache=True, nogil=True)
def partition_hist_truth(buf: np.ndarray, lo: int, hi: int, n_parts: int,
                         shift: np.uint64, part: np.ndarray):  # fmt: skip
    """:func:`partition_hist` and, in the same pass over the rows, the summed counts of each
    truth id (column 0). Returns (hist, truth ids, their summed counts)."""
    hist = np.zeros(n_parts, dtype=np.int64)
    slot = np.full(1024, -1, dtype=np.int64)
    uniq = np.empty(512, dtype=np.uint64)
    sums = np.zeros(512, dtype=np.uint64)
    n_groups = 0
    last_key = np.uint64(0)
    last_group = -1
    for i in range(lo, hi):
        k = 0 if n_parts == 1 else np.int64(_mix1(buf[i, 1]) >> shift)
        part[i] = k
        hist[k] += 1
        t = buf[i, 0]
        if last_group >= 0 and t == last_key:
            sums[last_group] += buf[i, 2]
            continue
        g, slot, uniq, sums, n_groups = _find_or_add(t, slot, uniq, sums, n_groups)
        sums[g] += buf[i, 2]
        last_key = t
        last_group = g
    return hist, uniq[:n_groups].copy(), sums[:n_groups].copy()


@njit(cache=True, nogil=True)
def partition_scatter(buf: np.ndarray, lo: int, hi: int, part: np.ndarray,
                      offsets: np.ndarray, tmp: np.ndarray) -> None:  # fmt: skip
    """Copy rows ``buf[lo:hi]`` to ``tmp`` at their partition's next position (``offsets``)."""
    fill = offsets.copy()
    for i in range(lo, hi):
        k = part[i]
        j = fill[k]
        tmp[j, 0] = buf[i, 0]
        tmp[j, 1] = buf[i, 1]
        tmp[j, 2] = buf[i, 2]
        fill[k] = j + 1


@njit(cache=True, nogil=True)
def _aggregate(tmp: np.ndarray, lo: int, hi: int):
    """Sum duplicate (a, b) rows of ``tmp[lo:hi]`` in place (all rows of one b lie in this
    range). Returns (out, group, bsum): distinct pairs are ``tmp[lo:out]``; row r's b has total
    count ``bsum[group[r - lo]]``."""
    size = 16
    while size < 2 * (hi - lo):
        size *= 2
    mask = np.uint64(size - 1)
    pair_slot = np.full(size, -1, dtype=np.int32)  # slot -> row offset from lo
    b_slot = np.full(size, -1, dtype=np.int32)
    bkey = np.empty(hi - lo, dtype=np.uint64)
    bsum = np.empty(hi - lo, dtype=np.uint64)
    group = np.empty(hi - lo, dtype=np.int32)
    n_b = 0
    out = lo
    # the write position never passes the read position
    for j in range(lo, hi):
        a = tmp[j, 0]
        b = tmp[j, 1]
        c = tmp[j, 2]
        g = 0
        s = np.int64(_mix1(b) & mask)
        while True:
            q = b_slot[s]
            if q < 0:
                b_slot[s] = n_b
                bkey[n_b] = b
                bsum[n_b] = c
                g = n_b
                n_b += 1
                break
            if bkey[q] == b:
                bsum[q] += c
                g = q
                break
            s = (s + 1) & np.int64(mask)
        s = np.int64(_mix2(a, b) & mask)
        while True:
            r = pair_slot[s]
            if r < 0:
                pair_slot[s] = out - lo
                tmp[out, 0] = a
                tmp[out, 1] = b
                tmp[out, 2] = c
                group[out - lo] = g
                out += 1
                break
            if tmp[lo + r, 0] == a and tmp[lo + r, 1] == b:
                tmp[lo + r, 2] += c
                break
            s = (s + 1) & np.int64(mask)
    return out, group, bsum


@njit(cache=True, nogil=True)
def aggregate_parts(
    tmp: np.ndarray, starts: np.ndarray, k0: int, k1: int,
    n_out: np.ndarray, nb_tmp: np.ndarray, with_b_marginal: bool,
) -> None:  # fmt: skip
    """Aggregate partitions ``k0..k1-1`` of ``tmp`` in place; ``n_out[k]`` distinct rows each,
    ``nb_tmp[r]`` the b marginal of row r (if ``with_b_marginal``)."""
    for k in range(k0, k1):
        lo = starts[k]
        hi = starts[k + 1]
        if hi == lo:
            continue
        out, group, bsum = _aggregate(tmp, lo, hi)
        n_out[k] = out - lo
        if with_b_marginal:
            for r in range(lo, out):
                nb_tmp[r] = bsum[group[r - lo]]


@njit(cache=True, nogil=True)
def gather_parts(buf: np.ndarray, tmp: np.ndarray, starts: np.ndarray, dest: np.ndarray,
                 n_out: np.ndarray, k0: int, k1: int, nb_tmp: np.ndarray,
                 nb: np.ndarray, with_b_marginal: bool) -> None:  # fmt: skip
    """Copy the aggregated rows of partitions ``k0..k1-1`` to ``buf[dest[k]:]``."""
    for k in range(k0, k1):
        lo = starts[k]
        d = dest[k]
        for r in range(n_out[k]):
            buf[d + r, 0] = tmp[lo + r, 0]
            buf[d + r, 1] = tmp[lo + r, 1]
            buf[d + r, 2] = tmp[lo + r, 2]
            if with_b_marginal:
                nb[d + r] = nb_tmp[lo + r]


@njit(cache=True, nogil=True)
def group_sum(keys: np.ndarray, counts: np.ndarray):
    """Distinct ``keys`` (first-seen order), their summed ``counts`` and each key's group index.

    The hash table grows with the number of distinct keys (not with ``len(keys)``), so few
    distinct keys stay in cache.
    """
    n = keys.shape[0]
    slot_group = np.full(1024, -1, dtype=np.int64)
    uniq = np.empty(1024, dtype=np.uint64)
    sums = np.zeros(1024, dtype=np.uint64)
    inverse = np.empty(n, dtype=np.int64)
    n_groups = 0
    for i in range(n):
        k = keys[i]
        g, slot_group, uniq, sums, n_groups = _find_or_add(k, slot_group, uniq, sums, n_groups)
        inverse[i] = g
        sums[g] += counts[i]
    return uniq[:n_groups].copy(), sums[:n_groups].copy(), inverse


_LOG2_LUT = np.log2(np.arange(1, 4097, dtype=np.float64))


@njit(cache=True, nogil=True, inline="always")
def _log2_count(c: np.uint64, lut: np.ndarray) -> float:
    if c <= np.uint64(4096):
        return lut[np.int64(c) - 1]
    return math.log2(np.float64(c))


@njit(cache=True, nogil=True)
def _fixed_add(acc_int: np.int64, acc_frac: np.int64, t: float):
    one = np.int64(4611686018427387904)  # 2**62
    ip = math.floor(t)
    acc_int += np.int64(ip)
    acc_frac += np.int64((t - ip) * 4611686018427387904.0)
    if acc_frac >= one:
        acc_frac -= one
        acc_int += 1
    return acc_int, acc_frac


@njit(cache=True, nogil=True)
def key_sums(rows: np.ndarray, col: int):
    """Distinct keys of column ``col`` of ``rows`` and their summed counts (column 2); the
    table grows with the number of distinct keys, so few keys stay in cache."""
    slot = np.full(1024, -1, dtype=np.int64)
    uniq = np.empty(512, dtype=np.uint64)
    sums = np.zeros(512, dtype=np.uint64)
    n_groups = 0
    last_key = np.uint64(0)
    last_group = -1
    for i in range(rows.shape[0]):
        k = rows[i, col]
        if last_group >= 0 and k == last_key:
            sums[last_group] += rows[i, 2]
            continue
        g, slot, uniq, sums, n_groups = _find_or_add(k, slot, uniq, sums, n_groups)
        sums[g] += rows[i, 2]
        last_key = k
        last_group = g
    return uniq[:n_groups].copy(), sums[:n_groups].copy()


_ZERO_SUMS = (
    np.int64(0), np.int64(0), np.int64(0), np.int64(0),
    np.int64(0), np.int64(0), np.int64(0), np.int64(0),
)  # fmt: skip


@njit(cache=True, nogil=True, inline="always")
def _truth_index(t: np.uint64, t_keys: np.ndarray, tslot: np.ndarray, tmask: np.uint64) -> int:
    """Index of truth id ``t`` in ``t_keys`` through the slot table of :func:`truth_table`."""
    s = np.int64(_mix1(t) & tmask)
    while t_keys[tslot[s]] != t:
        s = (s + 1) & np.int64(tmask)
    return tslot[s]


@njit(cache=True, nogil=True, inline="always")
def _add_row(acc, c, tm, log_tm: float, pm, pred_is_zero: bool):
    """The 8 accumulators of :func:`neuron_sums` after one contingency row of count ``c``
    (truth size ``tm`` with log2 ``log_tm``, prediction size ``pm``)."""
    s_int, s_frac, m_int, m_frac, sum_a, sum_b, sum_ab, c0 = acc
    lut = _LOG2_LUT
    lc = _log2_count(c, lut)
    cf = np.float64(c)
    if c != tm:
        v = cf * (log_tm - lc)
        if v > 0:
            s_int, s_frac = _fixed_add(s_int, s_frac, v)
    if c != pm:
        v = cf * (_log2_count(pm, lut) - lc)
        if v > 0:
            m_int, m_frac = _fixed_add(m_int, m_frac, v)
    ci = np.int64(c)
    sum_a += ci * np.int64(tm)
    if pred_is_zero:
        c0 += ci
    else:
        sum_b += ci * np.int64(pm)
        sum_ab += ci * ci
    return s_int, s_frac, m_int, m_frac, sum_a, sum_b, sum_ab, c0


@njit(cache=True, nogil=True)
def neuron_sums(
    rows: np.ndarray, pred_marginal: np.ndarray, t_keys: np.ndarray, t_sums: np.ndarray
):
    """The sums behind VOI and adapted Rand over contingency ``rows`` (truth, pred, count).

    ``t_keys``/``t_sums`` are the truth ids and their total counts. Returns the fixed-point
    entropy accumulators (split_int, split_frac, merge_int, merge_frac; value = int + frac/2**62)
    of ``split = sum n_ij log2(n_j / n_ij)`` and ``merge = sum n_ij log2(n_i / n_ij)`` (n_j truth
    sizes, n_i prediction sizes) and the exact integers (sum_truth_sq, sum_pred_sq_nonzero,
    sum_pair_sq_nonzero, n_pred_zero). Chunks of rows can be summed separately and combined.
    """
    tslot, log_t = truth_table(t_keys, t_sums)
    tmask = np.uint64(tslot.shape[0] - 1)
    acc = _ZERO_SUMS
    for i in range(rows.shape[0]):
        c = rows[i, 2]
        if c == 0:
            continue
        g = _truth_index(rows[i, 0], t_keys, tslot, tmask)
        acc = _add_row(acc, c, t_sums[g], log_t[g], pred_marginal[i], rows[i, 1] == 0)
    return acc


@njit(cache=True, nogil=True)
def truth_table(t_keys: np.ndarray, t_sums: np.ndarray):
    """(slot table, log2 of sizes) for looking truth ids up in :func:`sums_parts`."""
    cap = 16
    while cap < 2 * t_keys.shape[0]:
        cap *= 2
    tmask = np.uint64(cap - 1)
    tslot = np.full(cap, -1, dtype=np.int64)
    for g in range(t_keys.shape[0]):
        s = np.int64(_mix1(t_keys[g]) & tmask)
        while tslot[s] >= 0:
            s = (s + 1) & np.int64(tmask)
        tslot[s] = g
    log_t = np.empty(t_keys.shape[0], dtype=np.float64)
    for g in range(t_keys.shape[0]):
        log_t[g] = math.log2(np.float64(t_sums[g]))
    return tslot, log_t


@njit(cache=True, nogil=True)
def sums_parts(
    tmp: np.ndarray, starts: np.ndarray, k0: int, k1: int,
    t_keys: np.ndarray, t_sums: np.ndarray, tslot: np.ndarray, log_t: np.ndarray,
):  # fmt: skip
    """:func:`neuron_sums` over partitions ``k0..k1-1`` of *unaggregated* partitioned rows
    (aggregated here, in place). Returns the 8 accumulators of :func:`neuron_sums`."""
    tmask = np.uint64(tslot.shape[0] - 1)
    acc = _ZERO_SUMS
    for k in range(k0, k1):
        lo = starts[k]
        hi = starts[k + 1]
        if hi == lo:
            continue
        out, group, bsum = _aggregate(tmp, lo, hi)
        for r in range(lo, out):
            g = _truth_index(tmp[r, 0], t_keys, tslot, tmask)
            pm = bsum[group[r - lo]]
            acc = _add_row(acc, tmp[r, 2], t_sums[g], log_t[g], pm, tmp[r, 1] == 0)
    return acc
