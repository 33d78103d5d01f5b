"""Contingency tables of two label volumes, counted block by block.

A :class:`Contingency` lists the distinct (truth id, prediction id) pairs and their voxel
counts, plus how many voxels were seen and how many were ignored. Tables of disjoint blocks add
up (``a + b``), so a volume scored block by block gives exactly the table of the whole volume.
:class:`ContingencyCounter` accumulates blocks; the counting itself is a compiled kernel
(:mod:`synapse_toolkit.metrics._hashcount`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from synapse_toolkit.metrics import _hashcount as hc

_EMPTY_U8 = np.zeros(1, dtype=np.uint8)
_PARALLEL_LOCK = threading.Lock()


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
    ``ignore_mask`` per block exclude voxels. Not thread-safe: use one counter per thread and
    :meth:`merge` them.
    """

    #: Buffered rows (24 bytes each) before the buffer is compacted.
    buffer_rows = 1 << 24

    def __init__(self, ignore_truth: int | None = 0xFFFFFFFFFFFFFFFF) -> None:
        self.ignore_truth = ignore_truth
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
        ign = np.uint64(self.ignore_truth if use_a else 0)
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
            self._n_buf, _ = hc.compact(self._buf, self._n_buf, False)
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
        with _PARALLEL_LOCK:  # numba's parallel layers need not allow concurrent launches
            n, nb = hc.compact_parallel(self._buf, self._n_buf, True)
        self._n_buf = n
        self._compacted = n
        self._shared = True  # the table views the buffer: copy it before counting on
        return Contingency(self._buf[:n], self.n_total, self.n_ignored, nb)

    def _own_buffer(self) -> None:
        if self._shared:
            new = np.empty_like(self._buf)  # same capacity, pages untouched beyond the rows
            new[: self._n_buf] = self._buf[: self._n_buf]
            self._buf = new
            self._shared = False


def count_arrays(
    truth: np.ndarray,
    pred: np.ndarray,
    ignore_mask: np.ndarray | None = None,
    *,
    ignore_truth: int | None = 0xFFFFFFFFFFFFFFFF,
    n_threads: int = 2,
) -> Contingency:
    """Contingency table of two in-memory arrays, counted with ``n_threads`` threads."""
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
    counters = [ContingencyCounter(ignore_truth) for _ in range(n_threads)]

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
    return total.result()


def sum_tables(tables: Sequence[Contingency]) -> Contingency:
    """The sum of several tables (of disjoint blocks)."""
    counter = ContingencyCounter()
    for t in tables:
        counter.add_table(t)
    return counter.result()
