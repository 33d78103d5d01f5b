"""Contingency tables of two label volumes, counted block by block.

A :class:`Contingency` lists the distinct (truth id, prediction id) pairs and their voxel
counts, plus how many voxels were seen and how many were ignored. Tables of disjoint blocks add
up (``a + b``), so a volume scored block by block gives exactly the table of the whole volume.
:class:`ContingencyCounter` accumulates blocks; the counting itself is a compiled kernel
(:mod:`synapse_toolkit.metrics._hashcount`).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synapse_toolkit.cremi_ids import NO_LABEL
from synapse_toolkit.metrics import _hashcount as hc

_EMPTY_U8 = np.zeros(1, dtype=np.uint8)


def _map(fn: Any, items: Sequence[Any]) -> list[Any]:
    """``fn`` over ``items`` in threads (the kernels release the GIL)."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(fn, items))


def _chunks(n: int, k: int) -> list[tuple[int, int]]:
    b = np.linspace(0, n, k + 1).astype(np.int64)
    return [(int(b[i]), int(b[i + 1])) for i in range(k)]


def _partition(
    buf: np.ndarray, n: int, n_threads: int, with_truth: bool = False
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """Rows ``buf[:n]`` sorted into hash(b) partitions: (tmp rows, partition starts, and with
    ``with_truth`` the truth ids with their total counts, gathered in the same pass)."""
    n_parts, shift = hc.n_partitions(n)
    k = max(1, min(int(n_threads), n // (1 << 20) + 1))
    chunks = _chunks(n, k)
    part = np.empty(n, dtype=np.int32)
    sh = np.uint64(shift)
    truth = None
    if with_truth:
        res = _map(lambda c: hc.partition_hist_truth(buf, c[0], c[1], n_parts, sh, part), chunks)
        hists = np.stack([r[0] for r in res])
        merged = np.zeros((sum(len(r[1]) for r in res), 3), np.uint64)
        merged[:, 0] = np.concatenate([r[1] for r in res])
        merged[:, 2] = np.concatenate([r[2] for r in res])
        truth = hc.key_sums(merged, 0)
    else:
        hists = np.stack(
            _map(lambda c: hc.partition_hist(buf, c[0], c[1], n_parts, sh, part), chunks)
        )
    starts = np.zeros(n_parts + 1, dtype=np.int64)
    np.cumsum(hists.sum(axis=0), out=starts[1:])
    offsets = starts[:-1][None, :] + (np.cumsum(hists, axis=0) - hists)
    tmp = np.empty((n, 3), dtype=np.uint64)
    _map(lambda i: hc.partition_scatter(buf, chunks[i][0], chunks[i][1], part, offsets[i], tmp),
         list(range(k)))  # fmt: skip
    return tmp, starts, truth


def _part_ranges(starts: np.ndarray, n_threads: int) -> list[tuple[int, int]]:
    """Partition index ranges holding about equal numbers of rows, one per thread."""
    n_parts = starts.shape[0] - 1
    k = max(1, min(int(n_threads), int(starts[-1]) // (1 << 18) + 1, n_parts))
    cuts = np.searchsorted(starts, np.linspace(0, starts[-1], k + 1)[1:-1])
    edges = [0, *sorted(set(int(c) for c in cuts)), n_parts]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1) if edges[i + 1] > edges[i]]


def compact(buf: np.ndarray, n: int, with_b_marginal: bool, n_threads: int = 2):
    """Sum duplicate (a, b) rows of ``buf[:n]`` in place, in ``n_threads`` threads.

    Returns (n_out, nb): ``buf[:n_out]`` holds distinct pairs; ``nb[k]`` is the total count of
    ``buf[k, 1]`` over all pairs (if ``with_b_marginal``, else empty).
    """
    tmp, starts, _ = _partition(buf, n, n_threads)
    n_parts = starts.shape[0] - 1
    n_out = np.zeros(n_parts, dtype=np.int64)
    nb_tmp = np.empty(n if with_b_marginal else 0, dtype=np.uint64)
    ranges = _part_ranges(starts, n_threads)
    _map(lambda r: hc.aggregate_parts(tmp, starts, r[0], r[1], n_out, nb_tmp, with_b_marginal),
         ranges)  # fmt: skip
    dest = np.zeros(n_parts + 1, dtype=np.int64)
    np.cumsum(n_out, out=dest[1:])
    nb = np.empty(int(dest[-1]) if with_b_marginal else 0, dtype=np.uint64)
    _map(lambda r: hc.gather_parts(buf, tmp, starts, dest, n_out, r[0], r[1], nb_tmp, nb,
                                   with_b_marginal), ranges)  # fmt: skip
    return int(dest[-1]), nb


def _as_u64_flat(arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype != np.uint64:
        if a.dtype.kind not in "ui" and a.dtype != bool:
            raise TypeError(f"label volumes must hold integers, got dtype {a.dtype}")
        if a.dtype.kind == "i" and a.size and a.min() < 0:
            raise ValueError("label volumes must not hold negative ids")
        a = a.astype(np.uint64)
    return np.ascontiguousarray(a).reshape(-1)


@dataclass(frozen=True)
class Contingency:
    """Distinct (truth, pred) label pairs with voxel counts over the evaluated voxels.

    ``rows`` is an (n, 3) uint64 array of (truth id, prediction id, count); ``truth``, ``pred``
    and ``count`` are views of its columns. ``n_total`` counts every voxel seen (evaluated +
    ignored); ``n_ignored`` those left out (truth ignore label, border mask). ``pred_marginal``
    (optional, length n) is the total count of each row's prediction id, filled in by the
    counter.
    """

    rows: np.ndarray
    n_total: int
    n_ignored: int
    pred_marginal: np.ndarray | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_arrays(
        cls, truth: np.ndarray, pred: np.ndarray, count: np.ndarray, n_total: int, n_ignored: int
    ) -> Contingency:
        rows = np.empty((len(count), 3), dtype=np.uint64)
        rows[:, 0], rows[:, 1], rows[:, 2] = truth, pred, count
        return cls(rows, int(n_total), int(n_ignored))

    @property
    def truth(self) -> np.ndarray:
        return self.rows[:, 0]

    @property
    def pred(self) -> np.ndarray:
        return self.rows[:, 1]

    @property
    def count(self) -> np.ndarray:
        return self.rows[:, 2].view(np.int64)

    @property
    def n_evaluated(self) -> int:
        return self.n_total - self.n_ignored

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @classmethod
    def empty(cls) -> Contingency:
        return cls(np.zeros((0, 3), np.uint64), 0, 0, np.zeros(0, np.uint64))

    def __add__(self, other: Contingency) -> Contingency:
        counter = ContingencyCounter()
        counter.add_table(self)
        counter.add_table(other)
        return counter.result()

    def with_pred_marginal(self) -> Contingency:
        """This table with ``pred_marginal`` computed (a no-op if present)."""
        if self.pred_marginal is not None:
            return self
        counter = ContingencyCounter()
        counter.add_table(self)
        return counter.result()

    def to_dense(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(truth ids, pred ids, counts matrix) sorted by id; for small tables and tests."""
        t, ti = np.unique(self.truth, return_inverse=True)
        p, pi = np.unique(self.pred, return_inverse=True)
        m = np.zeros((t.size, p.size), np.int64)
        np.add.at(m, (ti, pi), self.count)
        return t, p, m


class ContingencyCounter:
    """Accumulates the contingency table of (truth, pred) blocks.

    ``ignore_truth`` (default ``2**64 - 1``, the CREMI ignore id) and an optional boolean
    ``ignore_mask`` per block exclude voxels. ``n_threads`` threads compact the buffer. Not
    thread-safe: use one counter per thread and :meth:`merge` them.
    """

    #: Buffered rows (24 bytes each) before the buffer is compacted.
    buffer_rows = 1 << 24

    def __init__(self, ignore_truth: int | None = NO_LABEL, n_threads: int = 2) -> None:
        self.ignore_truth = ignore_truth
        self.n_threads = n_threads
        self._cache = np.zeros((hc.CACHE_SLOTS, 3), dtype=np.uint64)
        self._buf = np.empty((1 << 16, 3), dtype=np.uint64)
        self._n_buf = 0
        self._compacted = 0  # buffer size right after the last compaction
        self._shared = False
        self.n_total = 0
        self.n_ignored = 0

    def reserve(self, rows: int) -> None:
        """Reserve buffer rows (virtual memory: pages are only used when written)."""
        if rows > self._buf.shape[0]:
            self._own_buffer()
            new = np.empty((rows, 3), dtype=np.uint64)
            new[: self._n_buf] = self._buf[: self._n_buf]
            self._buf = new

    def update(
        self, truth: np.ndarray, pred: np.ndarray, ignore_mask: np.ndarray | None = None
    ) -> None:
        """Count one block (any shape; ``truth`` and ``pred`` shapes must match)."""
        t = np.asarray(truth)
        p = np.asarray(pred)
        if t.shape != p.shape:
            raise ValueError(f"truth block shape {t.shape} != prediction block shape {p.shape}")
        tf = _as_u64_flat(t)
        pf = _as_u64_flat(p)
        if ignore_mask is not None:
            m = np.asarray(ignore_mask)
            if m.shape != t.shape:
                raise ValueError(f"ignore mask shape {m.shape} != block shape {t.shape}")
            mf = (
                np.ascontiguousarray(m).reshape(-1).view(np.uint8)
                if m.dtype == bool
                else (np.ascontiguousarray(m != 0).reshape(-1).view(np.uint8))
            )
        else:
            mf = _EMPTY_U8
        use_a = self.ignore_truth is not None
        ign = np.uint64(0 if self.ignore_truth is None else self.ignore_truth)
        self._own_buffer()
        self._buf, self._n_buf, n_ign = hc.count_runs(
            tf, pf, mf, ignore_mask is not None, ign, use_a, self._cache, self._buf, self._n_buf
        )
        self.n_total += int(tf.shape[0])
        self.n_ignored += int(n_ign)
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        # keep the buffer bounded: compact once it doubled since the last compaction
        if self._n_buf > max(self.buffer_rows, 2 * self._compacted):
            self._n_buf, _ = compact(self._buf, self._n_buf, False, self.n_threads)
            self._compacted = self._n_buf

    def add_table(self, table: Contingency, compact: bool = True) -> None:
        """Add an existing contingency table (e.g. of another block)."""
        self._own_buffer()
        n = len(table)
        need = self._n_buf + n
        if need > self._buf.shape[0]:
            new = np.empty((max(need, 2 * self._buf.shape[0]), 3), dtype=np.uint64)
            new[: self._n_buf] = self._buf[: self._n_buf]
            self._buf = new
        self._buf[self._n_buf : need] = table.rows
        self._n_buf = need
        self.n_total += table.n_total
        self.n_ignored += table.n_ignored
        if compact:
            self._maybe_compact()

    def merge(self, other: ContingencyCounter) -> None:
        """Add everything ``other`` counted."""
        other._flush()
        self.add_table(
            Contingency(other._buf[: other._n_buf], other.n_total, other.n_ignored), compact=False
        )

    def _flush(self) -> None:
        self._own_buffer()
        self._buf, self._n_buf = hc.flush_cache(self._cache, self._buf, self._n_buf)

    def result(self) -> Contingency:
        """The table counted so far (with ``pred_marginal``)."""
        self._flush()
        n, nb = compact(self._buf, self._n_buf, True, self.n_threads)
        self._n_buf = n
        self._compacted = n
        self._shared = True  # the table views the buffer: copy it before counting on
        return Contingency(self._buf[:n], self.n_total, self.n_ignored, nb)

    def truth_sums(self, n_threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Distinct truth ids counted so far and their voxel counts."""
        self._flush()
        return key_sums(self._buf[: self._n_buf], n_threads)

    def neuron_sums(self, n_threads: int = 2) -> NeuronSums:
        """The VOI / adapted-Rand sums of everything counted, without building the table."""
        self._flush()
        tmp, starts, truth = _partition(self._buf, self._n_buf, n_threads, with_truth=True)
        assert truth is not None
        t_keys, t_sums = truth
        tslot, log_t = hc.truth_table(t_keys, t_sums)
        parts = _map(
            lambda r: hc.sums_parts(tmp, starts, r[0], r[1], t_keys, t_sums, tslot, log_t),
            _part_ranges(starts, n_threads),
        )  # fmt: skip
        return NeuronSums.combine(parts, self.n_total, self.n_ignored)

    def _own_buffer(self) -> None:
        if self._shared:
            new = np.empty_like(self._buf)  # same capacity, pages untouched beyond the rows
            new[: self._n_buf] = self._buf[: self._n_buf]
            self._buf = new
            self._shared = False


def key_sums(rows: np.ndarray, n_threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ids of column 0 of (n, 3) ``rows`` and their summed counts (column 2)."""
    rows = np.ascontiguousarray(rows)
    k = max(1, min(int(n_threads), rows.shape[0] // (1 << 18) + 1))
    if k == 1:
        return hc.key_sums(rows, 0)
    bounds = np.linspace(0, rows.shape[0], k + 1).astype(np.int64)
    with ThreadPoolExecutor(k) as pool:
        parts = list(pool.map(lambda i: hc.key_sums(rows[bounds[i] : bounds[i + 1]], 0), range(k)))
    merged = np.zeros((sum(len(u) for u, _ in parts), 3), np.uint64)
    merged[:, 0] = np.concatenate([u for u, _ in parts])
    merged[:, 2] = np.concatenate([c for _, c in parts])
    return hc.key_sums(merged, 0)


@dataclass(frozen=True)
class NeuronSums:
    """Order-independent sums behind VOI and adapted Rand (see :func:`hc.neuron_sums`).

    ``split_bits = sum n_ij log2(n_j / n_ij)``, ``merge_bits = sum n_ij log2(n_i / n_ij)``
    (n_j truth sizes, n_i prediction sizes); ``sum_truth_sq = sum n_j^2``,
    ``sum_pred_sq`` and ``sum_pair_sq`` over prediction ids != 0, ``n_pred_zero`` evaluated
    voxels with prediction 0.
    """

    split_bits: float
    merge_bits: float
    sum_truth_sq: int
    sum_pred_sq: int
    sum_pair_sq: int
    n_pred_zero: int
    n_total: int
    n_ignored: int

    @classmethod
    def combine(cls, parts: Sequence[Sequence[int]], n_total: int, n_ignored: int) -> NeuronSums:
        """Add partial accumulators exactly (fixed point: value = int + frac / 2**62)."""
        one = 1 << 62
        split = sum(int(p[0]) * one + int(p[1]) for p in parts)
        merge = sum(int(p[2]) * one + int(p[3]) for p in parts)
        ints = [sum(int(p[j]) for p in parts) for j in range(4, 8)]
        return cls(
            float(split // one) + float(split % one) / one,
            float(merge // one) + float(merge % one) / one,
            ints[0], ints[1], ints[2], ints[3], int(n_total), int(n_ignored),
        )  # fmt: skip


def table_neuron_sums(table: Contingency, n_threads: int = 2) -> NeuronSums:
    """:class:`NeuronSums` of an aggregated table (rows summed in ``n_threads`` chunks)."""
    t = table.with_pred_marginal()
    rows = np.ascontiguousarray(t.rows)
    pm = np.ascontiguousarray(t.pred_marginal, dtype=np.uint64)
    t_keys, t_sums = key_sums(rows, n_threads)
    k = max(1, min(int(n_threads), rows.shape[0] // (1 << 18) + 1))
    bounds = np.linspace(0, rows.shape[0], k + 1).astype(np.int64)

    def part(i: int) -> tuple[int, ...]:
        sl = slice(int(bounds[i]), int(bounds[i + 1]))
        return hc.neuron_sums(rows[sl], pm[sl], t_keys, t_sums)

    if k == 1:
        parts = [part(0)]
    else:
        with ThreadPoolExecutor(k) as pool:
            parts = list(pool.map(part, range(k)))
    return NeuronSums.combine(parts, table.n_total, table.n_ignored)


def count_arrays(
    truth: np.ndarray,
    pred: np.ndarray,
    ignore_mask: np.ndarray | None = None,
    *,
    ignore_truth: int | None = NO_LABEL,
    n_threads: int = 2,
    as_counter: bool = False,
) -> Any:
    """Contingency table of two in-memory arrays, counted with ``n_threads`` threads (or the
    :class:`ContingencyCounter` holding the counts, if ``as_counter``)."""
    t = np.asarray(truth)
    p = np.asarray(pred)
    if t.shape != p.shape:
        raise ValueError(f"truth shape {t.shape} != prediction shape {p.shape}")
    tf = _as_u64_flat(t)
    pf = _as_u64_flat(p)
    mf = None if ignore_mask is None else np.asarray(ignore_mask, dtype=bool).reshape(-1)
    n = tf.shape[0]
    n_threads = max(1, min(int(n_threads), n // (1 << 20) + 1))
    bounds = np.linspace(0, n, n_threads + 1).astype(np.int64)
    counters = [ContingencyCounter(ignore_truth, n_threads) for _ in range(n_threads)]

    def work(k: int) -> None:
        sl = slice(int(bounds[k]), int(bounds[k + 1]))
        # runs (and so buffered rows) rarely exceed 1/8 of the voxels; the buffer grows if needed
        counters[k].reserve(min((sl.stop - sl.start) // 8, ContingencyCounter.buffer_rows) + 1024)
        counters[k].update(tf[sl], pf[sl], None if mf is None else mf[sl])

    if n_threads == 1:
        work(0)
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(work, range(n_threads)))
    total = counters[0]
    for c in counters[1:]:
        total.merge(c)
    return total if as_counter else total.result()


def sum_tables(tables: Sequence[Contingency]) -> Contingency:
    """The sum of several tables (of disjoint blocks)."""
    counter = ContingencyCounter()
    for t in tables:
        counter.add_table(t)
    return counter.result()
