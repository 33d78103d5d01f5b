"""Blockwise tasks, daisy-style: plain-data blocks, a process function, a done-check, a pool.

A :class:`BlockTask` is plain data: its grid position, the write ROI and the read ROI (write ROI
grown by a context, clipped to the volume), in voxels (z, y, x) and, through the volume's voxel
size and offset, in nm. :func:`run_blocks` runs a process function over tasks in a bounded pool
(threads or processes) after a done-check per block: a block whose done marker records the same
input fingerprint is skipped, so a killed run resumes block by block. A block whose process raises
is retried ``max_retries`` times, then reported with its ROI and error; the run then raises
:class:`BlockwiseError` listing every failed block (the other blocks are finished and marked).

Process and check functions must be picklable (top-level functions, or ``functools.partial`` of
them over plain data) when ``executor="processes"``.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import hashlib
import io
import json
import multiprocessing
import os
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from synapse_toolkit.blockwise import iter_blocks
from synapse_toolkit.errors import SyntkError
from synapse_toolkit.fsio import atomic_open
from synapse_toolkit.memory import limit_malloc_arenas, release_free_memory

Roi = tuple[tuple[int, int], ...]  # (start, stop) voxels per axis, z, y, x


class BlockwiseError(SyntkError):
    """Blocks failed after their retries; ``failed`` maps block id to (task, error text)."""

    def __init__(self, message: str, failed: dict[int, tuple[BlockTask, str]]) -> None:
        super().__init__(message)
        self.failed = failed


@dataclass(frozen=True)
class BlockTask:
    """One block: ids, ROIs in voxels (z, y, x), and the volume's placement in nm."""

    block_id: int
    grid_index: tuple[int, ...]
    write_roi: Roi
    read_roi: Roi
    voxel_size_nm: tuple[float, ...]
    offset_nm: tuple[float, ...]

    @property
    def write(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in self.write_roi)

    @property
    def read(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in self.read_roi)

    @property
    def inner(self) -> tuple[slice, ...]:
        """The write ROI relative to the read ROI."""
        return tuple(
            slice(w0 - r0, w1 - r0)
            for (w0, w1), (r0, _) in zip(self.write_roi, self.read_roi, strict=True)
        )

    def roi_nm(self, roi: Roi) -> tuple[tuple[float, float], ...]:
        return tuple(
            (o + a * v, o + b * v)
            for (a, b), v, o in zip(roi, self.voxel_size_nm, self.offset_nm, strict=True)
        )

    @property
    def write_roi_nm(self) -> tuple[tuple[float, float], ...]:
        return self.roi_nm(self.write_roi)

    @property
    def read_roi_nm(self) -> tuple[tuple[float, float], ...]:
        return self.roi_nm(self.read_roi)

    def describe(self) -> str:
        """``block 3 (0, 1, 0): write z 0:32 y 256:512 x 0:256 vox = z 0-1280 y ... nm``"""
        vox = " ".join(f"{a} {a0}:{a1}" for a, (a0, a1) in zip("zyx", self.write_roi, strict=True))
        nm = " ".join(
            f"{a} {n0:g}-{n1:g}" for a, (n0, n1) in zip("zyx", self.write_roi_nm, strict=True)
        )
        return f"block {self.block_id} {self.grid_index}: write ROI {vox} voxels = {nm} nm"


def make_tasks(
    shape: Sequence[int],
    block_shape: Sequence[int],
    context: Sequence[int] | int = 0,
    *,
    voxel_size_nm: Sequence[float] = (1.0, 1.0, 1.0),
    offset_nm: Sequence[float] = (0.0, 0.0, 0.0),
) -> list[BlockTask]:
    """Tasks tiling ``shape`` in C order (:func:`synapse_toolkit.blockwise.iter_blocks`)."""
    tasks = []
    for i, b in enumerate(iter_blocks(shape, block_shape, context)):
        tasks.append(
            BlockTask(
                block_id=i,
                grid_index=tuple(
                    s.start // max(1, bs) for s, bs in zip(b.write, block_shape, strict=True)
                ),
                write_roi=tuple((s.start, s.stop) for s in b.write),
                read_roi=tuple((s.start, s.stop) for s in b.read),
                voxel_size_nm=tuple(float(v) for v in voxel_size_nm),
                offset_nm=tuple(float(o) for o in offset_nm),
            )
        )
    return tasks


# --------------------------------------------------------------------------------------------
# arrays that workers can open


@dataclass(frozen=True)
class ArrayRef:
    """An array a worker can open: a local zarr array or an HDF5 dataset by path (picklable), or
    an object (threads only)."""

    zarr_root: str | None = None
    zarr_path: str = ""
    obj: Any = None
    h5_file: str | None = None

    def open(self, mode: str = "r") -> Any:
        if self.h5_file is not None:
            return _open_h5(self.h5_file, self.zarr_path)
        if self.zarr_root is None:
            return self.obj
        return _open_zarr(self.zarr_root, self.zarr_path, mode)

    def picklable(self) -> bool:
        return self.zarr_root is not None or self.h5_file is not None


@functools.lru_cache(maxsize=16)
def _open_zarr(root: str, path: str, mode: str) -> Any:
    import zarr

    return zarr.open_array(store=root, path=path, mode=mode)


@functools.lru_cache(maxsize=16)
def _open_h5(path: str, key: str) -> Any:
    import h5py

    return h5py.File(path, "r")[key]


def array_ref(arr: Any) -> ArrayRef:
    """A zarr array on a local store or a dataset of an HDF5 file opened read-only becomes a
    path reference; anything else (numpy) stays an object."""
    import zarr
    from zarr.storage import LocalStore

    if isinstance(arr, zarr.Array) and isinstance(arr.store, LocalStore):
        return ArrayRef(zarr_root=str(arr.store.root), zarr_path=arr.path)
    try:
        import h5py

        if isinstance(arr, h5py.Dataset) and arr.file.mode == "r":
            return ArrayRef(h5_file=str(Path(arr.file.filename).resolve()), zarr_path=arr.name)
    except ImportError:  # pragma: no cover - h5py is a dependency
        pass
    return ArrayRef(obj=arr)


# --------------------------------------------------------------------------------------------
# fingerprints and done markers


class Fingerprint:
    """An input fingerprint: config values and array bytes, hashed in the order given."""

    def __init__(self, *config: Any) -> None:
        self._h = hashlib.blake2b(digest_size=16)
        self.add_config(*config)

    def add_config(self, *config: Any) -> Fingerprint:
        self._h.update(json.dumps(config, sort_keys=True, default=str).encode())
        return self

    def add_array(self, arr: np.ndarray) -> Fingerprint:
        a = np.ascontiguousarray(arr)
        self._h.update(f"{a.dtype.str}{a.shape}".encode())
        self._h.update(a.view(np.uint8).reshape(-1).data if a.size else b"")
        return self

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same directory and rename (never half a file)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` with :func:`atomic_write_bytes`."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # stub: a ** dict might bind allow_pickle
    atomic_write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class DoneMarkers:
    """Done markers of one blockwise phase: ``<root>/<block_id>.json`` with the fingerprint."""

    root: Path

    def path(self, task: BlockTask) -> Path:
        return Path(self.root) / f"{task.block_id}.json"

    def read(self, task: BlockTask) -> dict[str, Any] | None:
        try:
            return json.loads(self.path(task).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def is_done(self, task: BlockTask, fingerprint: str) -> dict[str, Any] | None:
        """The marker's info if it records ``fingerprint`` for this ROI, else None."""
        rec = self.read(task)
        if rec is None or rec.get("fingerprint") != fingerprint:
            return None
        if [list(r) for r in task.write_roi] != rec.get("write_roi"):
            return None
        return rec.get("info", {})

    def mark(self, task: BlockTask, fingerprint: str, info: dict[str, Any] | None = None) -> None:
        rec = {
            "block_id": task.block_id,
            "write_roi": [list(r) for r in task.write_roi],
            "write_roi_nm": [list(r) for r in task.write_roi_nm],
            "fingerprint": fingerprint,
            "info": info or {},
        }
        atomic_write_bytes(self.path(task), json.dumps(rec).encode())


# --------------------------------------------------------------------------------------------
# the runner

#: A process function: does the block's work, writes its outputs and its done marker, and
#: returns a JSON-able info dict. A check function: the info of a finished block, or None.
ProcessFn = Callable[[BlockTask], dict[str, Any]]
CheckFn = Callable[[BlockTask], dict[str, Any] | None]


def _run_one(
    process: ProcessFn, check: CheckFn | None, task: BlockTask
) -> tuple[bool, dict[str, Any]]:
    if check is not None:
        info = check(task)
        if info is not None:
            return True, info
    try:
        return False, process(task)
    finally:
        # a worker keeps its heap between blocks: hand back what the block freed, so an idle
        # worker does not hold its high-water mark through the next phase
        release_free_memory()


def _exit_with_parent(parent: int) -> None:
    """Exit this worker once its parent process is gone (a SIGKILLed run leaves no workers)."""
    import time

    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _worker_init() -> None:
    limit_malloc_arenas()
    # libraries such as waterz print to file descriptor 1: keep workers' stdout quiet
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    import threading

    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    try:
        import numba

        numba.set_num_threads(1)
    except Exception:  # pragma: no cover - numba is a dependency
        pass


class ProcessPool(cf.Executor):
    """Spawned worker processes, started on the first ``submit``. :meth:`release` stops them
    between phases (a phase that runs in the caller, e.g. a global merge, then has the memory
    the idle workers held); the next ``submit`` starts fresh ones."""

    def __init__(self, n_workers: int) -> None:
        self.n_workers = n_workers
        self._pool: cf.ProcessPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                max_workers=self.n_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
            )
        return self._pool.submit(fn, *args, **kwargs)

    def release(self) -> None:
        """Stop the workers once their blocks are done."""
        self.shutdown(wait=True)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
            self._pool = None


def release_workers(pool: cf.Executor) -> None:
    """Stop a :class:`ProcessPool`'s idle workers (other executors keep theirs)."""
    if isinstance(pool, ProcessPool):
        pool.release()


def make_pool(
    n_workers: int, executor: Literal["threads", "processes"] = "threads", name: str = "blocks"
) -> cf.Executor:
    """A bounded pool: threads, or spawned processes (no fork of zarr's or numba's threads)."""
    if n_workers < 1:
        raise SyntkError(f"{name}: n_workers must be >= 1, got {n_workers}")
    if executor == "processes":
        return ProcessPool(n_workers)
    if executor == "threads":
        return cf.ThreadPoolExecutor(max_workers=n_workers)
    raise SyntkError(f"{name}: executor must be 'threads' or 'processes', got {executor!r}")


@dataclass
class BlocksReport:
    """What :func:`run_blocks` did: info per block, and which blocks were skipped as done."""

    info: dict[int, dict[str, Any]]
    skipped: list[int]
    processed: list[int]
    attempts: dict[int, int]


def run_blocks(
    tasks: Iterable[BlockTask],
    process: ProcessFn,
    *,
    check: CheckFn | None = None,
    n_workers: int = 1,
    executor: Literal["threads", "processes"] = "threads",
    max_retries: int = 2,
    name: str = "blocks",
    on_block: Callable[[BlockTask, bool], None] | None = None,
    pool: cf.Executor | None = None,
) -> BlocksReport:
    """Run ``process`` on every task not reported done by ``check``; at most ``n_workers`` at a
    time. Failing blocks are retried ``max_retries`` times, then listed in a
    :class:`BlockwiseError` (raised after every other block has run). ``on_block(task, skipped)``
    is called in the caller's thread as each block finishes (e.g. a progress bar). A ``pool``
    from :func:`make_pool` can be shared by several calls (workers start once)."""
    tasks = list(tasks)
    if n_workers < 1:
        raise SyntkError(f"{name}: n_workers must be >= 1, got {n_workers}")
    if max_retries < 0:
        raise SyntkError(f"{name}: max_retries must be >= 0, got {max_retries}")
    by_id = {t.block_id: t for t in tasks}
    if len(by_id) != len(tasks):
        raise SyntkError(f"{name}: block ids are not unique")
    report = BlocksReport({}, [], [], {})
    failed: dict[int, tuple[BlockTask, str]] = {}
    own_pool = pool is None
    if pool is None:
        pool = make_pool(n_workers, executor, name)
    pending = iter(tasks)
    running: dict[cf.Future, BlockTask] = {}
    retry: list[BlockTask] = []

    def submit_next() -> bool:
        task = retry.pop(0) if retry else next(pending, None)
        if task is None:
            return False
        report.attempts[task.block_id] = report.attempts.get(task.block_id, 0) + 1
        running[pool.submit(_run_one, process, check, task)] = task
        return True

    try:
        for _ in range(2 * n_workers):  # a bounded number in flight
            if not submit_next():
                break
        while running:
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                task = running.pop(fut)
                try:
                    skipped, info = fut.result()
                except Exception as exc:
                    if isinstance(exc, BrokenProcessPool):
                        lost = sorted([task, *running.values()], key=lambda t: t.block_id)
                        raise SyntkError(
                            f"{name}: a worker process died (killed, or out of memory) while "
                            f"these blocks were in flight; finished blocks are marked done, "
                            f"rerun to resume:\n" + "\n".join(f"  {t.describe()}" for t in lost)
                        ) from exc
                    if report.attempts[task.block_id] <= max_retries:
                        retry.append(task)
                    else:
                        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                        failed[task.block_id] = (task, text)
                else:
                    report.info[task.block_id] = info
                    (report.skipped if skipped else report.processed).append(task.block_id)
                    if on_block is not None:
                        on_block(task, skipped)
                submit_next()
    finally:
        if own_pool:
            pool.shutdown(wait=True, cancel_futures=True)
    if failed:
        lines = [
            f"  {t.describe()}: {err} (after {report.attempts[i]} attempts)"
            for i, (t, err) in sorted(failed.items())
        ]
        raise BlockwiseError(
            f"{name}: {len(failed)} of {len(tasks)} blocks failed:\n" + "\n".join(lines), failed
        )
    return report
