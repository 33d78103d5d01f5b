"""Writes that run beside the computation: writer threads with a bounded queue.

Writing one result while the next is computed overlaps the two as far as the computation lets
Python threads run: a C extension that releases the GIL lets the writes proceed beside it; one
that holds the GIL (as waterz does, measured in ``benchmarks/bench_agglomeration.py``) leaves the
writes mostly to the gaps between its calls. At most
``max_pending`` arrays wait (each is owned by the writer, so callers must pass arrays they will
not modify, e.g. copies of a reused buffer). With more than one worker, writes may finish out
of order: give them distinct destinations (different arrays or chunks).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any


class BackgroundWriter:
    """``with BackgroundWriter() as w: w.submit(fn, *args)``; leaving the block waits for every
    write and re-raises the first error (also when the block itself raised, writes still finish
    so nothing is left half-written by a dangling thread)."""

    def __init__(self, max_pending: int = 2, workers: int = 1) -> None:
        if max_pending < 1 or workers < 1:
            raise ValueError("max_pending and workers must be >= 1")
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="syntk-writer")
        self._pending: deque[Future[Any]] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; blocks while ``max_pending`` writes are already waiting."""
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args))

    def wait(self) -> None:
        """Block until every queued write is done; re-raise the first failure."""
        error: BaseException | None = None
        while self._pending:
            try:
                self._pending.popleft().result()
            except BaseException as exc:  # re-raised below, after draining
                error = error or exc
        if error is not None:
            raise error

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                self.wait()
            else:  # the caller's error wins; still let queued writes finish
                with contextlib.suppress(BaseException):
                    self.wait()
        finally:
            self._pool.shutdown(wait=True)
