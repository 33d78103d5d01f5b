"""Blockwise vs in-memory waterz agglomeration: CREMI score difference and peak memory vs size.

Each agglomeration runs in its own process under ``/usr/bin/time -v`` (peak RSS of that process;
the blockwise runs use threads so the one process holds all of their memory), reading affinities
from zarr and writing the segmentations to zarr, as the pipeline stages do:

- ``in-memory``: the ``waterz`` stage's path
  (:func:`synapse_toolkit.inference.agglomeration.agglomerate` on the whole volume, each
  threshold's segmentation written to zarr);
- ``blockwise``: :func:`synapse_toolkit.inference.agglomeration_blockwise.agglomerate_blockwise`.

Scores: the project's CREMI neuron scorer (streamed in blocks) with the main job's 25 nm border
mask, at every threshold of the sweep; the headline difference is at the main job's fixed
threshold (``examples/cremi.toml``: quantile75, 0.5), not at a threshold chosen on the truth.

``--graph WORK_DIR`` measures the global step alone on a kept work dir of the ``blockwise-waterz``
stage (``--set stages.segment.options.keep_work=true``; its ``edges/`` and fragment markers): the
merge of the whole graph and the merge by components
(:func:`~synapse_toolkit.inference.agglomeration_blockwise.agglomerate_components`), each in its
own process (peak RSS above the process's RSS after loading the compiled kernels, per edge), and
checks that both give the same labels; ``--old-src DIR`` adds the whole-graph merge of another
source tree (e.g. ``git archive <commit> synapse_toolkit | tar -x -C DIR``) for a before/after.

    python benchmarks/bench_blockwise_agglomeration.py \
        --graph runs/bench_scale/run_50_1w/blockwise/segment --old-src /tmp/old

Inputs (``--phantom``, a CREMI file from ``syntk phantom em``), cropped to each ``--sizes`` entry
(z, y, x):

- ``--affinities affs.zarr``: the main job's affinities of that phantom (the ``affinity-unet``
  stage's artifact from ``syntk pipeline run``), or
- noisy affinities derived from the phantom's ground truth (default): 1 inside objects, 0.05
  across boundaries, perturbed by one spatially smooth noise field shared by the channels
  (Gaussian-filtered, sigma 1/3/3 voxels, s.d. 0.25) and voxel noise (s.d. 0.01), so the
  watershed makes realistic fragments rather than one per voxel.

    syntk phantom em /tmp/ph33.hdf --shape 48 832 832 --seed 3
    python benchmarks/bench_blockwise_agglomeration.py --phantom /tmp/ph33.hdf \\
        --sizes 48,300,300 48,480,480 48,832,832 [--affinities run/artifacts/.../affinities.zarr]
    # ~100 Mvox, blockwise only: 3 stacked copies of the 33 Mvox phantom
    python benchmarks/bench_blockwise_agglomeration.py --phantom /tmp/ph33.hdf \
        --sizes 48,832,832 --repeat-z 3 --modes blockwise

Measured 2026-12-02 (phantom seed 3, 48 x 832 x 832 at 40 x 4 x 4 nm, crops from its corner; 2
shared cores with other jobs at load 5-9, so wall times are noisy; block 32 x 256 x 256, context
4 x 32 x 32, one worker thread), CREMI at 0.5 and peak RSS, in-memory vs blockwise:

- truth-derived affinities, 4.3 / 11.1 / 33.2 Mvox: CREMI 0.0081 / 0.0224 / 0.0305 vs
  0.0081 / 0.0225 / 0.0306 (+0.8 / +0.6 / +0.2 %); peak RSS 0.64 / 1.51 / 3.30 GB vs
  0.70 / 0.71 / 0.88 GB; wall 6 / 27 / 139 s vs 30 / 56 / 196 s (0.07 / 0.18 / 0.52 M
  fragments, 0.25 / 0.66 / 1.96 M edges). 99.7 Mvox (``--repeat-z 3``), blockwise only: 1.45 GB,
  627 s (1.56 M fragments, 5.98 M edges), CREMI 0.0322.
- the main job's network affinities (``neurons/phantom_affinities``, TTA), 4.3 / 8.3 Mvox: CREMI
  0.4089 / 0.4172 vs 0.4087 / 0.4172 (-0.05 / 0.0 %); peak RSS 1.57 / 2.78 GB vs 0.85 / 0.94 GB.
  33.2 Mvox: in-memory waterz passed 18 GB RSS and was stopped (8.7 M edges, quantile histograms
  of 1 kB each); blockwise 1.84 GB, 354 s (1.85 M fragments), CREMI 0.776.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TypedDict

import numpy as np


class _WaterzSetting(TypedDict):
    scoring: str
    threshold: float


THRESHOLDS = [0.3, 0.4, 0.5, 0.6, 0.7]
MAIN_JOB: _WaterzSetting = {"scoring": "quantile75", "threshold": 0.5}
SMOOTH_SIGMA, SMOOTH_NOISE, VOXEL_NOISE = (1.0, 3.0, 3.0), 0.25, 0.01

CHILD = r"""
import json, sys, time
import numpy as np, zarr
mode, affs_path, out_path, work, scoring, ths, bs, ctx = sys.argv[1:9]
ths = json.loads(ths); bs = tuple(json.loads(bs)); ctx = tuple(json.loads(ctx))
affs = zarr.open_array(affs_path, mode="r")
out = zarr.create_array(store=out_path, shape=(len(ths), *affs.shape[1:]), dtype="uint64",
                        chunks=(1, *bs), fill_value=0, config={"write_empty_chunks": True})
t0 = time.perf_counter()
info = {}
if mode == "in-memory":
    from synapse_toolkit.inference.agglomeration import agglomerate
    a = np.asarray(affs[:3], dtype=np.float32)
    idx = {t: i for i, t in enumerate(sorted(ths))}
    def keep(th, seg):
        out[idx[th]] = seg
    agglomerate(a, ths, scoring=scoring, on_segmentation=keep)
else:
    from synapse_toolkit.inference.agglomeration_blockwise import agglomerate_blockwise
    r = agglomerate_blockwise(affs, out, ths, work, scoring=scoring, block_shape=bs, context=ctx,
                              n_workers=1, executor="threads")
    info = r.to_dict()
info["seconds"] = info.get("seconds", {})
info["wall"] = time.perf_counter() - t0
print("RESULT " + json.dumps(info))
"""


GRAPH_CHILD = r"""
import glob, json, resource, sys, time
from pathlib import Path
from types import SimpleNamespace
import numpy as np
mode, work, scoring, ths, bs, out = sys.argv[1:7]
ths = json.loads(ths); bs = json.loads(bs); work = Path(work)
from synapse_toolkit.inference import agglomeration_blockwise as ab
from synapse_toolkit.inference import regiongraph as rg

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

# load the compiled kernels on a tiny graph first, so their memory is in the baseline
u = np.array([0, 1], np.int32); v = np.array([1, 2], np.int32); b = np.array([200, 10], np.uint8)
rg.merge_regions(3, u, v, ths, scoring=scoring, max_bin=b, aff_sum=b * 1.0,
                 aff_count=np.ones(2, np.int64))
n_blocks = len(glob.glob(str(work / "edges" / "*.npz")))
tasks = [SimpleNamespace(block_id=i) for i in range(n_blocks)]
job = SimpleNamespace(work_dir=str(work), own_fragments=True)
keys = ["u", "v"] + (["aff_sum", "aff_count"] if scoring == "mean" else ["max_bin"])
if mode == "components":
    rg.initial_scores(scoring, max_bin=b, aff_sum=b * 1.0, aff_count=np.ones(2, np.int64))
    p = np.arange(3, dtype=np.int32); rg.union_edges(p, u, v); rg.flatten_roots(p)
    rg.count_internal(p, u, v, np.zeros(3, np.int32))
base = rss()
t0 = time.perf_counter()
info = {}
if mode == "components":
    counts = [json.loads((work / "done" / "fragments" / f"{i}.json").read_text())["info"]
              ["n_fragments"] for i in range(n_blocks)]
    def load(i):
        with np.load(work / "edges" / f"{i}.npz") as z:
            return {k: z[k] for k in keys}
    nodes, labels, info = ab.agglomerate_components(
        load, n_blocks, ths, Path(out).with_suffix(".scratch"), scoring=scoring,
        numbering=ab.BlockIds(counts, int(np.prod(bs))))
    n_edges = info["edges"]
else:
    edges = ab._load_edges(job, tasks, scoring)
    n_edges = int(edges["u"].size)
    nodes, labels = ab.agglomerate_graph(edges, ths, scoring=scoring)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
np.savez(out, nodes=nodes, labels=labels)
print("RESULT " + json.dumps({"mode": mode, "edges": n_edges, "wall_s": round(wall, 1),
      "baseline_mb": round(base / 2**20, 1), "peak_mb": round(peak / 2**20, 1),
      "bytes_per_edge": round((peak - base) / max(n_edges, 1), 1), "graph": info,
      "module": ab.__file__}))
"""


def graph_memory(work: Path, scoring: str, ths: list[float], bs, old_src: Path | None,
                 tmp: Path) -> dict:  # fmt: skip
    """Peak memory of the global step on a kept work dir: whole graph vs by components."""
    runs = [("components", None), ("whole", None)] + ([("whole", old_src)] if old_src else [])
    res: dict = {}
    for mode, src in runs:
        name = f"{mode}-old" if src else mode
        out = tmp / f"{name}.npz"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
        if src:
            env["PYTHONPATH"] = str(src)
        cmd = [sys.executable, "-c", GRAPH_CHILD, mode, str(work.resolve()), scoring,
               json.dumps(ths), json.dumps(list(bs)), str(out.resolve())]  # fmt: skip
        # run from the source tree: `python -c` puts the working directory first on sys.path
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=src)
        if p.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{p.stderr[-3000:]}")
        res[name] = json.loads(next(ln for ln in p.stdout.splitlines()
                                    if ln.startswith("RESULT "))[7:])  # fmt: skip
        print(name, json.dumps(res[name]), flush=True)
    # the same segmentation: components give the labels of the fragments in a component with
    # edges, every other fragment is its own region in the whole-graph result too
    with np.load(tmp / "whole.npz") as w, np.load(tmp / "components.npz") as c:
        wn, wl, cn, cl = w["nodes"], w["labels"], c["nodes"], c["labels"]
    pos = np.searchsorted(wn, cn)
    rest = np.ones(wn.size, bool)
    rest[pos] = False
    alone = all(np.array_equal(wl[t][rest], wn[rest]) for t in range(len(ths)))
    res["equal"] = bool(np.array_equal(wn[pos], cn) and np.array_equal(wl[:, pos], cl) and alone)
    print("whole graph and components equal:", res["equal"], flush=True)
    return res


def noisy_affinities(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Affinities from truth: 1 inside objects and 0.05 across boundaries, both perturbed by one
    smooth noise field shared by the channels (as a network's errors are), plus voxel noise."""
    from scipy import ndimage

    from synapse_toolkit.affinities import labels_to_affinities

    rng = np.random.default_rng(seed)
    base = labels_to_affinities(labels, background_is_boundary=False)
    smooth = ndimage.gaussian_filter(rng.normal(0, 1, labels.shape).astype(np.float32),
                                     sigma=SMOOTH_SIGMA)  # fmt: skip
    smooth *= SMOOTH_NOISE / max(float(smooth.std()), 1e-6)
    affs = base * (1.0 + smooth) + (1 - base) * (0.05 + 0.5 * np.abs(smooth))
    affs += rng.normal(0, VOXEL_NOISE, affs.shape).astype(np.float32)
    return np.clip(affs, 0, 1).astype(np.float32)


def run_child(mode: str, affs: str, out: Path, work: Path, scoring: str, bs, ctx) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", CHILD, mode, affs, str(out), str(work)]
    cmd += [scoring, json.dumps(THRESHOLDS), json.dumps(list(bs)), json.dumps(list(ctx))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{p.stderr[-3000:]}")
    info = json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    info["peak_rss_gb"] = int(rss.group(1)) / 1e6 if rss else float("nan")
    return info


def score(out: Path, truth: np.ndarray, vs) -> list[float]:
    import zarr

    from synapse_toolkit.metrics.cremi_neurons import score_neuron_ids

    arr = zarr.open_array(str(out), mode="r")
    kw = {"border_threshold_nm": 25.0, "voxel_size_nm": vs}
    n = arr.shape[0]
    return [score_neuron_ids(truth, np.asarray(arr[t]), **kw).cremi_score for t in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phantom", type=Path, default=None)
    ap.add_argument("--graph", type=Path, default=None, help="a kept blockwise-waterz work dir")
    ap.add_argument("--old-src", type=Path, default=None, help="another source tree (--graph)")
    ap.add_argument("--threshold", type=float, default=MAIN_JOB["threshold"], help="(--graph)")
    ap.add_argument("--affinities", type=str, default=None, help="zarr (C, z, y, x) of the phantom")
    ap.add_argument("--sizes", nargs="+", default=["48,300,300", "48,480,480", "48,832,832"])
    ap.add_argument("--scoring", default=MAIN_JOB["scoring"])
    ap.add_argument("--block-shape", default="32,256,256")
    ap.add_argument("--context", default="4,32,32")
    ap.add_argument("--modes", nargs="+", default=["in-memory", "blockwise"])
    ap.add_argument("--tmp", type=Path, default=None)
    ap.add_argument(
        "--repeat-z",
        type=int,
        default=1,
        help="stack this many copies of each crop along z (truth-derived only)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = ap.parse_args()

    import h5py
    import zarr

    bs = tuple(int(v) for v in args.block_shape.split(","))
    ctx = tuple(int(v) for v in args.context.split(","))
    tmp = Path(tempfile.mkdtemp(dir=args.tmp))
    if args.graph is not None:
        res = graph_memory(args.graph, args.scoring, [args.threshold], bs, args.old_src, tmp)
        if args.json:
            args.json.write_text(json.dumps(res, indent=1))
        return
    if args.phantom is None:
        ap.error("give --phantom (or --graph)")
    with h5py.File(args.phantom, "r") as f:
        d = f["volumes/labels/neuron_ids"]
        vs = tuple(float(v) for v in d.attrs["resolution"])
        full_shape = d.shape
    if args.repeat_z > 1 and args.affinities:
        ap.error("--repeat-z works with truth-derived affinities only")
    rows = []
    src = "network (--affinities)" if args.affinities else "truth-derived noisy"
    print(f"affinities: {src}; scoring {args.scoring}; block {bs}, context {ctx}; "
          f"thresholds {THRESHOLDS}")  # fmt: skip
    for size in args.sizes:
        shape = tuple(min(int(v), s) for v, s in zip(size.split(","), full_shape, strict=True))
        roi = tuple(slice(0, s) for s in shape)
        with h5py.File(args.phantom, "r") as f:
            truth = f["volumes/labels/neuron_ids"][roi]
        if args.repeat_z > 1:  # stacked copies, ids made distinct: a larger volume, same density
            step = int(truth.max()) + 1
            truth = np.concatenate([truth + np.uint64(k * step) for k in range(args.repeat_z)])
            shape = truth.shape
        affs_path = tmp / f"affs_{'x'.join(map(str, shape))}.zarr"
        if args.affinities:
            a = np.asarray(zarr.open_array(args.affinities, mode="r")[(slice(0, 3), *roi)])
        else:
            a = noisy_affinities(truth)
        chunks = (3, *[min(b, s) for b, s in zip(bs, shape, strict=True)])
        za = zarr.create_array(store=str(affs_path), shape=a.shape, dtype="f4", chunks=chunks)
        za[...] = a
        del a
        mvox = float(np.prod(shape)) / 1e6
        res = {}
        for mode in args.modes:
            out = tmp / f"{mode}_{mvox:.0f}.zarr"
            info = run_child(mode, str(affs_path), out, tmp / f"work_{mvox:.0f}", args.scoring,
                             bs, ctx)  # fmt: skip
            info["cremi"] = score(out, truth, vs)
            res[mode] = info
            print(f"{shape} {mvox:6.1f} Mvox {mode:9s}: wall {info['wall']:7.1f} s, "
                  f"peak RSS {info['peak_rss_gb']:.2f} GB, CREMI per threshold "
                  f"{[round(c, 4) for c in info['cremi']]}"
                  + (f", {info.get('n_fragments')} fragments, {info.get('n_edges')} edges, "
                     f"phases {info['seconds']}" if mode == "blockwise" else ""),
                  flush=True)  # fmt: skip
        if len(res) == 2:
            i = THRESHOLDS.index(MAIN_JOB["threshold"])
            a_, b_ = res["in-memory"]["cremi"][i], res["blockwise"]["cremi"][i]
            print(f"   CREMI at {MAIN_JOB['threshold']}: in-memory {a_:.4f}, blockwise {b_:.4f}, "
                  f"difference {100 * (b_ - a_) / a_:+.1f}%; best over sweep (truth-picked, "
                  f"for context): {min(res['in-memory']['cremi']):.4f} vs "
                  f"{min(res['blockwise']['cremi']):.4f}", flush=True)  # fmt: skip
        rows.append({"shape": shape, "mvox": mvox, **res})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"[{time.perf_counter() - t0:.0f} s]")
