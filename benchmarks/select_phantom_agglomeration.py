"""Choose the phantom affinity model's waterz fragments, scoring and threshold on development
phantoms, and score the choice beside the stored setting on held-out phantoms.

    python benchmarks/select_phantom_agglomeration.py --dev 1203 1204 1205 1206 1207 1208 \\
        --test 3001 3002 3003 3004 3005 3006 --json runs/phantom-agglo.json

Affinities: ``neurons/phantom_affinities`` through the ``affinity-unet`` stage with the 8-mirroring
TTA of ``examples/cremi.toml``. Fragments: waterz's own watershed, or distance-transform seeds
per section (``synapse_toolkit.evaluation.isbi.fragment_grid``); scorings quantile75 / quantile50
/ mean; thresholds 0.1..0.9. Score: the main job's CREMI neuron score (25 nm border mask, as
``cremi-neurons``), mean over volumes. The setting with the lowest mean on ``--dev`` is chosen;
``--test`` volumes are scored only at that choice and at the model's stored setting (their best
threshold appears as a second, labelled figure). Default phantoms, 20 x 256 x 256 at 40 x 4 x 4 nm.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from syntk_neurons.stages import AffinityDetector

from synapse_toolkit.evaluation import fib
from synapse_toolkit.evaluation.isbi import fragment_grid
from synapse_toolkit.evaluation.phantom_seeds import check_report_seeds, check_selection_seeds
from synapse_toolkit.io.cremi import read_cremi
from synapse_toolkit.stages import StageContext
from synapse_toolkit.synapses.train_detectors import phantom_file

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "plugins" / "syntk_neurons" / "models" / "phantom_affinities.onnx"
SCORINGS = ("quantile75", "quantile50", "mean")
THRESHOLDS = [round(0.1 * i, 1) for i in range(1, 10)]
STORED: dict[str, Any] = {
    "fragments": {"method": "affinities"},
    "scoring": "quantile75",
    "threshold": 0.5,
}
VOXEL_SIZE_NM = (40.0, 4.0, 4.0)
SCORE_KEYS = ("cremi_score", "voi_split", "voi_merge", "voi", "arand")
Row = dict[str, Any]


def affinities(seed: int, cache: str) -> tuple[np.ndarray, np.ndarray]:
    data = read_cremi(phantom_file(seed, cache))
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext("affinities", Path(tmp) / "a")
        ctx.scratch_dir.mkdir()
        opts = AffinityDetector.Options(model_path=MODEL, tta=True)
        vol = AffinityDetector(opts, ctx).run({"raw": data.raw})["affinities"]
        affs = np.asarray(vol.read(), dtype=np.float32)
    assert data.neuron_ids is not None
    return affs, np.asarray(data.neuron_ids.read())


def score_grid(affs: np.ndarray, truth: np.ndarray, settings: list[dict[str, Any]]) -> list[Row]:
    """CREMI neuron scores of every fragment setting x scoring x threshold on one volume."""
    score = fib.make_scorer(VOXEL_SIZE_NM, border_threshold_nm=25.0)
    return [{"fragments": fs, **r} for fs in settings
            for r in fib.sweep(affs, truth, score, SCORINGS, THRESHOLDS, fragments=fs)]  # fmt: skip


def _key(r: Row) -> str:
    return json.dumps([r["fragments"], r["scoring"], r["threshold"]], sort_keys=True)


def mean_by_setting(per_volume: list[list[Row]]) -> dict[str, Row]:
    out: dict[str, Row] = {}
    for rows in per_volume:
        for r in rows:
            acc = out.setdefault(_key(r), {**r, **dict.fromkeys(SCORE_KEYS, 0.0), "n": 0})
            for k in SCORE_KEYS:
                acc[k] += r[k]
            acc["n"] += 1
    for acc in out.values():
        for k in SCORE_KEYS:
            acc[k] /= acc["n"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dev", type=int, nargs="+", required=True)
    ap.add_argument("--test", type=int, nargs="+", default=[])
    ap.add_argument("--cache", default=str(ROOT / "runs" / "phantom-cache"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    check_selection_seeds(args.dev)
    check_report_seeds(args.test)
    settings = fragment_grid()
    dev_rows = []
    for seed in args.dev:
        affs, truth = affinities(seed, args.cache)
        dev_rows.append(score_grid(affs, truth, settings))
        print(f"dev seed {seed}: {len(dev_rows[-1])} settings scored", flush=True)
    dev = mean_by_setting(dev_rows)
    choice = min(dev.values(), key=lambda r: r["cremi_score"])
    stored = dev[_key(STORED)]
    print(f"dev: chosen {choice['fragments']} {choice['scoring']} @ {choice['threshold']} -> "
          f"{choice['cremi_score']:.3f}; stored -> {stored['cremi_score']:.3f}")  # fmt: skip
    best_per_frag: dict[str, Row] = {}
    for r in dev.values():
        k = json.dumps(r["fragments"], sort_keys=True)
        if k not in best_per_frag or r["cremi_score"] < best_per_frag[k]["cremi_score"]:
            best_per_frag[k] = r
    for r in best_per_frag.values():
        print(
            f"  {r['fragments']}: best {r['scoring']} @ {r['threshold']} -> "
            f"{r['cremi_score']:.3f} (split {r['voi_split']:.2f}, merge {r['voi_merge']:.2f})"
        )
    report: dict[str, Any] = {"dev_seeds": args.dev, "choice": choice, "stored_on_dev": stored,
                              "dev_best_per_fragments": list(best_per_frag.values())}  # fmt: skip
    if args.test:
        test_rows = []
        for seed in args.test:
            affs, truth = affinities(seed, args.cache)
            test_rows.append(score_grid(affs, truth, [choice["fragments"], STORED["fragments"]]))
        test = mean_by_setting(test_rows)
        at_choice, at_stored = test[_key(choice)], test[_key(STORED)]
        best = min(test.values(), key=lambda r: r["cremi_score"])
        for name, r in (("chosen on dev", at_choice), ("stored", at_stored),
                        ("best on test (optimistic)", best)):  # fmt: skip
            print(f"test {name}: {r['fragments']} {r['scoring']} @ {r['threshold']} -> CREMI "
                  f"{r['cremi_score']:.3f} (split {r['voi_split']:.3f}, merge "
                  f"{r['voi_merge']:.3f}, ARAND {r['arand']:.3f})")  # fmt: skip
        report.update({"test_seeds": args.test, "test_at_choice": at_choice,
                       "test_at_stored": at_stored, "test_best_optimistic": best})  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
