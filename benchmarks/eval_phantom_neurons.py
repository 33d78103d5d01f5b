"""Neuron segmentation of the anisotropic phantom model on phantom seeds never used in training.

For each seed (frozen phantom defaults, 20 x 256 x 256 at 40 x 4 x 4 nm): affinity U-Net (ONNX,
through the `affinity-unet` stage) + `waterz` over a threshold sweep, scored against the ground
truth with VOI / adapted Rand / CREMI score (best threshold per volume, and the threshold that is
best on average). Compare models by passing several ``--models``.

    python benchmarks/eval_phantom_neurons.py --seeds 3001 3002 3003 --models A.onnx B.onnx [--tta]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from syntk_neurons.stages import AffinityDetector, WaterzAgglomerator

from synapse_toolkit.evaluation.phantom_seeds import check_report_seeds
from synapse_toolkit.io.cremi import read_cremi
from synapse_toolkit.stages import StageContext
from synapse_toolkit.synapses.train_detectors import phantom_file

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "plugins" / "syntk_neurons" / "models" / "phantom_affinities.onnx"


def sweep(
    model: Path, seed: int, cache: str, thresholds: list[float], scoring: str, tta: bool = False
) -> list[dict]:
    data = read_cremi(phantom_file(seed, cache))
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext("affinities", Path(tmp) / "a")
        ctx.scratch_dir.mkdir()
        affs = AffinityDetector(AffinityDetector.Options(model_path=model, tta=tta), ctx).run(
            {"raw": data.raw}
        )["affinities"]
        ctx2 = StageContext("waterz", Path(tmp) / "w")
        ctx2.scratch_dir.mkdir()
        opts = WaterzAgglomerator.Options(thresholds=thresholds, scoring=scoring)
        out = WaterzAgglomerator(opts, ctx2).run({"affinities": affs, "truth": data.neuron_ids})
        return out["scores"].details["sweep"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[3001, 3002, 3003])
    ap.add_argument("--models", nargs="+", default=[str(SHIPPED)])
    ap.add_argument("--cache", default=str(ROOT / "runs" / "phantom-cache"))
    ap.add_argument("--scoring", default="quantile75")
    ap.add_argument("--thresholds", type=float, nargs="+",
                    default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])  # fmt: skip
    ap.add_argument("--tta", action="store_true", help="average the 8 mirrorings")
    ap.add_argument("--dev", action="store_true",
                    help="allow development seeds (selection, not held-out)")  # fmt: skip
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    check_report_seeds(args.seeds, allow_development=args.dev)
    results = {}
    for model in args.models:
        per_seed = {s: sweep(Path(model), s, args.cache, args.thresholds, args.scoring, args.tta)
                    for s in args.seeds}  # fmt: skip
        best = [min(rows, key=lambda r: r["cremi_score"]) for rows in per_seed.values()]
        mean_by_th = {
            th: {k: float(np.mean([next(r[k] for r in rows if r["threshold"] == th)
                                   for rows in per_seed.values()]))
                 for k in ("voi_split", "voi_merge", "arand", "cremi_score")}
            for th in args.thresholds
        }  # fmt: skip
        th_star = min(mean_by_th, key=lambda t: mean_by_th[t]["cremi_score"])
        m = mean_by_th[th_star]
        print(f"{Path(model).name}: best common threshold {th_star} -> VOI split "
              f"{m['voi_split']:.3f} merge {m['voi_merge']:.3f} ARAND {m['arand']:.3f} "
              f"CREMI {m['cremi_score']:.3f}; per-volume best CREMI "
              f"{[round(b['cremi_score'], 3) for b in best]}")  # fmt: skip
        results[model] = {"threshold": th_star, "mean": m, "per_seed_best": best}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
