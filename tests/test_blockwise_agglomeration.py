"""Blockwise waterz agglomeration: equal to in-memory waterz where it must be, close where
fragments are cut at block faces; unique ids, face edges, kill-and-resume, bounded retries."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import ndimage

from synapse_toolkit.affinities import labels_to_affinities
from synapse_toolkit.blocktasks import BlockwiseError, make_tasks, run_blocks
from synapse_toolkit.data import Volume
from synapse_toolkit.inference import agglomeration_blockwise as ab
from synapse_toolkit.inference.agglomeration import agglomerate
from synapse_toolkit.inference.segmetrics import segmentation_scores
from synapse_toolkit.stages import StageContext

THS = [0.2, 0.4, 0.6, 0.8]


def _labels(shape=(10, 64, 64), n=40, seed=0) -> np.ndarray:
    """Anisotropic Voronoi cells (z voxels 4x thicker) with one-voxel boundaries of label 0."""
    rng = np.random.default_rng(seed)
    markers = np.zeros(shape, np.int64)
    pts = rng.integers(0, shape, size=(n, 3))
    markers[tuple(pts.T)] = np.arange(1, n + 1)
    _, inds = ndimage.distance_transform_edt(markers == 0, sampling=(4, 1, 1), return_indices=True)
    lab = markers[tuple(inds)]
    edge = np.zeros(shape, bool)
    for ax in (1, 2):
        edge |= np.diff(lab, axis=ax, prepend=np.take(lab, [0], axis=ax)) != 0
    lab[edge] = 0
    return lab.astype(np.uint64)


def _affs(lab: np.ndarray, noise: float = 0.2, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = labels_to_affinities(lab) * 0.8 + 0.1
    return np.clip(a + rng.normal(0, noise, a.shape), 0, 1).astype(np.float32)


def _run(affs, tmp_path: Path, name: str = "w", **kw) -> np.ndarray:
    out = np.zeros((len(THS), *affs.shape[1:]), np.uint64)
    ab.agglomerate_blockwise(affs, out, THS, tmp_path / name, **kw)
    return out


@pytest.mark.parametrize("scoring", ["quantile50", "quantile75", "mean"])
@pytest.mark.parametrize("block_shape", [(10, 64, 64), (4, 24, 20)])
def test_given_fragments_equal_in_memory_waterz_bit_for_bit(scoring, block_shape, tmp_path):
    """Same fragments => same graph and statistics => waterz's merge order and ids exactly."""
    affs = _affs(_labels())
    frag = ab.waterz_fragments(affs)
    ref = agglomerate(affs, THS, fragments=frag, scoring=scoring)
    out = _run(affs, tmp_path, fragments=frag, scoring=scoring, block_shape=block_shape)
    for t in range(len(THS)):
        assert np.array_equal(out[t], ref[t]), (scoring, block_shape, THS[t])


def test_dense_histograms_equal_waterz(tmp_path, monkeypatch):
    """Every merged edge in a dense 256-bin row (and the row pool grown many times)."""
    from synapse_toolkit.inference import regiongraph

    monkeypatch.setattr(regiongraph, "LIST_LIMIT", 1)
    monkeypatch.setattr(regiongraph, "INITIAL_ROWS", 1)
    affs = _affs(_labels(seed=9), seed=10)
    frag = ab.waterz_fragments(affs)
    ref = agglomerate(affs, [0.3, 0.9], fragments=frag, scoring="quantile25")
    out = np.zeros((2, *affs.shape[1:]), np.uint64)
    ab.agglomerate_blockwise(affs, out, [0.3, 0.9], tmp_path, fragments=frag, scoring="quantile25")
    assert np.array_equal(out, np.stack(ref))


def test_one_block_equals_in_memory_waterz_including_fragments(tmp_path):
    affs = _affs(_labels(seed=3), seed=4)
    ref = agglomerate(affs, THS, scoring="quantile75")
    out = _run(affs, tmp_path, scoring="quantile75", block_shape=(16, 64, 64))
    assert all(np.array_equal(o, r) for o, r in zip(out, ref, strict=True))


def test_uint8_affinities_equal_waterz_on_quantized_affinities(tmp_path):
    """uint8 = what 8-bit storage holds (round(a * 255) / 255); one block equals waterz on it."""
    affs = _affs(_labels(seed=3), seed=4)
    q = ab.quantize_uint8(affs)
    assert np.array_equal(np.rint(q * 255).astype(np.uint8), np.rint(affs * 255).astype(np.uint8))
    ref = agglomerate(q, THS, scoring="quantile75")
    out = _run(affs, tmp_path, scoring="quantile75", block_shape=(16, 64, 64), uint8=True)
    assert all(np.array_equal(o, r) for o, r in zip(out, ref, strict=True))
    assert len(np.unique(ab.waterz_fragments(q))) < len(np.unique(ab.waterz_fragments(affs)))


def test_per_block_fragments_close_to_in_memory(tmp_path):
    """Per-block watershed fragments differ from whole-volume ones near block faces (cut there,
    and the watershed sees only the context), and the cut parts' histograms add up in another
    order, so single merges differ. The best CREMI score over the sweep agrees within 0.01
    (measured on 5 seeds of this volume: differences <= 0.005); thresholds far from the best
    (0.8, where most of the volume merges) can differ much more, so they are not compared."""
    lab = _labels(shape=(12, 96, 96), n=60, seed=5)
    affs = _affs(lab, noise=0.25, seed=6)
    ref = agglomerate(affs, THS, scoring="quantile50")
    out = _run(affs, tmp_path, scoring="quantile50", block_shape=(6, 40, 40), context=(2, 8, 8))
    mem = [segmentation_scores(r, lab).cremi_score for r in ref]
    blk = [segmentation_scores(o, lab).cremi_score for o in out]
    assert abs(min(mem) - min(blk)) <= 0.01, (mem, blk)
    assert min(blk) < 0.05  # and both are good segmentations
    assert not all(np.array_equal(o, r) for o, r in zip(out, ref, strict=True))  # really blockwise


def test_fragment_ids_are_unique_across_blocks(tmp_path):
    affs = _affs(_labels())
    bs = (4, 24, 20)
    _run(affs, tmp_path, block_shape=bs)
    frag = zarr.open_array(str(tmp_path / "w" / "fragments.zarr"), mode="r")[...]
    seen: list[np.ndarray] = []
    for task in make_tasks(frag.shape, bs):
        ids = np.unique(frag[task.write])
        ids = ids[ids > 0]
        lo = task.block_id * int(np.prod(bs))
        assert ids.min() > lo and ids.max() <= lo + int(np.prod(bs))
        seen.append(ids)
    allids = np.concatenate(seen)
    assert allids.size == np.unique(allids).size


def test_face_edges_belong_to_the_upper_block(tmp_path):
    frag = np.zeros((2, 2, 2), np.uint64)
    frag[0], frag[1] = 1, 2
    affs = np.full((3, 2, 2, 2), 0.5, np.float32)
    affs[0, 1] = [[0.2, 0.9], [0.5, 0.7]]  # the z face between fragments 1 and 2
    out = np.zeros((1, 2, 2, 2), np.uint64)
    ab.agglomerate_blockwise(affs, out, [0.5], tmp_path, fragments=frag, block_shape=(1, 2, 2))
    lower = np.load(tmp_path / "edges" / "0.npz")
    upper = np.load(tmp_path / "edges" / "1.npz")
    assert lower["u"].size == 0
    assert upper["u"].tolist() == [1] and upper["v"].tolist() == [2]
    assert upper["max_bin"].tolist() == [int(0.9 * 256)]
    assert upper["aff_count"].tolist() == [4]
    assert upper["aff_sum"][0] == pytest.approx(0.2 + 0.9 + 0.5 + 0.7, abs=1e-6)
    assert np.all(out[0] == 1)  # quantile50 of {max 0.9}: score 0.1 < 0.5, merged


def test_blockwise_edges_equal_one_block_edges(tmp_path):
    affs = _affs(_labels())
    frag = ab.waterz_fragments(affs)
    one = ab.block_edges(frag, affs, (0, 0, 0))
    job_dir = tmp_path / "w"
    _run(affs, tmp_path, fragments=frag, block_shape=(3, 17, 23))
    tasks = make_tasks(frag.shape, (3, 17, 23))
    parts = [np.load(job_dir / "edges" / f"{t.block_id}.npz") for t in tasks]
    cat = {k: np.concatenate([p[k] for p in parts]) for k in one}
    merged = ab._reduce_pairs(*(cat[k] for k in ("u", "v", "max_bin", "aff_sum", "aff_count")))
    for k in ("u", "v", "max_bin", "aff_count"):
        assert np.array_equal(merged[k], one[k]), k
    assert np.allclose(merged["aff_sum"], one["aff_sum"])


@pytest.mark.parametrize("ids", [[0, 3, 4, 5, 9, 100], [0, 3, 2**40, 7], [0]])
def test_relabel_maps_graph_nodes_and_keeps_other_ids(ids):
    rng = np.random.default_rng(0)
    frag = rng.choice(np.array(ids, np.uint64), (4, 5, 6))
    nodes = np.array([3, 5, 9, 100, 2**40], np.uint64)
    labels = np.array([[3, 3, 9, 100, 3], [3, 3, 3, 3, 3]], np.uint64)
    got = ab.relabel(frag, nodes, labels)
    table = [dict(zip(nodes.tolist(), labels[t].tolist(), strict=True)) for t in range(2)]
    for t in range(2):
        want = [table[t].get(v, v) for v in frag.ravel().tolist()]
        assert got[t].ravel().tolist() == want


def _zarr_out(path: Path, shape) -> zarr.Array:
    return zarr.create_array(
        store=str(path), shape=(len(THS), *shape), dtype=np.uint64, chunks=(1, 4, 24, 20),
        fill_value=0, config={"write_empty_chunks": True},
    )  # fmt: skip


def _chunk_bytes(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


_KILL_SCRIPT = """
import os, sys, numpy as np, zarr
from synapse_toolkit.inference import agglomeration_blockwise as ab
phase, k, d = sys.argv[1], int(sys.argv[2]), sys.argv[3]
affs = zarr.open_array(d + "/affs.zarr", mode="r")
out = zarr.open_array(d + "/out.zarr", mode="r+")
original = getattr(ab, "_" + phase + "_block")
calls = [0]
def dying(*args):
    if calls[0] == k:
        os._exit(3)  # a hard kill: no cleanup, no exception handling
    calls[0] += 1
    return original(*args)
setattr(ab, "_" + phase + "_block", dying)
ab.agglomerate_blockwise(affs, out, {ths}, d + "/work", block_shape=(4, 24, 20), n_workers=1)
"""


@pytest.mark.parametrize("phase", ["edges", "relabel"])
def test_killed_run_resumes_block_by_block_byte_identical(phase, tmp_path):
    affs = _affs(_labels())
    za = zarr.create_array(store=str(tmp_path / "affs.zarr"), shape=affs.shape, dtype="f4",
                           chunks=(3, 4, 24, 20))  # fmt: skip
    za[...] = affs
    ref_out = _zarr_out(tmp_path / "ref.zarr", affs.shape[1:])
    ab.agglomerate_blockwise(za, ref_out, THS, tmp_path / "ref_work", block_shape=(4, 24, 20))

    out = _zarr_out(tmp_path / "out.zarr", affs.shape[1:])
    k = 5
    script = textwrap.dedent(_KILL_SCRIPT).replace("{ths}", repr(THS))
    proc = subprocess.run([sys.executable, "-c", script, phase, str(k), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    n = len(make_tasks(affs.shape[1:], (4, 24, 20)))
    res = ab.agglomerate_blockwise(za, out, THS, tmp_path / "work", block_shape=(4, 24, 20))
    assert res.skipped_blocks["fragments"] == n
    assert res.skipped_blocks[phase] == k
    assert res.skipped_blocks["agglomerate"] == (1 if phase == "relabel" else 0)
    assert np.array_equal(out[...], ref_out[...])
    assert _chunk_bytes(tmp_path / "out.zarr") == _chunk_bytes(tmp_path / "ref.zarr")


def test_changed_block_is_recomputed(tmp_path):
    affs = _affs(_labels())
    bs = (4, 24, 20)
    _run(affs, tmp_path, block_shape=bs)
    affs2 = affs.copy()
    affs2[:, 0:2, 0:10, 0:10] = 0.95
    out = np.zeros((len(THS), *affs.shape[1:]), np.uint64)
    res = ab.agglomerate_blockwise(affs2, out, THS, tmp_path / "w", block_shape=bs)
    fresh = _run(affs2, tmp_path, name="fresh", block_shape=bs)
    assert np.array_equal(out, fresh)
    n = res.n_blocks
    assert 0 < res.skipped_blocks["fragments"] < n


def test_failing_block_is_retried_a_bounded_number_of_times_and_reported(tmp_path):
    tasks = make_tasks((8, 16, 16), (4, 8, 8), voxel_size_nm=(40, 4, 4), offset_nm=(80, 0, 0))
    calls: dict[int, int] = {}

    def process(task):
        calls[task.block_id] = calls.get(task.block_id, 0) + 1
        if task.block_id == 5:
            raise ValueError("bad block")
        return {}

    with pytest.raises(BlockwiseError) as err:
        run_blocks(tasks, process, max_retries=2, name="test")
    msg = str(err.value)
    assert calls[5] == 3 and all(calls[i] == 1 for i in range(8) if i != 5)
    assert list(err.value.failed) == [5]
    assert "z 4:8 y 0:8 x 8:16 voxels" in msg and "z 240-400 y 0-32 x 32-64 nm" in msg
    assert "ValueError: bad block" in msg and "after 3 attempts" in msg


def test_failing_block_in_agglomeration_names_its_roi(tmp_path, monkeypatch):
    affs = _affs(_labels())
    real = ab.waterz_fragments

    def flaky(a, *args):
        target = affs[:3, 0:6, 20:52, 16:44]  # the read ROI of write ROI z 0:4 y 24:48 x 20:40
        if a.shape == target.shape and np.array_equal(a, target):
            raise RuntimeError("disk on fire")
        return real(a, *args)

    monkeypatch.setattr(ab, "waterz_fragments", flaky)
    with pytest.raises(
        BlockwiseError, match=r"write ROI z 0:4 y 24:48 x 20:40 voxels.*disk on fire"
    ):
        _run(affs, tmp_path, block_shape=(4, 24, 20), context=(2, 4, 4), max_retries=1)


def _write_block(root: str, die_flag: str, task) -> dict:
    """A process function for the worker-death test: writes the block, marks it done; block 3
    kills its worker process the first time (a hard exit, as the OOM killer would)."""
    import os

    from synapse_toolkit.blocktasks import DoneMarkers

    if task.block_id == 3 and not os.path.exists(die_flag):
        open(die_flag, "w").close()
        os._exit(9)
    arr = zarr.open_array(root + "/out.zarr", mode="r+")
    arr[task.write] = task.block_id + 1
    DoneMarkers(Path(root) / "done").mark(task, "fp")
    return {}


def _block_done(root: str, task) -> dict | None:
    from synapse_toolkit.blocktasks import DoneMarkers

    return DoneMarkers(Path(root) / "done").is_done(task, "fp")


def test_killed_worker_process_is_reported_and_the_rerun_resumes(tmp_path):
    import functools

    from synapse_toolkit.errors import SyntkError

    zarr.create_array(store=str(tmp_path / "out.zarr"), shape=(8, 16, 16), dtype="u2",
                      chunks=(4, 8, 8), fill_value=0)  # fmt: skip
    tasks = make_tasks((8, 16, 16), (4, 8, 8))
    process = functools.partial(_write_block, str(tmp_path), str(tmp_path / "died"))
    check = functools.partial(_block_done, str(tmp_path))
    with pytest.raises(SyntkError, match=r"worker process died") as err:
        run_blocks(tasks, process, check=check, n_workers=1, executor="processes")
    assert "block 3 (0, 1, 1): write ROI z 0:4 y 8:16 x 8:16 voxels" in str(err.value)
    rep = run_blocks(tasks, process, check=check, n_workers=2, executor="processes")
    assert set(rep.skipped) | set(rep.processed) == set(range(8)) and 3 in rep.processed
    assert set(rep.skipped) >= {0, 1, 2}  # blocks finished before the kill are not redone
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    want = np.zeros((8, 16, 16), np.uint16)
    for t in tasks:
        want[t.write] = t.block_id + 1
    assert np.array_equal(out, want)


def test_process_pool_equals_threads(tmp_path):
    affs = _affs(_labels())
    za = zarr.create_array(store=str(tmp_path / "affs.zarr"), shape=affs.shape, dtype="f4",
                           chunks=(3, 4, 24, 20))  # fmt: skip
    za[...] = affs
    outs = []
    for ex in ("threads", "processes"):
        o = _zarr_out(tmp_path / f"{ex}.zarr", affs.shape[1:])
        ab.agglomerate_blockwise(za, o, THS, tmp_path / ex, block_shape=(4, 24, 20),
                                 n_workers=2, executor=ex)  # fmt: skip
        outs.append(o[...])
    assert np.array_equal(outs[0], outs[1])


def test_stage_matches_waterz_stage_on_given_fragments(tmp_path):
    from syntk_neurons.blockwise_stage import BlockwiseWaterzAgglomerator
    from syntk_neurons.stages import WaterzAgglomerator

    lab = _labels(seed=7)
    affs = _affs(lab, seed=8)
    frag = ab.waterz_fragments(affs)
    inputs = {
        "affinities": Volume(affs, (40, 4, 4)),
        "fragments": Volume(frag, (40, 4, 4)),
        "truth": Volume(lab, (40, 4, 4)),
    }
    res = {}
    for cls, extra in (
        (WaterzAgglomerator, {}),
        (BlockwiseWaterzAgglomerator, {"block_shape": (4, 24, 20), "executor": "threads"}),
    ):
        ctx = StageContext(cls.name, tmp_path / cls.name, run_dir=tmp_path)
        ctx.scratch_dir.mkdir()
        res[cls.name] = cls(cls.Options(thresholds=THS, **extra), ctx).run(inputs)
    a, b = res["waterz"], res["blockwise-waterz"]
    assert np.array_equal(a["segmentations"].read(), b["segmentations"].read())
    assert np.array_equal(a["segmentation"].read(), b["segmentation"].read())
    assert a["scores"].values["best_threshold"] == b["scores"].values["best_threshold"]
    for ra, rb in zip(a["scores"].details["sweep"], b["scores"].details["sweep"], strict=True):
        assert rb["cremi_score"] == pytest.approx(ra["cremi_score"], abs=1e-9)
    assert not (tmp_path / "blockwise").exists()  # work dir removed after success
