"""Choose the cleft post-processing (threshold, minimum size) on development phantom seeds.

Development seeds (default 1203-1208) are disjoint from the cleft U-Net's training seeds
(1001-1012) and from the evaluation seeds of ``eval_synapses.py`` (3001+). For each setting it
reports the mean CREMI cleft score (mean of the average false-positive and false-negative
distances, nm; lower is better) of ``cleft-labels`` on the model's probability map.

    python benchmarks/tune_clefts.py [--clefts M.onnx] [--seeds ...]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from synapse_toolkit.errors import DataError
from synapse_toolkit.evaluation.phantom_seeds import check_selection_seeds
from synapse_toolkit.inference.onnx_model import OnnxModel
from synapse_toolkit.io.cremi import read_cremi
from synapse_toolkit.metrics.cremi_clefts import score_clefts
from synapse_toolkit.synapses.assigners import cleft_labels
from synapse_toolkit.synapses.targets import Grid
from synapse_toolkit.synapses.train_detectors import phantom_file

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(1203, 1209)))
    ap.add_argument("--cache", default=str(ROOT / "runs" / "phantom-cache"))
    ap.add_argument("--clefts", default=str(ROOT / "plugins/syntk_synapses/models/clefts.onnx"))
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9])
    ap.add_argument("--min-voxels", type=int, nargs="+", default=[200, 500, 1000])
    args = ap.parse_args()
    check_selection_seeds(args.seeds)
    model = OnnxModel(args.clefts)
    volumes = []
    for seed in args.seeds:
        path = phantom_file(seed, args.cache)
        data = read_cremi(path)
        if data.raw is None or data.clefts is None:
            raise DataError(f"{path}: cleft tuning needs raw and clefts")
        volumes.append((data.raw, data.clefts, model.predict(data.raw.read())[0]))
    print(f"{Path(args.clefts).name} on seeds {args.seeds}: mean CREMI cleft score (nm)")
    rows = []
    for th, mv in itertools.product(args.thresholds, args.min_voxels):
        scores = []
        for raw, clefts, prob in volumes:
            grid = Grid.of(raw)
            pred = cleft_labels(prob, grid, th, mv)
            s = score_clefts(clefts.read(), pred, voxel_size_nm=grid.voxel_size_nm)
            scores.append(s.as_dict()["cremi_score"])
        rows.append((float(np.mean(scores)), th, mv))
        print(f"  threshold {th:.2f}, >= {mv:5d} voxels: {np.mean(scores):7.1f}")
    best = min(rows)
    print(f"best: threshold {best[1]}, min voxels {best[2]} -> {best[0]:.1f} nm")


if __name__ == "__main__":
    main()
