"""How many frames the calcium pipeline needs: the CNN ROI detector and the local-maxima bar on
mean projections of the first N frames, on the ROI trainer's validation phantoms.

Each seed of ``--seeds`` (default: the trainer's validation phantoms 5101-5103; 192 x 192 px,
90 cells, 600 frames) is written with ``syntk phantom calcium`` and run through
``examples/neurofinder.toml`` with ``stages.load.options.max_frames = N``; the neurofinder
combined score of the CNN and of the bar are printed per N (mean over the seeds). The calcium
loader's warning (``syntk_calcium.stages.MIN_FRAMES``) is the smallest N at which the CNN's mean
reaches both the bar's and 90 % of its own score at 600 frames.

    python benchmarks/calcium_frames.py --json benchmarks/results/calcium_frames.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYNTK = [sys.executable, "-m", "synapse_toolkit.cli"]


def combined(run_json: str) -> tuple[float, float]:
    """The CNN's and the bar's neurofinder combined score from ``syntk pipeline run --json``."""
    scores = json.loads(run_json)["scores"]
    return (float(scores["score.scores"]["values"]["combined"]),
            float(scores["score_baseline.scores"]["values"]["combined"]))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[5101, 5102, 5103])
    ap.add_argument("--frames", type=int, nargs="+", default=[3, 5, 10, 20, 50, 100, 600])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows: dict[int, list[tuple[float, float]]] = {n: [] for n in args.frames}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            movie = Path(tmp) / f"phantom_{seed}"
            subprocess.run([*SYNTK, "phantom", "calcium", str(movie), "--frames", "600",
                            "--shape", "192", "192", "--cells", "90", "--seed", str(seed)],
                           check=True, capture_output=True)  # fmt: skip
            for n in args.frames:
                res = subprocess.run(
                    [*SYNTK, "pipeline", "run", str(ROOT / "examples" / "neurofinder.toml"),
                     "--set", f"input.path={movie}", "--set", f"stages.load.options.max_frames={n}",
                     "--set", f"output.dir={Path(tmp) / f'run_{seed}_{n}'}", "--json",
                     "--no-report"],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                rows[n].append(combined(res.stdout))
    out = {"seeds": args.seeds, "frames": {}}
    for n, r in rows.items():
        cnn, bar = (sum(x[i] for x in r) / len(r) for i in (0, 1))
        per_seed = [[round(a, 4), round(b, 4)] for a, b in r]
        out["frames"][str(n)] = {"cnn": round(cnn, 4), "bar": round(bar, 4), "per_seed": per_seed}
        print(f"{n:5d} frames: CNN {cnn:.3f}  local maxima {bar:.3f}  per seed "
              + " ".join(f"{a:.3f}/{b:.3f}" for a, b in r))  # fmt: skip
    full = out["frames"][str(max(args.frames))]["cnn"]
    enough = [
        n
        for n in sorted(args.frames)
        if out["frames"][str(n)]["cnn"] >= max(out["frames"][str(n)]["bar"], 0.9 * full)
    ]
    out["min_frames"] = enough[0] if enough else None
    print(f"smallest N with the CNN >= the bar and >= 90 % of its {max(args.frames)}-frame "
          f"score: {out['min_frames']}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
