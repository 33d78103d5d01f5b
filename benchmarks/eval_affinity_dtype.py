"""The accuracy cost of agglomerating 8-bit affinities: the main job with ``blockwise-waterz``'s
``affinity_dtype = "float32"`` (default) and ``"uint8"`` on the same phantoms.

    python benchmarks/eval_affinity_dtype.py --seeds 9091 9092 9093 9094 9095 9096 9097 9098

Each seed is a default phantom (``syntk phantom em --seed N``, 20 x 256 x 256 at 40 x 4 x 4 nm),
run through ``examples/cremi.toml`` (TTA as in the example); the uint8 run resumes a copy of the
float32 run, so both agglomerate the same affinities. The waterz setting (the affinity model's
stored scoring and threshold) is the same for both: it was chosen on float32 affinities. Reports
the neuron CREMI score, VOI and partner F per seed and pooled (mean), and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SYNTK = str(Path(sys.executable).parent / "syntk")


def _scores(run: Path) -> dict[str, float]:
    def values(stage: str) -> dict[str, Any]:
        data = json.loads((run / "artifacts" / stage / "scores.json").read_text())["data"]
        return dict(data["values"])

    neurons, partners = values("score_neurons"), values("score_partners")
    return {
        "cremi_score": neurons["cremi_score"],
        "voi_split": neurons["voi_split"],
        "voi_merge": neurons["voi_merge"],
        "adapted_rand": neurons["adapted_rand"],
        "partner_f": partners["fscore"],
        "partner_tp": partners["tp"],
        "partner_fp": partners["fp"],
        "partner_fn": partners["fn"],
    }


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--work", type=Path, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="syntk-dtype-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for seed in args.seeds:
        data = work / f"phantom_{seed}.hdf"
        if not data.exists():
            _run([SYNTK, "phantom", "em", str(data), "--seed", str(seed)])
        base = [SYNTK, "pipeline", "run", str(ROOT / "examples" / "cremi.toml"),
                "--set", f"input.path={data}", "--quiet", "--no-report"]  # fmt: skip
        f32, u8 = work / f"run_{seed}_float32", work / f"run_{seed}_uint8"
        _run([*base, "--set", f"output.dir={f32}", "--resume"])
        if not u8.exists():
            shutil.copytree(f32, u8)
        _run([*base, "--set", f"output.dir={u8}", "--resume",
              "--set", "stages.segment.options.affinity_dtype=uint8"])  # fmt: skip
        rows[str(seed)] = {"float32": _scores(f32), "uint8": _scores(u8)}
        a, b = rows[str(seed)]["float32"], rows[str(seed)]["uint8"]
        print(f"seed {seed}: CREMI float32 {a['cremi_score']:.3f} uint8 {b['cremi_score']:.3f}; "
              f"partner F {a['partner_f']:.3f} / {b['partner_f']:.3f}", flush=True)  # fmt: skip
    summary: dict[str, dict[str, float]] = {}
    for dtype in ("float32", "uint8"):
        per = [r[dtype] for r in rows.values()]
        tp, fp, fn = (sum(p[k] for p in per) for k in ("partner_tp", "partner_fp", "partner_fn"))
        summary[dtype] = {
            "mean_cremi_score": sum(p["cremi_score"] for p in per) / len(per),
            "mean_voi_split": sum(p["voi_split"] for p in per) / len(per),
            "mean_voi_merge": sum(p["voi_merge"] for p in per) / len(per),
            "pooled_partner_f": 2 * tp / max(2 * tp + fp + fn, 1),
        }
        print(dtype, {k: round(v, 4) for k, v in summary[dtype].items()})
    if args.json:
        args.json.write_text(json.dumps({"seeds": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
