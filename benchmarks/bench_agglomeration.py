"""Agglomeration overhead: the `waterz` stage plugin vs raw `waterz.agglomerate`.

Both produce one segmentation per threshold from the same affinities: raw waterz (each yielded
array copied, since waterz reuses it; a "bare" column drops them instead) vs the plugin stage
(affinities read from a zarr volume, every segmentation written to a zarr artifact as waterz yields
it, the selected one copied from the sweep's encoded chunks). Target: <= 1.1x.
For context, a "script" column does what a hand-written lab script does with the same store:
read the affinities from zarr, run waterz, write each segmentation to zarr as it comes.

Measured 2026-11-30 on 2 idle cores, best of 5 rounds, 1/2/4/8/16/32 Mvox:
overhead 1.27/1.22/1.14/1.17/1.17/0.83x vs raw waterz (median per round 1.20/1.23/1.17/1.16/1.17/
0.86x), 1.22/1.20/1.18/1.19/1.18/1.22x vs bare waterz, 0.67-0.97x vs the script.
(2026-11-29, before writing synchronously without copies, skipping zarr's empty-chunk test and
copying the selected segmentation's chunks: 1.64/1.42/1.45/1.14-1.26/1.28/1.11x.)
What is left is the artifact I/O, ~20% of waterz's time at every size: decoding the float32
affinities (~6%) and encoding T uint64 segmentations (~14%; zarr writes them at the speed of a
bare numcodecs Zstd loop). It cannot hide behind waterz: the GIL probe shows waterz yields all
thresholds' segmentations at the end of its run (first and last yield 0.01-0.06 s apart), and
while it runs a Python thread gets 0.0-0.5% of its idle rate (waterz holds the GIL).
Affinities: the gala FIB-SEM test volume's boundary map (1 - p1) tiled to the requested size, so
fragment statistics stay realistic.

    python benchmarks/bench_agglomeration.py [--repeat-x 1 2 4 8] [--thresholds 0.3 0.5 0.7]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import zarr
from syntk_neurons.stages import WaterzAgglomerator

from synapse_toolkit.data import Volume
from synapse_toolkit.inference.agglomeration import scoring_function, stdout_to_devnull
from synapse_toolkit.stages import StageContext

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/em/gala-fib-medulla/test-p1.lzf.h5"


def raw_waterz(
    affs: np.ndarray, thresholds: list[float], scoring: str, keep: bool = True
) -> list[np.ndarray]:
    """Every threshold's segmentation, copied (waterz reuses its buffer); ``keep=False`` drops
    them instead: waterz's bare compute time."""
    import waterz

    out = []
    with stdout_to_devnull():
        for seg in waterz.agglomerate(
            affs, thresholds, scoring_function=scoring_function(scoring), discretize_queue=256
        ):
            if keep:
                # without gt / return_merge_history / return_region_graph waterz yields bare arrays
                assert isinstance(seg, np.ndarray)
                out.append(seg.copy())
    return out


def script_waterz(zaffs: zarr.Array, out_dir: Path, thresholds: list[float], scoring: str) -> None:
    import waterz

    affs = np.asarray(zaffs[...], dtype=np.float32)
    shape = (len(thresholds), *affs.shape[1:])
    segs = zarr.create_array(
        store=str(out_dir / "segs.zarr"), shape=shape, dtype="uint64", chunks=(1, *shape[1:])
    )
    with stdout_to_devnull():
        gen = waterz.agglomerate(
            affs, thresholds, scoring_function=scoring_function(scoring), discretize_queue=256
        )
        for i, seg in enumerate(gen):
            segs[i] = seg


def gil_probe(affs: np.ndarray, thresholds: list[float], scoring: str) -> dict[str, float]:
    """How much a Python thread can run while waterz agglomerates, and when waterz yields.

    A thread counts loop turns; its rate during ``waterz.agglomerate`` over its idle rate is the
    share of time waterz lets other Python code (e.g. zarr's write machinery) run.
    """
    import threading

    import waterz

    turns, stop = [0], threading.Event()

    def spin() -> None:
        while not stop.is_set():
            turns[0] += 1
            time.sleep(0)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    time.sleep(0.2)
    t, idle = time.perf_counter(), turns[0]
    time.sleep(0.2)
    idle_rate = (turns[0] - idle) / (time.perf_counter() - t)
    yields = []
    start_turns, t = turns[0], time.perf_counter()
    with stdout_to_devnull():
        for _ in waterz.agglomerate(
            affs, thresholds, scoring_function=scoring_function(scoring), discretize_queue=256
        ):
            yields.append(time.perf_counter() - t)
    busy_rate = (turns[0] - start_turns) / yields[-1]
    stop.set()
    thread.join()
    return {"first_yield_s": yields[0], "last_yield_s": yields[-1],
            "python_share": busy_rate / idle_rate}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat-x", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--scoring", default="quantile50")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with h5py.File(DATA) as f:
        p1 = np.asarray(f["stack"][...], dtype=np.float32)
    print(f"waterz {args.scoring}, thresholds {args.thresholds}; best of {args.rounds} rounds")
    for rep in args.repeat_x:
        values = np.concatenate([p1 if i % 2 == 0 else p1[:, :, ::-1] for i in range(rep)], axis=2)
        affs = np.ascontiguousarray(np.stack([1.0 - values] * 3), dtype=np.float32)
        t_raw, t_bare, t_plugin, t_script = [], [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            zaffs = zarr.create_array(
                store=f"{tmp}/affs.zarr",
                shape=affs.shape,
                dtype="float32",
                chunks=(3, 25, 100, 200),
            )
            zaffs[...] = affs
            for r in range(args.rounds):
                t = time.perf_counter()
                segs = raw_waterz(affs, args.thresholds, args.scoring)
                t_raw.append(time.perf_counter() - t)
                del segs
                t = time.perf_counter()
                raw_waterz(affs, args.thresholds, args.scoring, keep=False)
                t_bare.append(time.perf_counter() - t)
                scratch = Path(tmp) / f"s{r}"
                scratch.mkdir()
                stage = WaterzAgglomerator(
                    WaterzAgglomerator.Options(thresholds=args.thresholds, scoring=args.scoring),
                    StageContext("agglomerate", scratch),
                )
                t = time.perf_counter()
                stage.run({"affinities": Volume(zaffs, (10.0, 10.0, 10.0))})
                t_plugin.append(time.perf_counter() - t)
                script_dir = Path(tmp) / f"script{r}"
                script_dir.mkdir()
                t = time.perf_counter()
                script_waterz(zaffs, script_dir, args.thresholds, args.scoring)
                t_script.append(time.perf_counter() - t)
            probe = gil_probe(affs, args.thresholds, args.scoring)
        a, a0, b, c = min(t_raw), min(t_bare), min(t_plugin), min(t_script)
        per_round = np.median(np.divide(t_plugin, t_raw))
        mvox = values.size / 1e6
        print(
            f"  {values.shape!s:16s} {mvox:5.1f} Mvox: raw waterz {a:6.2f} s "
            f"({mvox / a:5.2f} Mvox/s), plugin {b:6.2f} s, overhead {b / a:.3f}x "
            f"(median per round {per_round:.3f}x; target <= 1.1x); "
            f"vs bare waterz ({a0:6.2f} s, results dropped) {b / a0:.3f}x; "
            f"script with zarr I/O {c:6.2f} s (plugin/script {b / c:.3f}x)"
        )
        print(
            f"  {'':16s} waterz yields at {probe['first_yield_s']:.2f}-"
            f"{probe['last_yield_s']:.2f} s; a Python thread runs at "
            f"{100 * probe['python_share']:.1f}% of its idle rate meanwhile"
        )


if __name__ == "__main__":
    main()
