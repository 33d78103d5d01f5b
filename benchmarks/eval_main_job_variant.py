"""The main job against a variant of it (``--set`` overrides) on the same phantoms: neuron CREMI
score, VOI and partner F per seed, mean / pooled.

    # the accuracy cost of agglomerating 8-bit affinities (blockwise-waterz affinity_dtype)
    python benchmarks/eval_main_job_variant.py --seeds 9091 9092 9093 9094 9095 9096 9097 9098 \
        --name uint8 --set stages.segment.options.affinity_dtype=uint8
    # waterz from distance-transform seeded section fragments
    python benchmarks/eval_main_job_variant.py --seeds 9091 ... 9098 \
        --name distance_2d --set stages.segment.options.fragments_from=distance_2d
    # the clusterer straightened on the predicted cleft instead of a segment boundary (against
    # the main job before that change: git show 1d3a32c:examples/cremi.toml > examples/c0.toml)
    python benchmarks/eval_main_job_variant.py --config examples/c0.toml \
        --seeds 1201 ... 1208 9091 ... 9098 \
        --name cluster_on_clefts --set stages.cluster.inputs.clefts=clefts.cleft_probability

Each seed is a default phantom (``syntk phantom em --seed N``, 20 x 256 x 256 at 40 x 4 x 4 nm),
run through ``examples/cremi.toml`` as it is ("main"); the variant resumes a copy of that run, so
both share every stage before the first one the overrides change (e.g. the affinities).
Synapse clustering (ARI of the found synapses' clusters against the phantom's true types) is
reported per seed and as a mean over seeds. Seeds must be development seeds; ``--held-out``
scores a choice already made on held-out seeds instead.
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

from synapse_toolkit.evaluation.phantom_seeds import check_report_seeds, check_selection_seeds

ROOT = Path(__file__).resolve().parents[1]
SYNTK = str(Path(sys.executable).parent / "syntk")


def _scores(run: Path) -> dict[str, float]:
    def values(stage: str) -> dict[str, Any]:
        data = json.loads((run / "artifacts" / stage / "scores.json").read_text())["data"]
        return dict(data["values"])

    neurons, partners = values("score_neurons"), values("score_partners")
    clusters = values("score_clusters") if (run / "artifacts" / "score_clusters").exists() else {}
    return {
        "cluster_ari": clusters.get("ari", float("nan")),
        "cluster_n": clusters.get("n_items", 0),
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
    ap.add_argument("--name", required=True, help="the variant's name (run folders, JSON keys)")
    ap.add_argument("--set", dest="overrides", action="append", required=True,
                    help="a pipeline override of the variant (repeatable)")  # fmt: skip
    ap.add_argument(
        "--held-out",
        action="store_true",
        help="held-out seeds: report a choice made elsewhere (choose nothing here)",
    )
    ap.add_argument(
        "--config",
        type=Path,
        default=ROOT / "examples" / "cremi.toml",
        help="the main job's config (e.g. an earlier version from git)",
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument("--work", type=Path, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    if args.held_out:
        check_report_seeds(args.seeds)
    else:
        check_selection_seeds(args.seeds)  # a variant is compared to choose it
    work = args.work or Path(tempfile.mkdtemp(prefix="syntk-variant-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for seed in args.seeds:
        data = work / f"phantom_{seed}.hdf"
        if not data.exists():
            _run([SYNTK, "phantom", "em", str(data), "--seed", str(seed)])
        base = [SYNTK, "pipeline", "run", str(args.config),
                "--set", f"input.path={data}", "--quiet", "--no-report"]  # fmt: skip
        main, var = work / f"run_{seed}_main", work / f"run_{seed}_{args.name}"
        _run([*base, "--set", f"output.dir={main}", "--resume"])
        if not var.exists():
            shutil.copytree(main, var)
        _run([*base, "--set", f"output.dir={var}", "--resume",
              *[a for o in args.overrides for a in ("--set", o)]])  # fmt: skip
        rows[str(seed)] = {"main": _scores(main), args.name: _scores(var)}
        a, b = rows[str(seed)]["main"], rows[str(seed)][args.name]
        print(f"seed {seed}: CREMI main {a['cremi_score']:.3f} {args.name} {b['cremi_score']:.3f}; "
              f"partner F {a['partner_f']:.3f} / {b['partner_f']:.3f}; "
              f"cluster ARI {a['cluster_ari']:.3f} / {b['cluster_ari']:.3f}",
              flush=True)  # fmt: skip
    summary: dict[str, dict[str, float]] = {}
    for name in ("main", args.name):
        per = [r[name] for r in rows.values()]
        tp, fp, fn = (sum(p[k] for p in per) for k in ("partner_tp", "partner_fp", "partner_fn"))
        summary[name] = {
            "mean_cremi_score": sum(p["cremi_score"] for p in per) / len(per),
            "mean_voi_split": sum(p["voi_split"] for p in per) / len(per),
            "mean_voi_merge": sum(p["voi_merge"] for p in per) / len(per),
            "pooled_partner_f": 2 * tp / max(2 * tp + fp + fn, 1),
            "mean_cluster_ari": sum(p["cluster_ari"] for p in per) / len(per),
        }
        if name != "main":  # on how many seeds the variant clusters better than the main job
            summary[name]["seeds_cluster_ari_higher"] = sum(
                r[name]["cluster_ari"] > r["main"]["cluster_ari"] for r in rows.values()
            )
        print(name, {k: round(v, 4) for k, v in summary[name].items()})
    if args.json:
        report = {"variant": {"name": args.name, "overrides": args.overrides},
                  "seeds": rows, "summary": summary}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
