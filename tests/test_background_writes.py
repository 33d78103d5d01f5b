"""BackgroundWriter: every write lands, errors surface, the queue stays bounded."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zarr

from synapse_toolkit.background_writes import BackgroundWriter


def test_all_writes_land_in_the_store(tmp_path) -> None:
    arr = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(5, 16, 16), dtype="uint64",
                            chunks=(1, 16, 16))  # fmt: skip
    with BackgroundWriter(max_pending=2) as w:
        for i in range(5):
            w.submit(arr.__setitem__, i, np.full((16, 16), i + 1, np.uint64))
    np.testing.assert_array_equal(arr[:, 0, 0], [1, 2, 3, 4, 5])


def test_a_failed_write_is_raised_when_the_block_ends() -> None:
    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), BackgroundWriter() as w:
        w.submit(fail)


def test_caller_error_wins_and_queued_writes_still_finish() -> None:
    done: list[int] = []
    with pytest.raises(KeyError), BackgroundWriter() as w:
        w.submit(lambda: (time.sleep(0.05), done.append(1)))
        raise KeyError("caller")
    assert done == [1]


def test_submit_blocks_while_max_pending_writes_wait() -> None:
    gate = threading.Event()
    started: list[int] = []

    def slow(i: int) -> None:
        started.append(i)
        gate.wait(5)

    w = BackgroundWriter(max_pending=1)
    w.submit(slow, 0)
    t = threading.Thread(target=w.submit, args=(slow, 1))
    t.start()
    time.sleep(0.1)
    assert t.is_alive()  # the second submit waits for the first write
    gate.set()
    t.join(5)
    w.wait()
    assert started == [0, 1]
    with pytest.raises(ValueError):
        BackgroundWriter(max_pending=0)
