"""Blockwise waterz agglomeration with bounded memory (daisy/lsd practice).

Four phases; the first, second and fourth run block by block (:mod:`synapse_toolkit.blocktasks`),
each block with a done marker holding its input fingerprint, so a killed run resumes block by
block and gives byte-identical output:

1. ``fragments``: waterz's own watershed (the one the in-memory ``waterz`` stage uses, with the
   same ``aff_threshold_low/high``) on the block's read ROI (write ROI + ``context``), cropped to
   the write ROI, numbered ``block_id * voxels_per_block + 1, 2, ...`` in id order: globally unique
   whatever order blocks run in. Skipped when fragments are given.
2. ``edges``: the region-adjacency edges of the fragments whose voxel pairs lie in the block,
   including the pairs across its lower faces (each face belongs to exactly one block), with their
   mergeable statistics: the maximum affinity bin (waterz's quantile histograms start from it) and
   the affinity sum and count (mean scoring). Edges of the same pair from several blocks (given
   fragments that span blocks) are merged: max of bins, sums of sums and counts.
3. ``agglomerate``: the global hierarchical merge of the fragment graph per threshold
   (:func:`synapse_toolkit.inference.regiongraph.merge_regions`, waterz's semantics: priority
   queue, merged regions re-scored from merged histograms). Where exact (thresholds that are
   multiples of 1/256, such as the main job's 0.5), by batches of independent components
   (:func:`agglomerate_components`): edges whose initial score is below the largest threshold
   join fragments into components, edges between components never merge and are dropped, and
   each batch of components is merged on its own. Holds no voxels.
4. ``relabel``: every block's fragments mapped to their region (its smallest fragment id, as
   waterz) at each threshold, written to the output (T, z, y, x).

With given fragments and quantile scoring the output equals in-memory waterz on the same fragments
bit for bit. With per-block fragments it differs where fragments are cut at block faces (the
parts are re-joined by their face edge, but their histograms then merge in another order).

Memory: per block, the read ROI's affinities (float32) and waterz's watershed of it, bounded by
the block shape. The global step by components holds 8 bytes per fragment plus one batch of
components (the largest component at least); merging the whole graph holds all of it (the
kernel's int32 arrays, a pair hash table, dense histogram rows for large merged edges).
``benchmarks/bench_blockwise_agglomeration.py`` measures both.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
    release_workers,
    run_blocks,
)
from synapse_toolkit.errors import DataError, SyntkError
from synapse_toolkit.inference.agglomeration import stdout_to_devnull
from synapse_toolkit.inference.regiongraph import (
    affinity_bins,
    components_are_exact,
    count_internal,
    flatten_roots,
    initial_scores,
    merge_regions,
    parse_scoring,
    union_edges,
)
from synapse_toolkit.memory import release_free_memory

#: bump when a phase's output for the same input changes (invalidates done markers)
FORMAT_VERSION = 1
_WATERZ_LOCK = threading.Lock()  # stdout redirection is per process: one waterz call at a time


# --------------------------------------------------------------------------------------------
# configuration shared by the phases (plain data, picklable)


@dataclass(frozen=True)
class _Job:
    affinities: ArrayRef
    fragments: ArrayRef  # given, or the work dir's fragments.zarr
    own_fragments: bool
    shape: tuple[int, int, int]
    block_shape: tuple[int, int, int]
    context: tuple[int, int, int]
    aff_threshold_low: float
    aff_threshold_high: float
    work_dir: str
    uint8: bool = False

    @property
    def block_voxels(self) -> int:
        return int(np.prod(self.block_shape))

    def markers(self, phase: str) -> DoneMarkers:
        return DoneMarkers(Path(self.work_dir) / "done" / phase)

    def config(self, phase: str) -> list[Any]:
        base: list[Any] = [FORMAT_VERSION, phase, self.shape, self.block_shape, self.uint8]
        if phase == "fragments":
            base += [self.context, self.aff_threshold_low, self.aff_threshold_high]
        return base


def quantize_uint8(affs: np.ndarray) -> np.ndarray:
    """Affinities as 8-bit storage keeps them: ``round(a * 255) / 255`` (float32)."""
    q = np.rint(np.clip(affs, 0.0, 1.0) * np.float32(255)).astype(np.uint8)
    return q.astype(np.float32) / np.float32(255)


def _read_affs(job: _Job, roi: tuple[slice, ...]) -> np.ndarray:
    a = job.affinities.open()
    affs = np.ascontiguousarray(np.asarray(a[(slice(0, 3), *roi)]), dtype=np.float32)
    return quantize_uint8(affs) if job.uint8 else affs


# --------------------------------------------------------------------------------------------
# phase 1: fragments


def waterz_fragments(
    affs: np.ndarray, aff_threshold_low: float = 0.0001, aff_threshold_high: float = 0.9999
) -> np.ndarray:
    """waterz's watershed fragments of ``(3, z, y, x)`` float32 affinities (uint64, 0 = none).

    The segmentation waterz yields at threshold 0 is its watershed unchanged: every edge score is
    ``>= 0``, so nothing merges."""
    import waterz

    from synapse_toolkit.inference.agglomeration import scoring_function

    with _WATERZ_LOCK, stdout_to_devnull():
        gen = waterz.agglomerate(
            np.ascontiguousarray(affs[:3], dtype=np.float32),
            [0.0],
            aff_threshold_low=aff_threshold_low,
            aff_threshold_high=aff_threshold_high,
            scoring_function=scoring_function("mean"),
            discretize_queue=256,
        )
        seg = np.array(next(iter(gen)), dtype=np.uint64, copy=True)
    return seg


def _fragments_fingerprint(job: _Job, task: BlockTask, affs: np.ndarray) -> str:
    return Fingerprint(*job.config("fragments"), task.read_roi).add_array(affs).hexdigest()


def _fragments_check(job: _Job, task: BlockTask) -> dict[str, Any] | None:
    m = job.markers("fragments")
    if m.read(task) is None:
        return None
    return m.is_done(task, _fragments_fingerprint(job, task, _read_affs(job, task.read)))


def _fragments_block(job: _Job, task: BlockTask) -> dict[str, Any]:
    affs = _read_affs(job, task.read)
    fp = _fragments_fingerprint(job, task, affs)
    seg = waterz_fragments(affs, job.aff_threshold_low, job.aff_threshold_high)[task.inner]
    ids, inv = np.unique(seg, return_inverse=True)
    local = inv.reshape(seg.shape).astype(np.uint64)
    if ids.size == 0 or ids[0] != 0:
        local += np.uint64(1)
    offset = np.uint64(task.block_id) * np.uint64(job.block_voxels)
    out = np.where(local > 0, local + offset, np.uint64(0))
    job.fragments.open("r+")[task.write] = out
    info = {"n_fragments": int(ids.size - (1 if ids.size and ids[0] == 0 else 0))}
    job.markers("fragments").mark(task, fp, info)
    return info


# --------------------------------------------------------------------------------------------
# phase 2: edges


def _lower_extended(task: BlockTask) -> tuple[tuple[slice, ...], tuple[int, ...]]:
    """The write ROI grown by one voxel on each lower side inside the volume, and the pads."""
    pads = tuple(1 if a > 0 else 0 for a, _ in task.write_roi)
    return tuple(slice(a - p, b) for (a, b), p in zip(task.write_roi, pads, strict=True)), pads


def block_edges(
    frag_ext: np.ndarray, affs: np.ndarray, pads: Sequence[int]
) -> dict[str, np.ndarray]:
    """Edges between fragments from the voxel pairs of one block.

    ``frag_ext``: fragments of the write ROI grown by ``pads[d]`` (0 or 1) voxels on the lower
    side of axis d; ``affs``: (3, z, y, x) affinities of the write ROI, channel d linking a voxel
    and its lower neighbour along d (waterz's convention). Pairs with fragment 0 are left out, as
    waterz does. Returns u < v (uint64, sorted by (u, v)), ``max_bin`` (uint8), ``aff_sum``
    (float64) and ``aff_count`` (int64) per pair.
    """
    us, vs, aa = [], [], []
    for d in range(3):
        here = []
        lower = []
        aff_sl = []
        for k in range(3):
            if k == d:
                here.append(slice(1, None))
                lower.append(slice(0, -1))
                aff_sl.append(slice(1 - pads[d], None))
            else:
                here.append(slice(pads[k], None))
                lower.append(slice(pads[k], None))
                aff_sl.append(slice(None))
        h = frag_ext[tuple(here)]
        lo = frag_ext[tuple(lower)]
        a = affs[d][tuple(aff_sl)]
        m = (h != lo) & (h != 0) & (lo != 0)
        h, lo, a = h[m], lo[m], a[m]
        us.append(np.minimum(h, lo))
        vs.append(np.maximum(h, lo))
        aa.append(a.astype(np.float32, copy=False))
    u = np.concatenate(us).astype(np.uint64)
    v = np.concatenate(vs).astype(np.uint64)
    a = np.concatenate(aa)
    return _reduce_pairs(u, v, affinity_bins(a), a.astype(np.float64), np.ones(a.size, np.int64))


def _reduce_pairs(
    u: np.ndarray, v: np.ndarray, bins: np.ndarray, sums: np.ndarray, counts: np.ndarray
) -> dict[str, np.ndarray]:
    """One row per (u, v) pair, sorted: max of bins, sums of sums and counts."""
    if u.size == 0:
        return {
            "u": np.zeros(0, np.uint64), "v": np.zeros(0, np.uint64),
            "max_bin": np.zeros(0, np.uint8), "aff_sum": np.zeros(0, np.float64),
            "aff_count": np.zeros(0, np.int64),
        }  # fmt: skip
    order = np.lexsort((v, u))
    u, v, bins, sums, counts = u[order], v[order], bins[order], sums[order], counts[order]
    start = np.flatnonzero(np.r_[True, (u[1:] != u[:-1]) | (v[1:] != v[:-1])])
    return {
        "u": u[start],
        "v": v[start],
        "max_bin": np.maximum.reduceat(bins, start).astype(np.uint8),
        "aff_sum": np.add.reduceat(sums, start),
        "aff_count": np.add.reduceat(counts, start),
    }


def _edges_inputs(
    job: _Job, task: BlockTask
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], str]:
    ext, pads = _lower_extended(task)
    frag = np.asarray(job.fragments.open()[ext]).astype(np.uint64, copy=False)
    affs = _read_affs(job, task.write)
    fp = (
        Fingerprint(*job.config("edges"), task.write_roi)
        .add_array(frag)
        .add_array(affs)
        .hexdigest()
    )
    return frag, affs, pads, fp


def _edges_path(job: _Job, task: BlockTask) -> Path:
    return Path(job.work_dir) / "edges" / f"{task.block_id}.npz"


def _edges_check(job: _Job, task: BlockTask) -> dict[str, Any] | None:
    m = job.markers("edges")
    if m.read(task) is None or not _edges_path(job, task).exists():
        return None
    return m.is_done(task, _edges_inputs(job, task)[3])


def _edges_block(job: _Job, task: BlockTask) -> dict[str, Any]:
    frag, affs, pads, fp = _edges_inputs(job, task)
    edges = block_edges(frag, affs, pads)
    atomic_write_npz(_edges_path(job, task), **edges)
    info = {"n_edges": int(edges["u"].size), "fingerprint": fp}
    job.markers("edges").mark(task, fp, info)
    return info


# --------------------------------------------------------------------------------------------
# phase 3: global agglomeration


def agglomerate_graph(
    edges: dict[str, np.ndarray],
    thresholds: Sequence[float],
    *,
    scoring: str = "quantile50",
    discretize_queue: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """``(node_ids, labels)``: the sorted fragment ids of the graph and, per threshold, the label
    (smallest fragment id of its region) of each: ``(T, n_nodes)`` uint64. ``edges`` (u < v
    sorted by (u, v), with ``max_bin`` or ``aff_sum``/``aff_count``) is emptied on the way, so
    its arrays can be freed before the merge."""
    u, v = edges.pop("u"), edges.pop("v")
    nodes = np.unique(np.concatenate([u, v]))
    ui = np.searchsorted(nodes, u).astype(np.int32)
    del u
    vi = np.searchsorted(nodes, v).astype(np.int32)
    del v
    stats = {k: edges.pop(k, None) for k in ("max_bin", "aff_sum", "aff_count")}
    roots = merge_regions(
        int(nodes.size), ui, vi, thresholds, scoring=scoring, discretize_queue=discretize_queue,
        copy=False, **stats,
    )  # fmt: skip
    return nodes, nodes[roots]


def _load_edges(job: _Job, tasks: Sequence[BlockTask], scoring: str) -> dict[str, np.ndarray]:
    """Every block's edges, sorted by (u, v), with the statistics ``scoring`` needs only."""
    keys = ["u", "v"] + (["aff_sum", "aff_count"] if scoring == "mean" else ["max_bin"])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for task in tasks:
        with np.load(_edges_path(job, task)) as z:
            for k in keys:
                parts[k].append(z[k])
    cat = {k: np.concatenate(parts.pop(k)) for k in keys}
    if job.own_fragments:  # each pair comes from exactly one block
        order = np.lexsort((cat["v"], cat["u"]))
        for k in keys:
            cat[k] = cat[k][order]
        return cat
    n = cat["u"].size
    red = _reduce_pairs(
        cat["u"], cat["v"], cat.get("max_bin", np.zeros(n, np.uint8)),
        cat.get("aff_sum", np.zeros(n)), cat.get("aff_count", np.ones(n, np.int64)),
    )  # fmt: skip
    return {k: red[k] for k in keys}


def _stat_keys(scoring: str) -> list[str]:
    return ["aff_sum", "aff_count"] if scoring == "mean" else ["max_bin"]


#: Edges per batch of components merged at once by :func:`agglomerate_components` (a larger
#: component makes a batch of its own).
BATCH_EDGES = 1 << 21


class SortedIds:
    """Fragment ids <-> indices 0..n-1 through the sorted array of ids (8 bytes per fragment)."""

    def __init__(self, ids: np.ndarray) -> None:
        self.sorted = np.asarray(ids, dtype=np.uint64)
        self.n = int(self.sorted.size)

    def index(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.sorted, ids).astype(np.int32)

    def ids(self, index: np.ndarray) -> np.ndarray:
        return self.sorted[index]


class BlockIds:
    """The ids of per-block fragments (``block_id * block_voxels + 1..n_b``) <-> indices in id
    order, by arithmetic on the per-block counts (no per-fragment array)."""

    def __init__(self, counts: Sequence[int], block_voxels: int) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(np.asarray(counts, np.int64))])
        self.voxels = np.uint64(block_voxels)
        self.n = int(self.offsets[-1])

    def index(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.uint64) - np.uint64(1)
        blk = (ids // self.voxels).astype(np.int64)
        local = (ids % self.voxels).astype(np.int64)
        return (self.offsets[blk] + local).astype(np.int32)

    def ids(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        blk = np.searchsorted(self.offsets, index, side="right") - 1
        local = (index - self.offsets[blk]).astype(np.uint64)
        return blk.astype(np.uint64) * self.voxels + local + np.uint64(1)


def agglomerate_components(
    load_block: Callable[[int], dict[str, np.ndarray]],
    n_blocks: int,
    thresholds: Sequence[float],
    scratch: Path | str,
    *,
    scoring: str = "quantile50",
    discretize_queue: int = 256,
    numbering: SortedIds | BlockIds | None = None,
    batch_edges: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The global merge, one batch of independent components at a time, never the whole graph.

    ``load_block(i)`` gives block i's edges (``u``, ``v`` fragment ids and the statistics
    ``scoring`` needs); a pair may come from several blocks (statistics then add up as in
    :func:`_reduce_pairs`). Fragments are numbered by ``numbering`` (default: the sorted ids of
    all edge ends). Edges whose initial score is below the largest threshold join fragments into
    components (union-find, streamed block by block); edges between components and fragments
    alone in theirs can never merge and are dropped; the remaining edges are written to
    ``scratch`` by batch of components, and each batch is merged with :func:`merge_regions` on
    its own. Exact (equal to merging the whole graph) when
    :func:`~synapse_toolkit.inference.regiongraph.components_are_exact`; otherwise a level may
    also merge edges scoring within its threshold's 1/256 bin that the whole-graph queue left.

    Returns ``(node_ids, labels, counts)``: the fragments that belong to a component with edges
    (sorted), their label per threshold (``(T, n)`` uint64, the smallest fragment id of the
    region; every other fragment keeps its own id) and counts (fragments, edge rows read (a pair
    from several blocks counts in each), kept fragments and edges, the largest component's
    edges, batches). Memory: 8 bytes per fragment (12 when
    numbered by sorted ids) plus one batch of components.
    """
    parse_scoring(scoring)
    ths = sorted(float(t) for t in thresholds)
    keys = _stat_keys(scoring)
    cap = int(batch_edges or BATCH_EDGES)
    if numbering is None:
        uniq = []
        for i in range(n_blocks):
            e = load_block(i)
            uniq.append(np.unique(np.concatenate([e["u"], e["v"]])))
        numbering = SortedIds(np.unique(np.concatenate(uniq)) if uniq else np.zeros(0, np.uint64))
        del uniq
    n = numbering.n
    if n >= 2**31:
        raise SyntkError(f"agglomerate_components: {n} fragments exceed the int32 indices")

    def indexed(i: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        e = load_block(i)
        return numbering.index(e.pop("u")), numbering.index(e.pop("v")), e

    # components of the cheap edges; an edge counts as cheap with a margin (more joining is safe)
    t_max = np.float32(ths[-1]) + np.float32(1e-6)
    comp = np.arange(n, dtype=np.int32)
    n_edges = 0
    for i in range(n_blocks):
        ui, vi, st = indexed(i)
        n_edges += int(ui.size)
        cheap = initial_scores(scoring, **st) < t_max
        union_edges(comp, ui[cheap], vi[cheap])
    flatten_roots(comp)
    batch_of = np.zeros(n, np.int32)  # edges inside each component (at its root), then batches
    for i in range(n_blocks):
        ui, vi, _ = indexed(i)
        count_internal(comp, ui, vi, batch_of)
    roots = np.flatnonzero(batch_of)
    sizes = batch_of[roots].astype(np.int64)
    start = np.cumsum(sizes) - sizes
    batch_of[:] = -1
    batch_of[roots] = (start // cap).astype(np.int32)  # about `cap` edges per batch
    n_batches = int(batch_of[roots].max()) + 1 if roots.size else 0
    counts = {
        "nodes": n, "edges": n_edges, "kept_nodes": 0, "kept_edges": int(sizes.sum()),
        "largest_component_edges": int(sizes.max()) if sizes.size else 0,
        "batches": n_batches,
    }  # fmt: skip
    del roots, sizes, start
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    dtypes = {"u": np.int32, "v": np.int32, "max_bin": np.uint8, "aff_sum": np.float64,
              "aff_count": np.int64}  # fmt: skip
    cols = ["u", "v", *keys]
    with contextlib.ExitStack() as stack:
        files = {
            (b, k): stack.enter_context(open(scratch / f"{b}.{k}", "wb"))
            for b in range(n_batches)
            for k in cols
        }
        for i in range(n_blocks):
            ui, vi, st = indexed(i)
            cu = comp[ui]
            keep = cu == comp[vi]
            bk = batch_of[cu[keep]]
            data = {"u": ui[keep], "v": vi[keep], **{k: st[k][keep] for k in keys}}
            order = np.argsort(bk, kind="stable")
            bk = bk[order]
            if bk.size == 0:
                continue
            cuts = np.flatnonzero(np.r_[True, bk[1:] != bk[:-1], True])
            for lo, hi in itertools.pairwise(cuts):
                sel = order[lo:hi]
                batch = int(bk[lo])
                for k in cols:
                    np.ascontiguousarray(data[k][sel], dtype=dtypes[k]).tofile(files[batch, k])
    del comp, batch_of
    kept_idx, kept_lab = [], []
    for b in range(n_batches):
        arr = {k: np.fromfile(scratch / f"{b}.{k}", dtype=dtypes[k]) for k in cols}
        for k in cols:
            (scratch / f"{b}.{k}").unlink()
        bnodes = np.unique(np.concatenate([arr["u"], arr["v"]]))
        lu = np.searchsorted(bnodes, arr.pop("u")).astype(np.uint64)
        lv = np.searchsorted(bnodes, arr.pop("v")).astype(np.uint64)
        m = lu.size
        red = _reduce_pairs(
            lu, lv, arr.get("max_bin", np.zeros(m, np.uint8)),
            arr.get("aff_sum", np.zeros(m)), arr.get("aff_count", np.ones(m, np.int64)),
        )  # fmt: skip
        del arr, lu, lv
        stats = {k: red[k] for k in keys}
        roots_b = merge_regions(
            int(bnodes.size), red["u"].astype(np.int32), red["v"].astype(np.int32), ths,
            scoring=scoring, discretize_queue=discretize_queue, copy=False, **stats,
        )  # fmt: skip
        del red, stats
        kept_idx.append(bnodes)
        kept_lab.append(bnodes[roots_b])
    if not kept_idx:
        return np.zeros(0, np.uint64), np.zeros((len(ths), 0), np.uint64), counts
    idx = np.concatenate(kept_idx)
    lab = np.concatenate(kept_lab, axis=1)
    order = np.argsort(idx)
    counts["kept_nodes"] = int(idx.size)
    return numbering.ids(idx[order]), numbering.ids(lab[:, order]), counts


# --------------------------------------------------------------------------------------------
# phase 4: relabel


@functools.lru_cache(maxsize=2)
def _load_labels(path: str, fingerprint: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["nodes"], z["labels"]


def _relabel_inputs(
    job: _Job, task: BlockTask, graph_path: str, graph_fp: str, token: str
) -> tuple[np.ndarray, str]:
    frag = np.asarray(job.fragments.open()[task.write]).astype(np.uint64, copy=False)
    fp = Fingerprint(*job.config("relabel"), task.write_roi, graph_fp, token).add_array(frag)
    return frag, fp.hexdigest()


def relabel(frag: np.ndarray, nodes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(T, *frag.shape)``: each fragment's label per threshold (ids outside the graph stay).

    Ids spanning a range up to a few times the block's size (per-block fragments always do) go
    through a dense lookup table; others through ``np.unique`` and a search in ``nodes``."""
    out = np.empty((labels.shape[0], *frag.shape), np.uint64)
    fg = frag != 0
    if not fg.any():
        out[...] = 0
        return out
    lo, hi = int(frag[fg].min()), int(frag.max())
    if hi - lo < 4 * frag.size + 1024:
        a = int(np.searchsorted(nodes, np.uint64(lo), side="left"))
        b = int(np.searchsorted(nodes, np.uint64(hi), side="right"))
        sel = (nodes[a:b] - np.uint64(lo)).astype(np.int64)
        idx = np.where(fg, frag - np.uint64(lo), 0).astype(np.int64)
        base = np.arange(lo, hi + 1, dtype=np.uint64)
        for t in range(labels.shape[0]):
            table = base.copy()
            table[sel] = labels[t, a:b]
            out[t] = np.where(fg, table[idx], np.uint64(0))
        return out
    ids, inv = np.unique(frag, return_inverse=True)
    inv = inv.reshape(frag.shape)
    idx_c = np.minimum(np.searchsorted(nodes, ids), max(nodes.size - 1, 0))
    found = (nodes[idx_c] == ids) if nodes.size else np.zeros(ids.size, bool)
    for t in range(labels.shape[0]):
        lab = np.where(found, labels[t][idx_c], ids) if nodes.size else ids
        out[t] = lab[inv]
    return out


def _relabel_check(
    job: _Job, out: ArrayRef, graph_path: str, graph_fp: str, token: str, task: BlockTask
) -> dict[str, Any] | None:
    m = job.markers("relabel")
    if not token or m.read(task) is None:
        return None
    return m.is_done(task, _relabel_inputs(job, task, graph_path, graph_fp, token)[1])


def _relabel_block(
    job: _Job, out: ArrayRef, graph_path: str, graph_fp: str, token: str, task: BlockTask
) -> dict[str, Any]:
    frag, fp = _relabel_inputs(job, task, graph_path, graph_fp, token)
    nodes, labels = _load_labels(graph_path, graph_fp)
    out.open("r+")[(slice(None), *task.write)] = relabel(frag, nodes, labels)
    if token:
        job.markers("relabel").mark(task, fp)
    return {}


# --------------------------------------------------------------------------------------------
# driver


@dataclass
class BlockwiseResult:
    """Counts and timings of a blockwise agglomeration run."""

    n_blocks: int
    n_fragments: int
    n_edges: int
    seconds: dict[str, float] = field(default_factory=dict)
    skipped_blocks: dict[str, int] = field(default_factory=dict)
    graph: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_blocks": self.n_blocks, "n_fragments": self.n_fragments, "n_edges": self.n_edges,
            "seconds": self.seconds, "skipped_blocks": self.skipped_blocks, "graph": self.graph,
        }  # fmt: skip


def _output_token(out: Any) -> str:
    """A token naming this output array's life: kept in its zarr attributes, so markers of a
    deleted and recreated output do not count. In-memory outputs have none (never skipped)."""
    attrs = getattr(out, "attrs", None)
    if attrs is None:
        return ""
    ref = array_ref(out)
    if ref.picklable():  # the attributes as stored now, not as this handle cached them
        import zarr

        attrs = zarr.open_array(store=ref.zarr_root, path=ref.zarr_path, mode="r+").attrs
    token = attrs.get("syntk_blockwise_token")
    if not token:
        token = hashlib.blake2b(f"{time.time_ns()}{id(out)}".encode(), digest_size=8).hexdigest()
        attrs["syntk_blockwise_token"] = token
    return str(token)


def agglomerate_blockwise(
    affinities: Any,
    out: Any,
    thresholds: Sequence[float],
    work_dir: Path | str,
    *,
    fragments: Any = None,
    scoring: str = "quantile50",
    aff_threshold_low: float = 0.0001,
    aff_threshold_high: float = 0.9999,
    discretize_queue: int = 256,
    block_shape: Sequence[int] = (32, 256, 256),
    context: Sequence[int] = (4, 32, 32),
    voxel_size_nm: Sequence[float] = (1.0, 1.0, 1.0),
    offset_nm: Sequence[float] = (0.0, 0.0, 0.0),
    n_workers: int = 1,
    executor: Literal["threads", "processes"] = "threads",
    max_retries: int = 2,
    progress: Callable[[str, int], Callable[[], None]] | None = None,
    logger: Any = None,
    pool: Any = None,
    uint8: bool = False,
    components: Literal["auto", "always", "never"] = "auto",
) -> BlockwiseResult:
    """Agglomerate ``affinities`` (>=3, z, y, x) block by block into ``out`` (T, z, y, x) uint64,
    one segmentation per threshold (ascending).

    ``work_dir`` keeps fragments (``fragments.zarr``, unless ``fragments`` are given), block edges,
    the global merge result and the done markers; a rerun with the same inputs skips every
    finished block. ``out`` should be chunked so no chunk spans two blocks (the relabel blocks
    write in parallel). ``progress(phase, n_blocks)`` returns a callable ticked once per block.
    With ``executor="processes"`` the arrays must be zarr arrays on local disk (workers reopen
    them by path); other arrays fall back to threads. A ``pool`` (an executor, e.g. from the
    run's engine) replaces the pool this function would start; it is shut down at the end.
    ``uint8``: agglomerate the affinities as 8-bit storage would hold them (:func:`quantize_uint8`).
    ``components``: merge the fragment graph one batch of independent components at a time
    (:func:`agglomerate_components`, memory bounded by the largest component rather than the
    volume); ``"auto"`` where that is exact
    (:func:`~synapse_toolkit.inference.regiongraph.components_are_exact`), ``"always"`` also
    elsewhere, ``"never"``: the whole graph at once.
    """
    import zarr

    ths = sorted(float(t) for t in thresholds)
    if not ths:
        raise SyntkError("blockwise agglomeration: give at least one threshold")
    parse_scoring(scoring)
    if components not in ("auto", "always", "never"):
        raise SyntkError(f"blockwise agglomeration: components must be auto, always or never, "
                         f"got {components!r}")  # fmt: skip
    split = components == "always" or (
        components == "auto" and components_are_exact(ths, discretize_queue)
    )
    if len(affinities.shape) != 4 or affinities.shape[0] < 3:
        raise DataError(
            f"blockwise agglomeration: affinities must be (>=3, z, y, x), got {affinities.shape}"
        )
    z, y, x = (int(s) for s in affinities.shape[1:])
    shape = (z, y, x)
    if tuple(out.shape) != (len(ths), *shape):
        raise DataError(f"blockwise agglomeration: out shape {tuple(out.shape)} != "
                        f"{(len(ths), *shape)} (thresholds, z, y, x)")  # fmt: skip
    if fragments is not None and tuple(fragments.shape) != shape:
        raise DataError(f"blockwise agglomeration: fragments shape {tuple(fragments.shape)} "
                        f"!= affinities spatial {shape}")  # fmt: skip
    bs = tuple(int(b) for b in block_shape)
    ctx = tuple(int(c) for c in context)
    if len(bs) != 3 or min(bs) < 1 or len(ctx) != 3 or min(ctx) < 0:
        raise SyntkError(f"blockwise agglomeration: bad block_shape {bs} or context {ctx}")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    own = fragments is None
    if own:
        fpath = work / "fragments.zarr"
        try:
            farr = zarr.open_array(store=str(fpath), mode="r+")
            if tuple(farr.shape) != shape or tuple(farr.chunks) != bs:
                raise ValueError("other layout")
        except Exception:
            farr = zarr.create_array(
                store=str(fpath), shape=shape, dtype=np.uint64, chunks=bs, fill_value=0,
                overwrite=True, config={"write_empty_chunks": True},
            )  # fmt: skip
        fragments = farr
    refs = {"a": array_ref(affinities), "f": array_ref(fragments), "o": array_ref(out)}
    if executor == "processes" and not all(r.picklable() for r in refs.values()):
        if logger is not None:
            logger.info("blockwise agglomeration: arrays not on local zarr stores, using threads")
        executor = "threads"
    job = _Job(
        affinities=refs["a"], fragments=refs["f"], own_fragments=own, shape=shape,
        block_shape=bs, context=ctx, aff_threshold_low=float(aff_threshold_low),
        aff_threshold_high=float(aff_threshold_high), work_dir=str(work), uint8=bool(uint8),
    )  # fmt: skip
    tasks = make_tasks(shape, bs, ctx, voxel_size_nm=voxel_size_nm, offset_nm=offset_nm)
    result = BlockwiseResult(n_blocks=len(tasks), n_fragments=0, n_edges=0)
    if pool is None:
        pool = make_pool(n_workers, executor, "blockwise agglomeration")

    def phase(name: str, process: Any, check: Any) -> dict[int, dict[str, Any]]:
        t0 = time.perf_counter()
        tick = progress(name, len(tasks)) if progress else None
        rep = run_blocks(
            tasks, process, check=check, name=f"blockwise agglomeration ({name})",
            on_block=(lambda t, s: tick()) if tick else None, n_workers=n_workers,
            max_retries=max_retries, pool=pool,
        )  # fmt: skip
        result.seconds[name] = round(time.perf_counter() - t0, 3)
        result.skipped_blocks[name] = len(rep.skipped)
        return rep.info

    try:
        if own:
            info = phase(
                "fragments",
                functools.partial(_fragments_block, job),
                functools.partial(_fragments_check, job),
            )
            result.n_fragments = sum(int(i.get("n_fragments", 0)) for i in info.values())
            numbering: BlockIds | None = BlockIds(
                [int(info[t.block_id].get("n_fragments", 0)) for t in tasks], job.block_voxels
            )
        else:
            numbering = None
        info = phase(
            "edges", functools.partial(_edges_block, job), functools.partial(_edges_check, job)
        )
        edge_fps = [info[t.block_id]["fingerprint"] for t in tasks]
        release_workers(pool)  # idle workers would hold their heaps through the global step

        # global step, cached by the fingerprint of every block's edges and the merge options
        t0 = time.perf_counter()
        graph_fp = Fingerprint(FORMAT_VERSION, "agglomerate", edge_fps, scoring, ths,
                               discretize_queue, split).hexdigest()  # fmt: skip
        graph_path = work / "agglomeration.npz"
        meta_path = work / "agglomeration.json"
        cached = False
        if graph_path.exists() and meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
                cached = meta.get("fingerprint") == graph_fp
            except json.JSONDecodeError:
                cached = False
        if cached:
            result.n_edges = int(meta.get("n_edges", 0))
            result.graph = dict(meta.get("graph", {}))
            if not own:
                result.n_fragments = int(meta.get("n_nodes", 0))
        else:
            if split:
                keys = ["u", "v", *_stat_keys(scoring)]

                def load(i: int) -> dict[str, np.ndarray]:
                    with np.load(_edges_path(job, tasks[i])) as z:
                        return {k: z[k] for k in keys}

                nodes, labels, counts = agglomerate_components(
                    load, len(tasks), ths, work / "components", scoring=scoring,
                    discretize_queue=discretize_queue, numbering=numbering,
                )  # fmt: skip
                n_nodes = counts["nodes"]
                result.graph = {"components": True, **counts}
            else:
                edges = _load_edges(job, tasks, scoring)
                counts = {"edges": int(edges["u"].size)}
                nodes, labels = agglomerate_graph(
                    edges, ths, scoring=scoring, discretize_queue=discretize_queue
                )
                del edges
                n_nodes = int(nodes.size)
                result.graph = {"components": False, "nodes": n_nodes, **counts}
            result.n_edges = counts["edges"]
            atomic_write_npz(graph_path, nodes=nodes, labels=labels)
            atomic_write_bytes(meta_path, json.dumps({
                "fingerprint": graph_fp, "n_edges": result.n_edges, "n_nodes": n_nodes,
                "scoring": scoring, "thresholds": ths, "graph": result.graph,
            }).encode())  # fmt: skip
            if not own:
                result.n_fragments = n_nodes
            del nodes, labels
            release_free_memory()  # the graph's heap, before the relabel workers start
        result.seconds["agglomerate"] = round(time.perf_counter() - t0, 3)
        result.skipped_blocks["agglomerate"] = int(cached)

        token = _output_token(out)
        args = (job, refs["o"], str(graph_path), graph_fp, token)
        phase(
            "relabel",
            functools.partial(_relabel_block, *args),
            functools.partial(_relabel_check, *args),
        )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return result
