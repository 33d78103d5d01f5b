"""Synaptic-partner evaluation on phantom volumes never used in training.

For each phantom seed (frozen default settings): predict the signed proximity and cleft
probability with the bundled ONNX models, then score, with the CREMI partner F-score,

- ``emsynconn`` with the pruning CNN, ``emsynconn`` without pruning, ``geometric-baseline``,
- each with the ground-truth segmentation and (if ``--neuron-model`` is given) a predicted one
  (affinity U-Net + waterz, the neurons engineer's stages),
- each with the U-Net signed proximity and with a *noisy-truth* proximity (ground truth plus
  smooth noise, std ``--noise-std``; the stand-in the pruner was trained on, new noise per volume),
- plus an oracle row (emsynconn, no pruning, on the exact ground-truth signed proximity) that
  bounds what the candidate stage can reach.

TP/FP/FN are summed over all volumes (micro F-score). The CREMI cleft score (mean of the average
FP and FN distances, nm; lower is better) of the cleft detector + ``cleft-labels`` is reported
too, and the aligner's error against the recorded shifts of misaligned phantoms.

Usage::

    python benchmarks/eval_synapses.py --seeds 3001 3002 3003 3004 [--neuron-model M.onnx]

Training used seeds 1001-1012 (U-Nets), 1101-1130 (pruner) and 1201-1208 (pruner checkpoint
selection; 1203-1208 also tuned the candidate settings); keep evaluation seeds disjoint from these.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.errors import DataError
from synapse_toolkit.evaluation.phantom_seeds import check_report_seeds
from synapse_toolkit.inference.onnx_model import OnnxModel
from synapse_toolkit.io.cremi import read_cremi
from synapse_toolkit.metrics.cremi_clefts import score_clefts
from synapse_toolkit.synapses.assigners import (
    EMSynConnSettings,
    assign_emsynconn,
    assign_geometric,
    cleft_labels,
)
from synapse_toolkit.synapses.candidates import CandidateSettings
from synapse_toolkit.synapses.partners import evaluate_partners
from synapse_toolkit.synapses.pruning import PrunerONNX
from synapse_toolkit.synapses.targets import Grid, TargetSettings, targets_from_cremi
from synapse_toolkit.synapses.train_detectors import phantom_file
from synapse_toolkit.synapses.train_pruner import (
    SegmentationSource,
    noisy_truth_proximity,
    predicted_segmentation,
)

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "plugins" / "syntk_synapses" / "models"


def _noise_seed(seed: int) -> int:
    return 7919 * seed + 17


def _acc(acc: dict[str, dict[str, Any]], key: str, values: Mapping[str, float]) -> None:
    row = acc.setdefault(key, {"tp": 0.0, "fp": 0.0, "fn": 0.0, "f_per_volume": []})
    for k in ("tp", "fp", "fn"):
        row[k] += values[k]
    row["f_per_volume"].append(values["fscore"])


def _f(row: dict[str, Any]) -> tuple[float, float, float]:
    tp, fp, fn = row["tp"], row["fp"], row["fn"]
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return (2 * p * r / (p + r) if p + r else 0.0), p, r


def label_content_motion(labels: np.ndarray, radius_px: int = 6) -> np.ndarray:
    """(Z, 2) cumulative whole-pixel shifts that best overlap each section's *ground-truth labels*
    with the previous section's (most voxels with equal ids, searched within ``radius_px``).

    This is what a translation aligner with perfect knowledge of the neurons would estimate on a
    volume without misalignment: the motion of the content itself, not an aligner's error.
    """
    nz, ny, nx = labels.shape
    steps = np.zeros((nz, 2))
    for z in range(1, nz):
        a, b = labels[z - 1], labels[z]
        best = -1.0
        for dy in range(-radius_px, radius_px + 1):
            for dx in range(-radius_px, radius_px + 1):
                ya, yb = slice(max(0, -dy), ny - max(0, dy)), slice(max(0, dy), ny - max(0, -dy))
                xa, xb = slice(max(0, -dx), nx - max(0, dx)), slice(max(0, dx), nx - max(0, -dx))
                agree = float(np.mean(a[ya, xa] == b[yb, xb]))
                if agree > best:
                    best, steps[z] = agree, (dy, dx)
    return np.cumsum(steps, axis=0)


def aligner_errors(seeds: list[int]) -> list[dict[str, Any]]:
    """Aligner error per misaligned + defective phantom, in pixels, on the sections it kept.

    ``abs_*``: estimated shifts vs the recorded ones. The phantom's content itself moves between
    40 nm sections (neurites run obliquely), so even the same volume without misalignment gets
    non-zero shifts from any image-based aligner; ``rel_*`` therefore compares the estimate on
    the misaligned volume with the estimate on the same seed without misalignment, i.e. how
    exactly the *added* misalignment is removed. ``content_px`` is the largest shift estimated on
    the clean volume (content motion the aligner cannot tell from misalignment);
    ``content_labels_px`` the same from the clean volume's ground-truth labels
    (:func:`label_content_motion`), i.e. how far an aligner that saw the neurons perfectly would
    still be from the recorded shifts. ``pair_*``:
    the displacement between consecutive kept sections after alignment vs the truth (the local
    error a detector looking at a few neighbouring sections sees). ``static_*``: the same recorded
    shifts and missing sections applied to a stack whose content does not move (the phantom's
    middle section in every section, with fresh pixel noise each), i.e. the aligner's error when
    misalignment is the only motion.
    """
    from synapse_toolkit.data import SectionTransform
    from synapse_toolkit.phantom.em import EMPhantom
    from synapse_toolkit.synapses.alignment import apply_transform, estimate_translations

    def static_error(ph: Any, seed: int, clean: Any) -> np.ndarray:
        nz = clean.shape[0]
        rng = np.random.default_rng(seed)
        mid = clean.read()[nz // 2].astype(np.float32)
        stack = np.stack([mid + rng.normal(0, 8, mid.shape) for _ in range(nz)])
        stack = np.clip(stack, 0, 255).astype(np.uint8)
        vs = clean.voxel_size_nm
        moved = apply_transform(stack, SectionTransform(ph.shifts * np.asarray(vs[1:])), vs,
                                labels=True)  # fmt: skip
        missing = [z for z, k in ph.defects.items() if k == "missing"]
        moved[missing] = 0
        t, rep = estimate_translations(moved, vs)
        est = -t.shifts_nm / np.asarray(vs[1:])
        good = [z for z in range(nz) if z not in rep.skipped]
        return max_err(est - ph.shifts.astype(float), good)

    def estimate(misalign: bool) -> tuple[np.ndarray, tuple[int, ...], Any]:
        ph = EMPhantom(seed=seed, misalign=misalign, defects=True)
        raw = ph.generate().raw
        assert raw is not None  # EMPhantom.generate always fills every part
        t, rep = estimate_translations(raw.read(), raw.voxel_size_nm)
        return -t.shifts_nm / np.asarray(raw.voxel_size_nm[1:]), rep.skipped, ph

    def max_err(err: np.ndarray, good: list[int]) -> np.ndarray:
        err = err - np.round(np.median(err[good], axis=0))
        return np.abs(err[good]).max(axis=1)

    rows = []
    for seed in seeds:
        est, skipped, ph = estimate(True)
        clean, _, _ = estimate(False)
        clean_data = EMPhantom(seed=seed).generate()  # no misalignment, no defects
        assert clean_data.neuron_ids is not None  # generate always fills every part
        truth_motion = label_content_motion(clean_data.neuron_ids.read())
        true = ph.shifts.astype(float)
        good = [z for z in range(len(true)) if z not in skipped]
        absolute = max_err(est - true, good)
        relative = max_err(est - clean - true, good)
        # section-to-section: displacement between consecutive kept sections vs the truth
        step = np.abs(np.diff(est[good] - true[good], axis=0)).max(axis=1)
        static = static_error(ph, seed, clean_data.raw)
        rows.append({"seed": seed, "abs_max_px": float(absolute.max()),
                     "abs_within_1px": float((absolute <= 1).mean()),
                     "rel_max_px": float(relative.max()),
                     "rel_within_1px": float((relative <= 1).mean()),
                     "pair_max_px": float(step.max()),
                     "pair_within_1px": float((step <= 1).mean()),
                     "content_px": float(np.abs(clean - np.median(clean, axis=0)).max()),
                     "content_labels_px": float(
                         np.abs(truth_motion - np.median(truth_motion, axis=0)).max()),
                     "static_max_px": float(static.max()),
                     "static_within_1px": float((static <= 1).mean()),
                     "skipped": list(skipped),
                     "defects": {int(k): v for k, v in ph.defects.items()}})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=[3001, 3002, 3003, 3004],
        help="phantom seeds for the partner rows (none: aligner only)",
    )
    ap.add_argument("--cache", default=str(ROOT / "runs" / "phantom-cache"))
    ap.add_argument("--polarity", default=str(MODELS / "polarity.onnx"))
    ap.add_argument("--clefts", default=str(MODELS / "clefts.onnx"))
    ap.add_argument("--pruner", default=str(MODELS / "pruner.onnx"))
    ap.add_argument(
        "--neuron-model", default=None, help="affinity ONNX for a predicted segmentation"
    )
    ap.add_argument("--neuron-tta", action="store_true",
                    help="predicted segmentation from 8-mirroring TTA affinities")  # fmt: skip
    ap.add_argument("--waterz-threshold", type=float, default=0.5)
    ap.add_argument("--waterz-scoring", default="quantile75", help="as in examples/cremi.toml")
    ap.add_argument("--noise-std", type=float, default=0.2, help="noisy-truth proximity rows")
    ap.add_argument("--cleft-threshold", type=float, default=0.9)
    ap.add_argument("--cleft-min-voxels", type=int, default=200)
    ap.add_argument("--align-seeds", type=int, nargs="*", default=[3001, 3002, 3003])
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    check_report_seeds(args.seeds)
    t0 = time.time()
    pol = OnnxModel(args.polarity)
    clf = OnnxModel(args.clefts) if Path(args.clefts).exists() else None
    pruner = PrunerONNX(args.pruner) if Path(args.pruner).exists() else None
    acc: dict[str, dict[str, Any]] = {}
    cleft_scores = []
    settings = EMSynConnSettings()
    # the best candidate settings *without* pruning on the development seeds (tune_candidates.py)
    no_prune_settings = EMSynConnSettings(CandidateSettings(threshold=0.4, min_voxels=25))
    for seed in args.seeds:
        path = phantom_file(seed, args.cache)
        data = read_cremi(path)
        if data.raw is None or data.neuron_ids is None or data.annotations is None:
            raise DataError(f"{path}: partner evaluation needs raw, neuron_ids and annotations")
        raw = data.raw.read()
        grid = Grid.of(data.raw)
        gt_seg = data.neuron_ids.read()
        truth = data.annotations
        prox = pol.predict(raw)[0]
        segs = {"GT seg": gt_seg}
        if args.neuron_model:
            source = SegmentationSource(args.neuron_model, args.waterz_threshold,
                                        args.waterz_scoring, args.neuron_tta)  # fmt: skip
            segs["predicted seg"] = predicted_segmentation(raw, source)
        clefts_pred = None
        if clf is not None:
            if data.clefts is None:
                raise DataError(f"{path}: the cleft score needs volumes/labels/clefts")
            cprob = clf.predict(raw)[0]
            clefts_pred = cleft_labels(cprob, grid, args.cleft_threshold, args.cleft_min_voxels)
            cs = score_clefts(data.clefts.read(), clefts_pred, voxel_size_nm=grid.voxel_size_nm)
            cleft_scores.append(cs.as_dict())
        noisy = noisy_truth_proximity(data, args.noise_std, _noise_seed(seed))
        for seg_name, seg in segs.items():
            for prox_name, pmap in (("U-Net proximity", prox), ("noisy-truth proximity", noisy)):
                tables = {
                    "emsynconn (no pruning)": assign_emsynconn(
                        raw, pmap, seg, grid, None, settings
                    ),
                    "emsynconn (no pruning, tuned: thr 0.4, >= 25 vox)": assign_emsynconn(
                        raw, pmap, seg, grid, None, no_prune_settings
                    ),
                }
                if pruner is not None:
                    tables["emsynconn + pruning CNN"] = assign_emsynconn(
                        raw, pmap, seg, grid, pruner, settings
                    )
                if clefts_pred is not None:
                    tables["geometric baseline"] = assign_geometric(clefts_pred, pmap, seg, grid)
                for name, table in tables.items():
                    score = evaluate_partners(table, truth, data.neuron_ids)
                    _acc(acc, f"{name} | {prox_name}, {seg_name}", score.values)
        oracle = targets_from_cremi(data, TargetSettings(), only=("proximity",))["proximity"]
        table = assign_emsynconn(raw, oracle, gt_seg, grid, None, settings)
        _acc(acc, "oracle: emsynconn on GT proximity | GT seg",
             evaluate_partners(table, truth, data.neuron_ids).values)  # fmt: skip
        print(f"seed {seed} done ({time.time() - t0:.0f}s)", flush=True)
    if args.seeds:
        print(f"\nCREMI partner F-score on phantom seeds {args.seeds} (micro over volumes)")
        cols = "".join(f"{c:>6s}" for c in ("F", "P", "R", "TP", "FP", "FN"))
        print(f"{'method | segmentation':58s}{cols}")
    results: dict[str, Any] = {}
    for key in sorted(acc):
        row = acc[key]
        f, p, r = _f(row)
        counts = {k: row[k] for k in ("tp", "fp", "fn")}
        results[key] = {"fscore": f, "precision": p, "recall": r, **counts,
                        "f_per_volume": row["f_per_volume"]}  # fmt: skip
        nums = "".join(f"{v:6.3f}" for v in (f, p, r)) + "".join(
            f"{v:6.0f}" for v in counts.values()
        )
        print(f"{key:58s}{nums}")
    if cleft_scores:
        cs_mean = float(np.mean([c["cremi_score"] for c in cleft_scores]))
        vf = float(np.mean([c["voxel_fscore"] for c in cleft_scores]))
        fp = int(np.sum([c["false_positives"] for c in cleft_scores]))
        fn = int(np.sum([c["false_negatives"] for c in cleft_scores]))
        print(
            f"\nCREMI cleft score (mean of avg FP/FN distance, nm; lower is better): {cs_mean:.1f}"
            f"  [FP voxels > 200 nm: {fp}, FN voxels > 200 nm: {fn}, voxel F: {vf:.3f}]"
        )
        results["cleft"] = {"cremi_score_mean": cs_mean, "per_volume": cleft_scores}
    if args.align_seeds:
        al = aligner_errors(args.align_seeds)
        print(
            "\naligner error on kept sections (misaligned + defective phantoms, px): abs = vs "
            "recorded shifts, rel = vs the estimate on the same seed without misalignment"
        )
        for row in al:
            print(
                f"  seed {row['seed']}: abs max {row['abs_max_px']:.1f} "
                f"(within 1 px {row['abs_within_1px']:.2f}), rel max {row['rel_max_px']:.1f} "
                f"(within 1 px {row['rel_within_1px']:.2f}), section-to-section max "
                f"{row['pair_max_px']:.1f} (within 1 px {row['pair_within_1px']:.2f}), "
                f"content motion {row['content_px']:.1f} (from truth labels "
                f"{row['content_labels_px']:.1f}); static content: max "
                f"{row['static_max_px']:.1f} (within 1 px {row['static_within_1px']:.2f}); "
                f"skipped {row['skipped']}, "
                f"defects {row['defects']}"
            )
        results["aligner"] = al
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    print(f"\ntotal {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
