"""Memory and time of the CREMI trainers (clefts, polarity, affinities) on phantom stand-ins.

Runs ``examples/train/cremi_<kind>.toml`` as shipped (its crop shape, batch and network) with the
registry's samples A, B and C replaced by phantom volumes of ``--shape`` (z, y, x voxels; the
validation region becomes the last fifth of C's sections), for ``--iterations`` iterations, in a
fresh process per measurement so the peak resident memory is that run's alone::

    python benchmarks/bench_detector_training.py --kind clefts polarity affinities \\
        --json benchmarks/results/bench_detector_training.json

Reports the peak RSS above the interpreter's baseline (torch imported) per Mvox of training
volume (A and B; the affinity trainer without its validation region, see :func:`measure`), and
the wall time per iteration (from the trainer's own ``metrics.jsonl``,
the first iteration excluded) and per sampled crop.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _peak_mb() -> float:
    """This process's peak resident memory (``VmHWM``: reset by exec, unlike ``ru_maxrss``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _stand_ins(shape: tuple[int, int, int], folder: Path) -> dict[str, Path]:
    from synapse_toolkit.phantom.em import EMPhantom
    from synapse_toolkit.phantom.store import write_phantom

    files = {}
    for k, name in enumerate("ABC"):
        path = folder / f"sample_{name}-{'x'.join(map(str, shape))}.hdf"
        if not path.exists():
            write_phantom(EMPhantom(seed=41 + k, shape=shape), path)
        files[f"registry:cremi/sample_{name}"] = path
    return files


def _config_text(kind: str, shape: tuple[int, int, int], files: dict[str, Path]) -> str:
    text = (ROOT / "examples" / "train" / f"cremi_{kind}.toml").read_text()
    for name, path in files.items():
        text = text.replace(f'"{name}"', f'"{path}"')
    z, y, x = shape
    roi = f"roi = [[{z * 4 // 5}, {z}], [0, {y}], [0, {x}]]"
    for shipped in ("[[100, 125], [0, 1250], [0, 1250]]", "[[100, 125], [0, 625], [0, 625]]"):
        text = text.replace(f"roi = {shipped}", roi)
    if roi not in text:
        raise SystemExit(f"cremi_{kind}.toml: no validation roi this benchmark knows")
    return text


def measure(
    kind: str, shape: tuple[int, int, int], iterations: int, folder: Path
) -> dict[str, Any]:
    """One measurement in this process (call through :func:`main`, one process each)."""
    import torch  # noqa: F401  (the baseline includes torch)

    from synapse_toolkit.nn.training import CropSampler, load_config, train
    from synapse_toolkit.synapses.train_detectors import (
        SynapseCropSampler,
        load_detector_config,
        train_detector,
    )

    files = _stand_ins(shape, folder)  # made beforehand by a process of their own
    base_mb = _peak_mb()
    config = folder / f"{kind}.toml"
    config.write_text(_config_text(kind, shape, files))
    out_dir = folder / f"run-{kind}-{time.time_ns()}"
    update = {"iterations": iterations, "validate_every": 10**9, "checkpoint_every": 10**9,
              "log_every": 1, "out_dir": str(out_dir)}  # fmt: skip
    crop_times: list[float] = []
    sampler_class: Any = CropSampler if kind == "affinities" else SynapseCropSampler
    original = sampler_class.sample

    def timed(self: Any) -> Any:
        t0 = time.perf_counter()
        out = original(self)
        crop_times.append(time.perf_counter() - t0)
        return out

    sampler_class.sample = timed
    if kind == "affinities":
        # without its validation volume: the trainer validates at its last iteration, and waterz
        # on a few-iteration model's near-constant affinities (millions of fragments) would be
        # what this measured
        acfg = load_config(config)
        training = acfg.training.model_copy(update=update)
        data = acfg.data.model_copy(update={"validation": []})
        train(acfg.model_copy(update={"training": training, "data": data}), log=lambda _: None)
    else:
        dcfg = load_detector_config(config)
        dtraining = dcfg.training.model_copy(update={**update, "checkpoint_every": 0})
        train_detector(dcfg.model_copy(update={"training": dtraining}), log=lambda _: None)
    peak_mb = _peak_mb()
    lines = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    times = [x["time_s"] for x in lines if "time_s" in x and "loss" in x]
    mvox = 2 * shape[0] * shape[1] * shape[2] / 1e6
    return {
        "kind": kind, "shape": list(shape), "training_mvox": mvox, "iterations": iterations,
        "baseline_mb": round(base_mb), "peak_mb": round(peak_mb),
        "mb_per_training_mvox": round((peak_mb - base_mb) / mvox, 1),
        "s_per_iteration": round((times[-1] - times[0]) / max(len(times) - 1, 1), 3),
        "ms_per_crop": round(1000 * sum(crop_times[1:]) / max(len(crop_times) - 1, 1), 1),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=("clefts", "polarity", "affinities"), nargs="+",
                    default=["clefts"])  # fmt: skip
    ap.add_argument("--shape", type=int, nargs=3, action="append", metavar=("Z", "Y", "X"),
                    help="stand-in shape, repeatable (default 30 320 320, 30 640 640)")  # fmt: skip
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--folder", default=str(ROOT / "runs" / "bench-detector-training"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()
    shapes = [tuple(s) for s in (args.shape or [[30, 320, 320], [30, 640, 640]])]
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    if args.prepare:
        for z, y, x in shapes:
            _stand_ins((z, y, x), folder)
        return
    if args.one:
        z, y, x = shapes[0]
        print(json.dumps(measure(args.kind[0], (z, y, x), args.iterations, folder)))
        return
    sizes = [str(v) for shape in shapes for v in ("--shape", *shape)]
    subprocess.run([sys.executable, __file__, "--prepare", *sizes, "--folder", str(folder)],
                   check=True)  # fmt: skip
    rows = []
    for kind in args.kind:
        for shape in shapes:
            cmd = [sys.executable, __file__, "--one", "--kind", kind, "--shape", *map(str, shape),
                   "--iterations", str(args.iterations), "--folder", str(folder)]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
