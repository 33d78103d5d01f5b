"""Held-out evaluation of the shipped FIB affinity model on the gala FIB-SEM *test* volume.

Compares, with the same waterz agglomeration (same scoring functions, same threshold grid, best
threshold per method), three affinity sources:

- ``model``: the shipped ONNX U-Net (tiled ONNX Runtime inference over the whole test volume);
- ``raw``: raw intensity as affinity. Membranes are *dark* in this data, so the inverted raw
  intensity is the boundary map and ``1 - inverted = raw / 255`` is its affinity;
- ``p1``: the boundary probability map shipped with the data, ``1 - p1`` as affinity.

For the two baselines, per-voxel values go into all three channels (``voxel``) and, as a second
variant, each edge gets the minimum over its two voxels (``edge-min``); the better variant is
reported, so the baselines are given their best shot. Metrics: VOI split/merge (bits), adapted
Rand error and CREMI score = sqrt(VOI * ARAND); truth label 0 (boundary) is ignored, no border
mask. Uses ``synapse_toolkit.metrics`` (CREMI scorer) when present, else the local helper.

The model's input is matched to its training data's grey-value quantiles (as the
``affinity-unet`` stage does; ``--no-match`` feeds raw / 255). ``--robustness`` scores the model
(matched and not) and the raw baseline on perturbed copies of the volume: contrast, brightness,
gamma, 16-bit counts, noise, blur. ``--raw/--truth [--boundary]`` evaluate another volume (HDF5
``FILE[:DATASET]`` or ``STORE.zarr:ARRAY``); without a boundary map baseline (b) is skipped.

    python benchmarks/eval_fib.py [--model plugins/syntk_neurons/models/fib_affinities.onnx]
                                  [--data ../shared/data/em/gala-fib-medulla] [--json out.json]
                                  [--tta] [--no-match] [--robustness]
    python benchmarks/eval_fib.py --raw other.h5:raw --truth other.h5:labels [--boundary p.h5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from synapse_toolkit.affinities import NEAREST_NEIGHBOURS
from synapse_toolkit.inference.agglomeration import agglomerate

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = [round(t, 3) for t in np.arange(0.05, 1.0, 0.05)]
SCORINGS = ["mean", "quantile50", "quantile75"]
IGNORE = np.uint64(0xFFFFFFFFFFFFFFFF)
MODEL_VOXEL_SIZE_NM = (10.0, 10.0, 10.0)  # the gala training volume's


def scorer():
    """(name, function(seg, truth_uint64_with_ignore) -> dict)."""
    try:
        from synapse_toolkit.metrics.cremi_neurons import score_neuron_ids

        def score(seg: np.ndarray, truth: np.ndarray) -> dict[str, float]:
            s = score_neuron_ids(truth, seg)
            return {
                "voi_split": s.voi_split,
                "voi_merge": s.voi_merge,
                "voi": s.voi_split + s.voi_merge,
                "arand": s.adapted_rand,
                "cremi_score": s.cremi_score,
            }

        return "synapse_toolkit.metrics.cremi_neurons", score
    except (ImportError, AttributeError):
        from synapse_toolkit.inference.segmetrics import segmentation_scores

        return "local helper (synapse_toolkit.inference.segmetrics)", (
            lambda seg, truth: segmentation_scores(seg, truth, ignore_label=None).to_dict()
        )


def edge_min(values: np.ndarray) -> np.ndarray:
    """Affinity of edge (v, v+o) = min(value(v), value(v+o)); 0 where v+o is outside."""
    out = np.zeros((3, *values.shape), np.float32)
    for c, off in enumerate(NEAREST_NEIGHBOURS):
        a = tuple(slice(-o, None) if o < 0 else slice(None) for o in off)
        b = tuple(slice(None, o) if o < 0 else slice(None) for o in off)
        out[(c, *a)] = np.minimum(values[a], values[b])
    return out


def model_affinities(
    model: Path,
    raw: np.ndarray,
    threads: int,
    tta: bool = False,
    match_intensity: bool = True,
    voxel_size_nm: tuple[float, float, float] = MODEL_VOXEL_SIZE_NM,
    resample: str = "always",
) -> tuple[np.ndarray, float]:
    """The model's affinities for ``raw``, computed by the `affinity-unet` stage itself (intensity
    matching, resampling to the model's voxel size and back, tiling, optional TTA)."""
    from syntk_neurons.stages import AffinityDetector

    from synapse_toolkit.data import Volume
    from synapse_toolkit.stages import StageContext

    opts = AffinityDetector.Options(
        model_path=model, tta=tta, match_intensity=match_intensity, resample=resample,
        model_voxel_size_nm=MODEL_VOXEL_SIZE_NM,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext("affinities", Path(tmp), n_threads=threads)
        t = time.perf_counter()
        affs = AffinityDetector(opts, ctx).run({"raw": Volume(raw, voxel_size_nm)})["affinities"]
        out = affs.read()[:3]
        return out, time.perf_counter() - t


def evaluate(affs: np.ndarray, truth: np.ndarray, score) -> dict:
    rows = []
    for scoring in SCORINGS:

        def keep(th: float, seg: np.ndarray, scoring=scoring) -> None:
            rows.append({"scoring": scoring, "threshold": th, **score(seg, truth)})

        agglomerate(affs, THRESHOLDS, scoring=scoring, on_segmentation=keep)
    best = min(rows, key=lambda r: r["cremi_score"])
    best_voi = min(rows, key=lambda r: r["voi"])
    return {"best_by_cremi": best, "best_by_voi": best_voi, "sweep": rows}


def read_dataset(spec: str | Path) -> np.ndarray:
    """``FILE.h5[:DATASET]`` (default dataset ``stack``) or ``STORE.zarr:ARRAY``."""
    path, _, key = str(spec).partition(":")
    if not Path(path).exists():
        raise SystemExit(f"{path}: file not found")
    if path.rstrip("/").endswith(".zarr"):
        import zarr

        return np.asarray(zarr.open_array(path, path=key or "", mode="r")[...])
    with h5py.File(path, "r") as f:
        name = key or "stack"
        if name not in f:
            raise SystemExit(f"{path}: no dataset {name!r} (has {list(f.keys())})")
        return np.asarray(f[name][...])


def truth_with_ignore(gt: np.ndarray, ignore: int | None = 0) -> np.ndarray:
    truth = gt.astype(np.uint64)
    if ignore is not None:
        truth[gt == ignore] = IGNORE  # boundary voxels are not scored
    return truth


def perturbations(raw: np.ndarray, gt: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The same volume as another acquisition might look: grey-value changes, blur, noise,
    and finer / coarser voxels (8 and 12.5 nm; the model's input is resampled to 10 nm)."""
    from scipy import ndimage

    r = raw.astype(np.float32)

    def u8(x: np.ndarray) -> np.ndarray:
        return np.clip(np.round(x), 0, 255).astype(np.uint8)

    noise = np.random.default_rng(0).normal(0, 10, r.shape)
    return [
        ("unchanged", raw, gt),
        ("contrast x0.5", u8(128 + (r - r.mean()) * 0.5), gt),
        ("contrast x1.4", u8(128 + (r - r.mean()) * 1.4), gt),
        ("brightness -40", u8(r - 40), gt),
        ("brightness +40", u8(r + 40), gt),
        ("gamma 0.6", u8(255 * (r / 255) ** 0.6), gt),
        ("gamma 1.6", u8(255 * (r / 255) ** 1.6), gt),
        ("uint16, x200 + 1000", (r * 200 + 1000).astype(np.uint16), gt),
        ("noise sd 10", u8(r + noise), gt),
        ("blur sigma 1", u8(ndimage.gaussian_filter(r, 1)), gt),
        ("8 nm voxels", u8(ndimage.zoom(r, 1.25, order=1)), ndimage.zoom(gt, 1.25, order=0)),
        ("12.5 nm voxels", u8(ndimage.zoom(r, 0.8, order=1)), ndimage.zoom(gt, 0.8, order=0)),
    ]


def robustness(args: argparse.Namespace, raw: np.ndarray, gt: np.ndarray, score) -> dict:
    """Best CREMI score of the model (with and without intensity matching) and of the raw
    baseline on perturbed copies of the volume."""
    print(f"{'perturbation':22s} {'matched':>8s} {'unmatched':>9s} {'raw':>7s}   (CREMI score)")
    out = {}
    for name, r, g in perturbations(raw, gt):
        truth = truth_with_ignore(g)
        vs = tuple(v * raw.shape[0] / r.shape[0] for v in args.voxel_size)
        row = {}
        for label, match in (("matched", True), ("unmatched", False)):
            affs, _ = model_affinities(args.model, r, args.threads, args.tta, match, vs)
            row[label] = evaluate(affs, truth, score)["best_by_cremi"]["cremi_score"]
        if vs != tuple(args.voxel_size):  # the other resampling choice
            other = "never"
            affs, _ = model_affinities(args.model, r, args.threads, args.tta, True, vs, other)
            row[f"matched, resample={other}"] = evaluate(affs, truth, score)["best_by_cremi"][
                "cremi_score"
            ]
        r01 = (r.astype(np.float32) - r.min()) / max(1.0, float(r.max()) - float(r.min()))
        row["raw"] = evaluate(edge_min(r01), truth, score)["best_by_cremi"]["cremi_score"]
        extra = [f"{k}: {v:.3f}" for k, v in row.items() if k.startswith("matched, ")]
        print(
            f"{name:22s} {row['matched']:8.3f} {row['unmatched']:9.3f} {row['raw']:7.3f}"
            + (f"   ({extra[0]})" if extra else "")
        )
        out[name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", type=Path, default=ROOT / "plugins/syntk_neurons/models/fib_affinities.onnx"
    )
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/em/gala-fib-medulla")
    ap.add_argument("--split", default="test", help="never 'train' for the reported numbers")
    ap.add_argument("--raw", help="another volume: FILE.h5[:DATASET] or STORE.zarr:ARRAY")
    ap.add_argument("--truth", help="its neuron labels (same forms as --raw)")
    ap.add_argument("--boundary", help="its boundary probability map, if any (baseline b)")
    ap.add_argument("--ignore-label", type=int, default=0, help="truth label left unscored")
    ap.add_argument(
        "--voxel-size", type=float, nargs=3, default=MODEL_VOXEL_SIZE_NM, metavar=("Z", "Y", "X"),
        help="the volume's voxel size in nm (other than 10 nm: resampled for the model)",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write all results here")
    ap.add_argument("--model-only", action="store_true", help="skip the baselines")
    ap.add_argument("--tta", action="store_true", help="average the model over 8 mirrorings")
    ap.add_argument("--no-match", action="store_true", help="no intensity matching")
    ap.add_argument("--robustness", action="store_true", help="perturbed copies (see docstring)")
    ap.add_argument("--save-affs", type=Path, help="save the model affinities (.npy)")
    args = ap.parse_args(argv)

    if args.raw:
        if not args.truth:
            raise SystemExit("--raw needs --truth")
        raw, gt = read_dataset(args.raw), read_dataset(args.truth)
        p1 = read_dataset(args.boundary) if args.boundary else None
        volume_name = f"{args.raw} {raw.shape}"
    else:
        raw = read_dataset(args.data / f"{args.split}-image.h5")
        gt = read_dataset(args.data / f"{args.split}-gt.lzf.h5")
        p1 = read_dataset(args.data / f"{args.split}-p1.lzf.h5")
        volume_name = f"gala FIB-SEM {args.split} volume {raw.shape}"
    if gt.shape != raw.shape:
        raise SystemExit(f"truth shape {gt.shape} != raw shape {raw.shape}")
    if p1 is not None and p1.ndim == 4:  # channel-last (ilastik) boundary maps: first channel
        p1 = p1[..., 0]
    truth = truth_with_ignore(gt, args.ignore_label)
    metric_name, score = scorer()
    if args.robustness:
        print(f"{volume_name}, metrics: {metric_name}; model TTA: {args.tta}")
        report = robustness(args, raw, gt, score)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
        return 0
    affs, seconds = model_affinities(
        args.model, raw, args.threads, args.tta, not args.no_match, tuple(args.voxel_size)
    )
    if args.save_affs:
        np.save(args.save_affs, affs)
    raw01 = (raw.astype(np.float32) - raw.min()) / max(1.0, float(raw.max()) - float(raw.min()))
    results = {
        "metrics": metric_name,
        "volume": volume_name,
        "model": str(args.model),
        "tta": args.tta,
        "intensity_matching": not args.no_match,
        "inference_s": seconds,
        "methods": {},
    }
    results["methods"]["model"] = evaluate(affs, truth, score)
    baselines = [] if args.model_only else [("raw", raw01)]
    if p1 is not None and not args.model_only:
        baselines.append(("p1", 1.0 - p1.astype(np.float32)))
    for name, values in baselines:
        variants = {
            "voxel": evaluate(np.stack([values] * 3).astype(np.float32), truth, score),
            "edge-min": evaluate(edge_min(values), truth, score),
        }
        best_variant = min(variants, key=lambda k: variants[k]["best_by_cremi"]["cremi_score"])
        results["methods"][name] = {
            **variants[best_variant],
            "variant": best_variant,
            "other_variants": {
                k: v["best_by_cremi"] for k, v in variants.items() if k != best_variant
            },
        }
    print(f"{volume_name}, metrics: {metric_name}")
    print(f"model inference: {seconds:.1f} s ({raw.size / seconds / 1e6:.3f} Mvox/s)")
    print(
        f"{'method':8s} {'scoring':11s} {'thr':>5s} {'VOI split':>9s} {'VOI merge':>9s} "
        f"{'VOI':>6s} {'ARAND':>6s} {'CREMI':>6s}   best VOI"
    )
    for name, res in results["methods"].items():
        b, bv = res["best_by_cremi"], res["best_by_voi"]
        print(
            f"{name:8s} {b['scoring']:11s} {b['threshold']:5.2f} {b['voi_split']:9.3f} "
            f"{b['voi_merge']:9.3f} {b['voi']:6.3f} {b['arand']:6.3f} {b['cremi_score']:6.3f}"
            f"   {bv['voi']:.3f} ({bv['scoring']} @ {bv['threshold']:.2f})"
        )
    m = results["methods"]
    if args.model_only:
        return 0
    wins = all(
        m["model"][k][key] < m[base][k][key]
        for base, _ in baselines
        for k, key in (("best_by_voi", "voi"), ("best_by_cremi", "cremi_score"))
    )
    print("model beats every baseline on VOI and CREMI score:", wins)
    results["model_beats_baselines"] = wins
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if wins else 1


if __name__ == "__main__":
    sys.exit(main())
