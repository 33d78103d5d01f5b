"""The main job at three volume sizes: peak memory (whole process tree), wall time per Mvox per
stage, 1 vs 2 block workers.

    python benchmarks/bench_scale.py                                  # 8, 50 and 195 Mvox, 1 worker
    python benchmarks/bench_scale.py --sizes 8 --workers 1 2          # 1 vs 2 block workers
    python benchmarks/bench_scale.py --sizes 195 --set stages.affinities.options.tta=false
    python benchmarks/bench_scale.py --sizes 195 --keep --resume    # rerun changed stages only

Each size is a phantom made by ``syntk phantom em`` (seed 1; 195 Mvox is a CREMI sample's
125 x 1250 x 1250), run through ``syntk pipeline run examples/cremi.toml`` with its defaults (plus
any ``--set``). While it runs, the resident memory of the pipeline process and all its children
(block workers) is sampled every 0.2 s; each sample is attributed to the stage then running (the
first stage not yet in the manifest). Results are written to ``--out`` after every run, so a
killed benchmark keeps what it measured. Stage timings, the main process's own per-stage peak and
the scores come from the run's manifest. ``--resume`` reruns a kept run directory with
``syntk pipeline run --resume``: stages whose fingerprint is unchanged are skipped and keep the
seconds and tree peak measured when they ran (``"resumed": true``, taken from ``--out``); the
first stage that runs also gets the samples taken while the skipped stages' artifacts were checked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
SYNTK = str(Path(sys.executable).parent / "syntk")
SHAPES = {1: (16, 256, 256), 8: (32, 500, 500), 50: (125, 632, 632), 195: (125, 1250, 1250)}


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


def _done_stages(manifest: Path) -> list[str]:
    try:
        return list(json.loads(manifest.read_text()).get("stages", {}))
    except (OSError, ValueError):
        return []


def run_pipeline(
    data: Path,
    run_dir: Path,
    workers: int,
    extra: list[str],
    log: Path,
    partial: Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    manifest = run_dir / "manifest.json"
    before = (
        json.loads(manifest.read_text()).get("stages", {}) if resume and manifest.exists() else {}
    )
    cmd = [
        SYNTK, "pipeline", "run",
        str(ROOT / "examples" / "cremi.toml"), "--set", f"input.path={data}",
        "--set", f"output.dir={run_dir}", "--set", f"execution.n_workers={workers}",
        "--quiet", "--no-report", *[a for s in extra for a in ("--set", s)],
        *(["--resume"] if resume else []),
    ]  # fmt: skip
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        ps = psutil.Process(proc.pid)
        peak = 0
        by_stage: dict[int, int] = {}
        last = time.perf_counter()
        while proc.poll() is None:
            rss = _tree_rss(ps)
            peak = max(peak, rss)
            done = _done_stages(manifest)
            by_stage[len(done)] = max(by_stage.get(len(done), 0), rss)
            if partial is not None and time.perf_counter() - last > 10:  # survives a kill
                last = time.perf_counter()
                partial.write_text(json.dumps({
                    "elapsed_s": round(last - t0, 1), "done_stages": done,
                    "tree_peak_rss_mb": round(peak / 2**20, 1),
                    "tree_peak_rss_mb_by_stage": {
                        (done[i] if i < len(done) else "running"): round(v / 2**20, 1)
                        for i, v in sorted(by_stage.items())
                    },
                }, indent=1))  # fmt: skip
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    doc = json.loads(manifest.read_text()) if manifest.exists() else {}
    names = list(doc.get("stages", {}))
    stages = {}
    for i, name in enumerate(names):
        st = doc["stages"][name]
        stages[name] = {
            "seconds": st.get("seconds"),
            "main_process_peak_rss_mb": st.get("peak_rss_mb"),
            "tree_peak_rss_mb": round(by_stage.get(i, 0) / 2**20, 1),
        }
        if before.get(name) == st:  # skipped by --resume: measured in the earlier run
            stages[name]["resumed"] = True
    # a resumed run writes its manifest (skipped stages included) only when the first stage
    # that runs ends: the samples taken before belong to that stage
    first = next((n for n, st in stages.items() if not st.get("resumed")), None)
    if before and first is not None and names.index(first) > 0:
        tree0 = max(by_stage.get(0, 0), by_stage.get(names.index(first), 0))
        stages[first]["tree_peak_rss_mb"] = round(tree0 / 2**20, 1)
    return {
        "returncode": proc.returncode,
        "wall_s": round(wall, 1),
        "tree_peak_rss_mb": round(peak / 2**20, 1),
        "status": doc.get("status"),
        "stages": stages,
        "blockwise": {n: s.get("notes", {}).get("blockwise") for n, s in
                      doc.get("stages", {}).items() if s.get("notes", {}).get("blockwise")},
        "scores": _scores(run_dir),
    }  # fmt: skip


def _scores(run_dir: Path) -> dict[str, Any]:
    out = {}
    for name, key in (("score_neurons", "cremi_score"), ("score_clefts", "cremi_score"),
                      ("score_partners", "fscore")):  # fmt: skip
        path = run_dir / "artifacts" / name / "scores.json"
        if path.exists():
            out[name] = json.loads(path.read_text())["data"]["values"].get(key)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 50, 195], choices=sorted(SHAPES))
    ap.add_argument("--workers", type=int, nargs="+", default=[1])
    ap.add_argument("--work", type=Path, default=Path("runs/bench_scale"))
    ap.add_argument("--out", type=Path, default=Path("runs/bench_scale/results.json"))
    ap.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        help="extra pipeline override, e.g. stages.affinities.options.tta=false",
    )
    ap.add_argument("--keep", action="store_true", help="keep run directories")
    ap.add_argument(
        "--resume", action="store_true", help="rerun kept run directories, changed stages only"
    )
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.setdefault("cpu", {"cores": os.cpu_count(),
                               "omp_num_threads": os.environ.get("OMP_NUM_THREADS")})  # fmt: skip
    for mvox in args.sizes:
        shape = SHAPES[mvox]
        data = args.work / f"phantom_{'x'.join(map(str, shape))}.hdf"
        key = f"{mvox}"
        entry = results.setdefault(key, {"shape": shape, "mvox": round(float(
            shape[0] * shape[1] * shape[2]) / 1e6, 2)})  # fmt: skip
        if not data.exists():
            t0 = time.perf_counter()
            subprocess.run([SYNTK, "phantom", "em",
                            str(data), "--shape", *map(str, shape), "--seed", "1"],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)  # fmt: skip
            entry["phantom_s"] = round(time.perf_counter() - t0, 1)
        for w in args.workers:
            run_dir = args.work / f"run_{mvox}_{w}w"
            log = args.work / f"run_{mvox}_{w}w.log"
            partial = args.out.with_name(f"{args.out.stem}.{mvox}_{w}w.partial.json")
            res = run_pipeline(data.resolve(), run_dir.resolve(), w, args.extra, log, partial,
                               resume=args.resume)  # fmt: skip
            res["overrides"] = args.extra
            earlier = entry.get(f"{w}_workers", {})
            for name, st in res["stages"].items():
                old = earlier.get("stages", {}).get(name)
                if st.get("resumed") and old:
                    st["tree_peak_rss_mb"] = old.get("tree_peak_rss_mb")
            if args.resume:
                ran = [v["tree_peak_rss_mb"] or 0 for v in res["stages"].values()]
                res["tree_peak_rss_mb_this_run"] = res["tree_peak_rss_mb"]
                res["tree_peak_rss_mb"] = max([res["tree_peak_rss_mb"], *ran])
                res["resumed_from_wall_s"] = earlier.get("wall_s")
            for st in res["stages"].values():
                if st["seconds"] is not None:
                    st["s_per_mvox"] = round(st["seconds"] / entry["mvox"], 3)
            entry[f"{w}_workers"] = res
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2))
            print(json.dumps({"mvox": mvox, "workers": w, "wall_s": res["wall_s"],
                              "tree_peak_rss_mb": res["tree_peak_rss_mb"],
                              "rc": res["returncode"]}), flush=True)  # fmt: skip
            if not args.keep:
                import shutil

                shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
