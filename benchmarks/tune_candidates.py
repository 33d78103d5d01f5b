"""Tune the EMSynConn candidate and pruning settings on phantom *tuning* seeds.

Tuning seeds (default 1203-1208) must be development seeds
(:mod:`synapse_toolkit.evaluation.phantom_seeds`): disjoint from the seeds the networks are trained
on and from the held-out seeds, so the settings chosen here can be reported on held-out seeds
without selection bias.

For every combination of proximity threshold, minimum component size and maximum gap it builds
the candidates once with the U-Net proximity and the ground-truth segmentation, scores them with
the pruning CNN once, then sweeps the pruning threshold. It also reports the recall of the
candidates themselves (no pruning), i.e. how many true partners the candidate stage can reach.

Usage::

    python benchmarks/tune_candidates.py [--seeds 1203 1204 ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from synapse_toolkit.data import PartnerTable
from synapse_toolkit.errors import DataError
from synapse_toolkit.evaluation.phantom_seeds import check_selection_seeds
from synapse_toolkit.inference.onnx_model import OnnxModel
from synapse_toolkit.io.cremi import read_cremi
from synapse_toolkit.synapses.candidates import CandidateSettings, find_candidates
from synapse_toolkit.synapses.partners import deduplicate, evaluate_partners
from synapse_toolkit.synapses.pruning import PrunerONNX, candidate_patches
from synapse_toolkit.synapses.targets import Grid
from synapse_toolkit.synapses.train_detectors import phantom_file
from synapse_toolkit.synapses.train_pruner import SegmentationSource, predicted_segmentation

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "plugins" / "syntk_synapses" / "models"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(1203, 1209)))
    ap.add_argument("--cache", default=str(ROOT / "runs" / "phantom-cache"))
    ap.add_argument("--polarity", default=str(MODELS / "polarity.onnx"))
    ap.add_argument("--pruner", default=str(MODELS / "pruner.onnx"))
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.2, 0.3, 0.4])
    ap.add_argument("--min-voxels", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--max-gaps", type=float, nargs="+", default=[60.0, 100.0])
    ap.add_argument("--prune-thresholds", type=float, nargs="+",
                    default=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7])  # fmt: skip
    ap.add_argument("--neuron-model", default=None,
                    help="candidates on this affinity model + waterz (quantile75 at 0.5) "
                    "instead of the ground-truth segmentation")  # fmt: skip
    ap.add_argument("--neuron-tta", action="store_true", help="with 8-mirroring TTA affinities")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    check_selection_seeds(args.seeds)
    t0 = time.time()
    pol = OnnxModel(args.polarity)
    pruner = PrunerONNX(args.pruner)
    volumes = []
    for seed in args.seeds:
        path = phantom_file(seed, args.cache)
        data = read_cremi(path)
        if data.raw is None or data.neuron_ids is None or data.annotations is None:
            raise DataError(f"{path}: candidate tuning needs raw, neuron_ids and annotations")
        raw = data.raw.read()
        seg = data.neuron_ids.read()
        if args.neuron_model:
            source = SegmentationSource(args.neuron_model, tta=args.neuron_tta)
            seg = predicted_segmentation(raw, source)
        parts = (data.raw, data.neuron_ids, data.annotations)
        volumes.append((parts, raw, pol.predict(raw)[0], seg))
    print(f"proximity predicted for {len(volumes)} volumes ({time.time() - t0:.0f}s)", flush=True)
    counts: dict[tuple, np.ndarray] = {}
    for thr, mv, gap in itertools.product(args.thresholds, args.min_voxels, args.max_gaps):
        cs = CandidateSettings(threshold=thr, min_voxels=mv, max_gap_nm=gap)
        for (raw_volume, truth_ids, truth), raw, prox, seg in volumes:
            grid = Grid.of(raw_volume)
            cands = find_candidates(prox, seg, grid, cs)
            tables: dict[float | None, PartnerTable | None]
            if len(cands) == 0:
                tables = {None: None, **{pt: None for pt in args.prune_thresholds}}
            else:
                patches = candidate_patches(cands, raw, prox, seg, pruner.patch_settings)
                scores = pruner.scores(patches)
                table = cands.to_table(scores)
                tables = {None: deduplicate(cands.to_table())}
                for pt in args.prune_thresholds:
                    tables[pt] = deduplicate(table.select(scores > pt))
            for pt, tab in tables.items():
                key = (thr, mv, gap, pt)
                if tab is None:
                    n_true = len(truth.partners)
                    v: Mapping[str, float] = {"tp": 0, "fp": 0, "fn": n_true}
                else:
                    v = evaluate_partners(tab, truth, truth_ids).values
                counts[key] = counts.get(key, np.zeros(3)) + np.array([v["tp"], v["fp"], v["fn"]])
        print(f"threshold {thr} min_voxels {mv} max_gap {gap} ({time.time() - t0:.0f}s)",
              flush=True)  # fmt: skip
    rows = []
    for key, (tp, fp, fn) in counts.items():
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        rows.append({"threshold": key[0], "min_voxels": key[1], "max_gap_nm": key[2],
                     "prune_threshold": key[3], "fscore": f, "precision": p, "recall": r,
                     "tp": tp, "fp": fp, "fn": fn})  # fmt: skip
    rows.sort(key=lambda r: -r["fscore"])
    seg_name = "predicted" if args.neuron_model else "GT"
    print(f"\nCREMI partner F on tuning seeds {args.seeds} ({seg_name} segmentation, U-Net "
          "proximity)")  # fmt: skip
    print("thr  min_vox gap  prune   F     P     R")
    for r in rows[:15]:
        pt = "none" if r["prune_threshold"] is None else f"{r['prune_threshold']:.2f}"
        print(f"{r['threshold']:.2f} {r['min_voxels']:6d} {r['max_gap_nm']:5.0f} {pt:>5s} "
              f"{r['fscore']:.3f} {r['precision']:.3f} {r['recall']:.3f}")  # fmt: skip
    cs0 = CandidateSettings()
    defaults = (cs0.threshold, cs0.min_voxels, cs0.max_gap_nm, 0.5)
    default = [r for r in rows if (r["threshold"], r["min_voxels"], r["max_gap_nm"],
                                   r["prune_threshold"]) == defaults]  # fmt: skip
    if default:
        d = default[0]
        print(f"defaults {defaults}: F {d['fscore']:.3f} P {d['precision']:.3f} "
              f"R {d['recall']:.3f}")  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2, default=float))


if __name__ == "__main__":
    main()
