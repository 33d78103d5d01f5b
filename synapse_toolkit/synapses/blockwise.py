"""Cleft labels and EMSynConn partners block by block, with bounded memory.

Both run as :mod:`synapse_toolkit.blocktasks` phases (plain-data tasks, a process function, a
done marker holding the block's input fingerprint), so they run in threads, processes or dask
workers, and a killed run resumes block by block with byte-identical output.

**Cleft labels** (:func:`cleft_labels_blockwise`): threshold and 26-connected components per
block (ids made unique by the block id), component sizes and first voxels per block; the pairs of
components that touch across block faces (each voxel pair is looked at by the block holding its
later voxel in C order); one global union-find over the components (no voxels); components
smaller than ``min_voxels`` dropped and the rest numbered 1..N by their first voxel in C order;
a blockwise relabel. This equals ``cc3d.connected_components`` + ``cc3d.dust`` +
``fastremap.renumber`` on the whole volume, voxel for voxel, for any block shape.

**EMSynConn partners** (:func:`emsynconn_blockwise`): candidates per block on the block grown by
``context`` voxels (:func:`synapse_toolkit.synapses.candidates.find_candidates`); a block keeps
the pairs whose pre-synaptic anchor lies in its write ROI (each pair belongs to one block); the
pruning CNN's patches are cut from the whole volumes (lazily), so they do not depend on the
block; synapse ids are the pre component's label plus ``block_id << 32``; the rows of all blocks,
in block order, are de-duplicated globally. With one block it is the in-memory algorithm; with
several it differs only where a component reaches beyond the context.
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.blocktasks import (
    ArrayRef,
    BlockTask,
    DoneMarkers,
    Fingerprint,
    array_ref,
    atomic_write_bytes,
    atomic_write_npz,
    make_pool,
    make_tasks,
    run_blocks,
)
from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND
from synapse_toolkit.data import PartnerTable
from synapse_toolkit.errors import DataError

#: bump when a phase's output for the same input changes (invalidates done markers)
FORMAT_VERSION = 1

Progress = Callable[[str, int], Callable[[], None]]


def _spatial_read(ref: ArrayRef, channel: bool, roi: tuple[slice, ...]) -> np.ndarray:
    a = ref.open()
    return np.asarray(a[(0, *roi)] if channel else a[roi])


def _phase(
    name: str,
    tasks: list[BlockTask],
    process: Any,
    check: Any,
    pool: Any,
    n_workers: int,
    max_retries: int,
    progress: Progress | None,
    seconds: dict[str, float],
    skipped: dict[str, int],
) -> dict[int, dict[str, Any]]:
    t0 = time.perf_counter()
    tick = progress(name, len(tasks)) if progress else None
    rep = run_blocks(
        tasks, process, check=check, name=name, n_workers=n_workers, max_retries=max_retries,
        on_block=(lambda t, s: tick()) if tick else None, pool=pool,
    )  # fmt: skip
    seconds[name] = round(time.perf_counter() - t0, 3)
    skipped[name] = len(rep.skipped)
    return rep.info


@contextlib.contextmanager
def _work_and_pool(
    work_dir: Path | str | None, pool: Any, n_workers: int, executor: str, name: str
) -> Iterator[tuple[Path, Any]]:
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="syntk-")))
        else:
            work = Path(work_dir)
            work.mkdir(parents=True, exist_ok=True)
        if pool is None:
            pool = make_pool(n_workers, executor, name)  # type: ignore[arg-type]
        try:
            yield work, pool
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------
# cleft labels


@dataclass(frozen=True)
class _CleftJob:
    prob: ArrayRef
    channel: bool
    cc: ArrayRef
    shape: tuple[int, int, int]
    block_shape: tuple[int, int, int]
    threshold: float
    work_dir: str

    @property
    def block_voxels(self) -> int:
        return int(np.prod(self.block_shape))

    def markers(self, phase: str) -> DoneMarkers:
        return DoneMarkers(Path(self.work_dir) / "done" / phase)

    def path(self, phase: str, task: BlockTask) -> Path:
        return Path(self.work_dir) / phase / f"{task.block_id}.npz"


def _cc_fingerprint(job: _CleftJob, task: BlockTask, prob: np.ndarray) -> str:
    cfg = [FORMAT_VERSION, "components", job.shape, job.block_shape, job.threshold]
    return Fingerprint(*cfg, task.write_roi).add_array(prob).hexdigest()


def _cc_check(job: _CleftJob, task: BlockTask) -> dict[str, Any] | None:
    m = job.markers("components")
    if m.read(task) is None or not job.path("components", task).exists():
        return None
    prob = _spatial_read(job.prob, job.channel, task.write)
    return m.is_done(task, _cc_fingerprint(job, task, prob))


def _cc_block(job: _CleftJob, task: BlockTask) -> dict[str, Any]:
    import cc3d

    prob = _spatial_read(job.prob, job.channel, task.write)
    fp = _cc_fingerprint(job, task, prob)
    lab = cc3d.connected_components(prob > job.threshold, connectivity=26)
    ids, first, sizes = np.unique(lab.reshape(-1), return_index=True, return_counts=True)
    if ids.size and ids[0] == 0:
        ids, first, sizes = ids[1:], first[1:], sizes[1:]
    offset = np.uint64(task.block_id) * np.uint64(job.block_voxels)
    out = np.where(lab > 0, lab.astype(np.uint64) + offset, np.uint64(0))
    job.cc.open("r+")[task.write] = out
    local = np.unravel_index(first, lab.shape)
    starts = [a for a, _ in task.write_roi]
    glob = np.ravel_multi_index(
        tuple(c + s for c, s in zip(local, starts, strict=True)), job.shape
    ).astype(np.int64)
    atomic_write_npz(job.path("components", task), ids=ids.astype(np.uint64) + offset,
                     sizes=sizes.astype(np.int64), first=glob)  # fmt: skip
    info = {"n_components": int(ids.size)}
    job.markers("components").mark(task, fp, info)
    return info


#: the 13 neighbour offsets of 26-connectivity that precede a voxel in C order
_BACKWARD = [
    (dz, dy, dx)
    for dz in (-1, 0, 1)
    for dy in (-1, 0, 1)
    for dx in (-1, 0, 1)
    if (dz, dy, dx) < (0, 0, 0)
]


def touching_pairs(grown: np.ndarray, pads: Sequence[tuple[int, int]]) -> np.ndarray:
    """(K, 2) pairs of different non-zero ids that are 26-neighbours, one voxel in the block and
    the other before it in C order. ``grown`` is the block grown by ``pads[d] = (lo, hi)`` voxels
    (0 or 1) on each side of axis d."""
    w = [n - lo - hi for n, (lo, hi) in zip(grown.shape, pads, strict=True)]
    out = []
    for off in _BACKWARD:
        a_sl, b_sl = [], []
        for n, (lo, hi), o in zip(w, pads, off, strict=True):
            i0, i1 = max(0, -lo - o), min(n, n + hi - o)
            a_sl.append(slice(lo + i0, lo + i1))
            b_sl.append(slice(lo + i0 + o, lo + i1 + o))
        a, b = grown[tuple(a_sl)], grown[tuple(b_sl)]
        m = (a != b) & (a != 0) & (b != 0)
        if m.any():
            out.append(np.stack([a[m], b[m]], 1))
    if not out:
        return np.zeros((0, 2), np.uint64)
    return np.unique(np.concatenate(out).astype(np.uint64), axis=0)


def _grown(
    task: BlockTask, shape: Sequence[int]
) -> tuple[tuple[slice, ...], list[tuple[int, int]]]:
    pads = [
        (1 if a > 0 else 0, 1 if b < n else 0)
        for (a, b), n in zip(task.write_roi, shape, strict=True)
    ]
    roi = tuple(
        slice(a - lo, b + hi) for (a, b), (lo, hi) in zip(task.write_roi, pads, strict=True)
    )
    return roi, pads


def _faces_inputs(job: _CleftJob, task: BlockTask) -> tuple[np.ndarray, list[tuple[int, int]], str]:
    roi, pads = _grown(task, job.shape)
    grown = np.asarray(job.cc.open()[roi])
    cfg = [FORMAT_VERSION, "faces", job.shape, job.block_shape]
    return grown, pads, Fingerprint(*cfg, task.write_roi).add_array(grown).hexdigest()


def _faces_check(job: _CleftJob, task: BlockTask) -> dict[str, Any] | None:
    m = job.markers("faces")
    if m.read(task) is None or not job.path("faces", task).exists():
        return None
    return m.is_done(task, _faces_inputs(job, task)[2])


def _faces_block(job: _CleftJob, task: BlockTask) -> dict[str, Any]:
    grown, pads, fp = _faces_inputs(job, task)
    pairs = touching_pairs(grown, pads)
    atomic_write_npz(job.path("faces", task), pairs=pairs)
    info = {"n_pairs": int(pairs.shape[0]), "fingerprint": fp}
    job.markers("faces").mark(task, fp, info)
    return info


def merge_components(
    ids: np.ndarray, sizes: np.ndarray, first: np.ndarray, pairs: np.ndarray, min_voxels: int
) -> np.ndarray:
    """Final label (0 = dropped) of each block component ``ids`` (sorted): components joined by
    ``pairs``, those of at least ``min_voxels`` voxels numbered 1..N by their first voxel."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = ids.size
    if n == 0:
        return np.zeros(0, np.uint64)
    if pairs.size:
        a = np.searchsorted(ids, pairs[:, 0])
        b = np.searchsorted(ids, pairs[:, 1])
        graph = coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
    else:
        comp = np.arange(n)
    n_comp = int(comp.max()) + 1
    total = np.bincount(comp, weights=sizes, minlength=n_comp)
    start = np.full(n_comp, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(start, comp, first)
    keep = np.flatnonzero(total >= min_voxels)
    rank = np.zeros(n_comp, np.uint64)
    rank[keep[np.argsort(start[keep], kind="stable")]] = np.arange(
        1, keep.size + 1, dtype=np.uint64
    )
    return rank[comp]


@functools.lru_cache(maxsize=2)
def _load_map(path: str, fingerprint: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["ids"], z["labels"]


def _cleft_relabel_block(
    job: _CleftJob, out: ArrayRef, map_path: str, map_fp: str, token: str, task: BlockTask
) -> dict[str, Any]:
    from synapse_toolkit.inference.agglomeration_blockwise import relabel

    cc = np.asarray(job.cc.open()[task.write])
    fp = Fingerprint(FORMAT_VERSION, "relabel", task.write_roi, map_fp, token).add_array(cc)
    ids, labels = _load_map(map_path, map_fp)
    lab = relabel(cc, ids, labels[None])[0]
    lab[cc == 0] = 0
    out.open("r+")[task.write] = np.where(lab > 0, lab, CLEFT_BACKGROUND)
    if token:
        job.markers("relabel").mark(task, fp.hexdigest())
    return {}


def _cleft_relabel_check(
    job: _CleftJob, out: ArrayRef, map_path: str, map_fp: str, token: str, task: BlockTask
) -> dict[str, Any] | None:
    m = job.markers("relabel")
    if not token or m.read(task) is None:
        return None
    cc = np.asarray(job.cc.open()[task.write])
    fp = Fingerprint(FORMAT_VERSION, "relabel", task.write_roi, map_fp, token).add_array(cc)
    return m.is_done(task, fp.hexdigest())


def cleft_labels_blockwise(
    probability: Any,
    out: Any,
    threshold: float = 0.5,
    min_voxels: int = 200,
    *,
    block_shape: Sequence[int] | None = None,
    work_dir: Path | str | None = None,
    pool: Any = None,
    n_workers: int = 1,
    executor: str = "threads",
    max_retries: int = 2,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """CREMI cleft labels of ``probability`` ((1, z, y, x) or (z, y, x)) written into ``out``
    (z, y, x) uint64 block by block: strict ``> threshold``, 26-connected components, components
    below ``min_voxels`` voxels dropped, clefts numbered 1..N in C order of their first voxel,
    background 0xffffffffffffffff. Returns counts and timings.

    ``work_dir`` keeps the block components and done markers (a temporary folder if None);
    ``pool`` is an executor to use (shut down at the end), else one of ``n_workers`` is started.
    """
    import zarr

    from synapse_toolkit.inference.agglomeration_blockwise import _output_token

    shp = tuple(int(s) for s in probability.shape)
    channel = len(shp) == 4
    if channel and shp[0] != 1:
        raise DataError(f"cleft labels: probability must be (1, z, y, x), got {shp}")
    shape = (shp[-3], shp[-2], shp[-1])
    if tuple(out.shape) != shape:
        raise DataError(f"cleft labels: out shape {tuple(out.shape)} != {shape}")
    bs = tuple(int(b) for b in (block_shape or shape))
    bs3 = (min(bs[0], shape[0]), min(bs[1], shape[1]), min(bs[2], shape[2]))
    tasks = make_tasks(shape, bs3)
    seconds: dict[str, float] = {}
    skipped: dict[str, int] = {}
    with _work_and_pool(work_dir, pool, n_workers, executor, "cleft labels") as (work, pool):
        cpath = work / "components.zarr"
        try:
            carr = zarr.open_array(store=str(cpath), mode="r+")
            if tuple(carr.shape) != shape or tuple(carr.chunks) != bs3:
                raise ValueError("other layout")
        except Exception:
            carr = zarr.create_array(store=str(cpath), shape=shape, dtype=np.uint64, chunks=bs3,
                                     fill_value=0, overwrite=True)  # fmt: skip
        job = _CleftJob(array_ref(probability), channel, array_ref(carr), shape, bs3,
                        float(threshold), str(work))  # fmt: skip
        run = functools.partial(
            _phase, pool=pool, n_workers=max(1, n_workers), max_retries=max_retries,
            progress=progress, seconds=seconds, skipped=skipped,
        )  # fmt: skip
        run("cleft components", tasks, functools.partial(_cc_block, job),
            functools.partial(_cc_check, job))  # fmt: skip
        info = run("cleft faces", tasks, functools.partial(_faces_block, job),
                   functools.partial(_faces_check, job))  # fmt: skip
        t0 = time.perf_counter()
        face_fps = [info[t.block_id]["fingerprint"] for t in tasks]
        map_fp = Fingerprint(FORMAT_VERSION, "merge", min_voxels, face_fps).hexdigest()
        map_path = work / "labels.npz"
        meta_path = work / "labels.json"
        cached = False
        with contextlib.suppress(OSError, ValueError):
            cached = map_path.exists() and json.loads(meta_path.read_text())["fp"] == map_fp
        if not cached:
            parts: dict[str, list[np.ndarray]] = {"ids": [], "sizes": [], "first": []}
            pairs = []
            for t in tasks:
                with np.load(job.path("components", t)) as z:
                    for k in parts:
                        parts[k].append(z[k])
                with np.load(job.path("faces", t)) as z:
                    pairs.append(z["pairs"])
            ids = np.concatenate(parts["ids"])
            labels = merge_components(
                ids, np.concatenate(parts["sizes"]), np.concatenate(parts["first"]),
                np.concatenate(pairs) if pairs else np.zeros((0, 2), np.uint64), min_voxels,
            )  # fmt: skip
            atomic_write_npz(map_path, ids=ids, labels=labels)
            atomic_write_bytes(meta_path, json.dumps({"fp": map_fp}).encode())
        n_clefts = int(_load_map(str(map_path), map_fp)[1].max(initial=0))
        seconds["cleft merge"] = round(time.perf_counter() - t0, 3)
        token = _output_token(out)
        args = (job, array_ref(out), str(map_path), map_fp, token)
        run("cleft relabel", tasks, functools.partial(_cleft_relabel_block, *args),
            functools.partial(_cleft_relabel_check, *args))  # fmt: skip
    return {"n_blocks": len(tasks), "n_clefts": n_clefts, "seconds": seconds,
            "skipped_blocks": skipped}  # fmt: skip


# --------------------------------------------------------------------------------------------
# EMSynConn partners


@dataclass(frozen=True)
class _PartnerJob:
    raw: ArrayRef | None
    proximity: ArrayRef
    prox_channel: bool
    segmentation: ArrayRef
    shape: tuple[int, int, int]
    voxel_size_nm: tuple[float, float, float]
    offset_nm: tuple[float, float, float]
    context: tuple[int, int, int]
    settings: Any  # EMSynConnSettings
    pruner: Any  # a model path (str), a PrunerONNX (threads only), or None
    pruner_id: str  # the model file's sha256
    patch_settings: Any
    n_threads: int
    work_dir: str

    def markers(self) -> DoneMarkers:
        return DoneMarkers(Path(self.work_dir) / "done" / "partners")

    def path(self, task: BlockTask) -> Path:
        return Path(self.work_dir) / "partners" / f"{task.block_id}.json"


@functools.lru_cache(maxsize=2)
def _pruner_at(path: str, n_threads: int) -> Any:
    from synapse_toolkit.synapses.pruning import PrunerONNX

    return PrunerONNX(path, n_threads)


def _partner_inputs(job: _PartnerJob, task: BlockTask) -> tuple[np.ndarray, np.ndarray, str]:
    prox = _spatial_read(job.proximity, job.prox_channel, task.read).astype(np.float32)
    seg = np.asarray(job.segmentation.open()[task.read])
    fp = Fingerprint(FORMAT_VERSION, "partners", job.shape, task.read_roi, task.write_roi,
                     repr(job.settings), job.pruner_id, repr(job.patch_settings))  # fmt: skip
    return prox, seg, fp.add_array(prox).add_array(seg).hexdigest()


def _partners_check(job: _PartnerJob, task: BlockTask) -> dict[str, Any] | None:
    m = job.markers()
    if m.read(task) is None or not job.path(task).exists():
        return None
    return m.is_done(task, _partner_inputs(job, task)[2])


def _partners_block(job: _PartnerJob, task: BlockTask) -> dict[str, Any]:
    from synapse_toolkit.synapses.candidates import find_candidates
    from synapse_toolkit.synapses.pruning import extract_patch
    from synapse_toolkit.synapses.targets import Grid

    prox, seg, fp = _partner_inputs(job, task)
    start = np.asarray([a for a, _ in task.read_roi])
    vs = np.asarray(job.voxel_size_nm)
    grid = Grid(prox.shape, job.voxel_size_nm, tuple(np.asarray(job.offset_nm) + start * vs))
    cands = find_candidates(prox, seg, grid, job.settings.candidates)
    lo = np.asarray([a for a, _ in task.write_roi]) - start
    hi = np.asarray([b for _, b in task.write_roi]) - start
    pairs = [
        pq for pq in cands.pairs
        if np.all(cands.pre[pq[0]].anchor_vox >= lo) and np.all(cands.pre[pq[0]].anchor_vox < hi)
    ]  # fmt: skip
    cands = replace(cands, pairs=pairs)
    table = PartnerTable.empty()
    if pairs and job.pruner is not None:
        pruner = (
            _pruner_at(job.pruner, job.n_threads) if isinstance(job.pruner, str) else job.pruner
        )
        raw_full = job.raw.open() if job.raw is not None else None
        prox_full = job.proximity.open()
        seg_full = job.segmentation.open()
        if raw_full is None:
            raw_full = np.zeros(job.shape, np.uint8)
        patches = np.stack([
            extract_patch(raw_full, prox_full, seg_full,
                          (cands.pre[p].anchor_vox + cands.post[q].anchor_vox) / 2.0 + start,
                          cands.pre[p].segment, cands.post[q].segment, job.patch_settings)
            for p, q, _ in pairs
        ])  # fmt: skip
        scores = pruner.scores(patches)
        table = cands.to_table(scores).select(scores > job.settings.prune_threshold)
    elif pairs:
        table = cands.to_table()
    if len(table):
        table = replace(
            table, synapse_id=table.synapse_id + (np.uint64(task.block_id) << np.uint64(32))
        )
    atomic_write_bytes(job.path(task), json.dumps(table.to_dict()).encode())
    info = {"n_rows": len(table)}
    job.markers().mark(task, fp, info)
    return info


def emsynconn_blockwise(
    raw: Any,
    proximity: Any,
    segmentation: Any,
    voxel_size_nm: Sequence[float],
    offset_nm: Sequence[float] = (0.0, 0.0, 0.0),
    *,
    settings: Any = None,
    pruner: Any = None,
    n_threads: int = 1,
    block_shape: Sequence[int] | None = None,
    context: Sequence[int] = (4, 96, 96),
    work_dir: Path | str | None = None,
    pool: Any = None,
    n_workers: int = 1,
    executor: str = "threads",
    max_retries: int = 2,
    progress: Progress | None = None,
    intensity_scale: float | None = None,
) -> tuple[PartnerTable, dict[str, Any]]:
    """EMSynConn partners of ``proximity`` ((1, z, y, x) or (z, y, x)) and ``segmentation``
    (z, y, x) block by block (module docstring). ``pruner``: an ONNX path (any executor) or a
    :class:`~synapse_toolkit.synapses.pruning.PrunerONNX` (threads), None keeps every candidate;
    ``raw`` is needed by the pruner (multiplied by ``intensity_scale``, default
    :func:`~synapse_toolkit.inference.intensity.unit_scale` of its dtype). Returns the
    de-duplicated table and counts/timings."""
    from synapse_toolkit.synapses.assigners import EMSynConnSettings
    from synapse_toolkit.synapses.partners import deduplicate

    s = settings or EMSynConnSettings()
    shp = tuple(int(v) for v in proximity.shape)
    shape = (shp[-3], shp[-2], shp[-1])
    if tuple(segmentation.shape) != shape:
        raise DataError(f"partners: segmentation {tuple(segmentation.shape)} != proximity {shape}")
    patch_settings = None
    pruner_id = ""
    if pruner is not None:
        if raw is None:
            raise DataError("partners: the pruning CNN needs the raw volume")
        if isinstance(pruner, (str, Path)):
            from synapse_toolkit.fsio import sha256_file

            pruner = str(pruner)
            pruner_id = sha256_file(Path(pruner))
            patch_settings = _pruner_at(pruner, n_threads).patch_settings
        else:
            pruner_id = f"object:{pruner.path}"
            patch_settings = pruner.patch_settings
        if intensity_scale is not None:  # (part of every block's fingerprint)
            patch_settings = replace(patch_settings, intensity_scale=float(intensity_scale))
    bs = tuple(int(b) for b in (block_shape or shape))
    tasks = make_tasks(shape, bs, tuple(int(c) for c in context),
                       voxel_size_nm=voxel_size_nm, offset_nm=offset_nm)  # fmt: skip
    seconds: dict[str, float] = {}
    skipped: dict[str, int] = {}
    with _work_and_pool(work_dir, pool, n_workers, executor, "partners") as (work, pool):
        job = _PartnerJob(
            raw=None if raw is None else array_ref(raw), proximity=array_ref(proximity),
            prox_channel=len(shp) == 4, segmentation=array_ref(segmentation), shape=shape,
            voxel_size_nm=tuple(float(v) for v in voxel_size_nm),  # type: ignore[arg-type]
            offset_nm=tuple(float(v) for v in offset_nm),  # type: ignore[arg-type]
            context=tuple(int(c) for c in context),  # type: ignore[arg-type]
            settings=s, pruner=pruner, pruner_id=pruner_id, patch_settings=patch_settings,
            n_threads=n_threads, work_dir=str(work),
        )  # fmt: skip
        _phase("partner candidates", tasks, functools.partial(_partners_block, job),
               functools.partial(_partners_check, job), pool, max(1, n_workers), max_retries,
               progress, seconds, skipped)  # fmt: skip
        t0 = time.perf_counter()
        tables = [PartnerTable.from_dict(json.loads(job.path(t).read_text())) for t in tasks]
    rows = [t for t in tables if len(t)]
    if not rows:
        info = {"n_blocks": len(tasks), "n_candidates": 0}
        return PartnerTable.empty(), {**info, "seconds": seconds, "skipped_blocks": skipped}
    cat = PartnerTable(
        *(np.concatenate([getattr(t, k) for t in rows]) for k in (
            "pre_nm", "post_nm", "pre_segment", "post_segment", "score", "synapse_id",
            "synapse_type"))
    )  # fmt: skip
    table = deduplicate(cat, s.dedup_distance_nm)
    seconds["partner dedup"] = round(time.perf_counter() - t0, 3)
    info = {"n_blocks": len(tasks), "n_candidates": len(cat)}
    return table, {**info, "seconds": seconds, "skipped_blocks": skipped}
