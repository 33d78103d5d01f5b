"""One table of every partner assigner on phantom volumes, and the tuning of ``synful``'s
extraction defaults on development seeds.

For each phantom seed (frozen defaults) the bundled models predict once (cached under
``--cache-dir``): the Synful network (mask, vector, direction), the signed proximity, the cleft
probability (+ ``cleft-labels`` at its defaults), and the main job's predicted segmentation
(``neurons/phantom_affinities`` with 8-mirroring TTA + waterz quantile75 at 0.5, as in
``examples/cremi.toml``). Then, with the ground-truth and with the predicted segmentation, the
CREMI partner F-score (TP/FP/FN pooled over volumes) of

- ``synful`` (vector head) and its direction head (distance from the predicted clefts),
- ``emsynconn`` with the pruning CNN, ``geometric-baseline``,
- four combinations: the union of synful and emsynconn (de-duplicated); emsynconn's rows plus
  synful's confident rows (its own settings, with a minimum score, tuned as ``union``);
  emsynconn's rows plus the synful rows its pruning CNN keeps (the stage's
  ``combine = "verified"``); and synful rows confirmed by an emsynconn row on the same segment
  pair;
- the main job's assigner: synful on the 8-mirroring average of the network (``tta``, its own
  threshold) de-duplicated by the main job's coarser ``segment``; and the same without TTA (the
  main job before),

plus counts of the remaining errors of each (see :func:`error_kinds`).

``--tune`` instead sweeps synful's extraction parameters on the given (development) seeds and
prints the setting with the best mean of the pooled F on both segmentations. ``--tune-main``
sweeps the main job's (threshold x min_voxels of the TTA extraction, its coarser de-duplication)
and prints the pooled F of its row with the predicted segmentation (what the main job runs) and
with the ground truth.

``--checkpoints`` (with ``--train-config``) exports each training checkpoint to ONNX and scores
it on the given (development) seeds over a small threshold x min_voxels sweep of the vector head
(other settings as :data:`~synapse_toolkit.synapses.synful.TUNED_DEFAULTS`); the checkpoint with
the best mean pooled F (ground-truth and predicted segmentation) is the one to ship.

Usage::

    python benchmarks/eval_partners.py --tune --seeds 1201 1202 1203 1204 1205 1206 1207 1208
    python benchmarks/eval_partners.py --tune-main --json out.json --seeds 1201 1202 1203 1204 \
        1205 1206 1207 1208 9091 9092 9093 9094 9095 9096 9097 9098 9401 9402 9403 9404 9405 \
        9406 9407 9408 9601 9602 9603 9604 9605 9606 9607 9608
    python benchmarks/eval_partners.py --seeds 9201 9202 9203 9204 9205 9206 9207 9208 \\
        --json out.json
    python benchmarks/eval_partners.py --seeds 1201 1202 1203 1204 1205 1206 1207 1208 \\
        --train-config examples/train/synful_continue.toml \\
        --checkpoints runs/train-synful-2/it*.pt --json runs/synful-checkpoints.json

Seeds: ``--tune`` and ``--checkpoints`` read development seeds only, a table refuses seeds seen in
training or selection (development ones with ``--dev``); the roles of every phantom seed are in
:mod:`synapse_toolkit.evaluation.phantom_seeds`.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from syntk_synapses.synful import Synful

from synapse_toolkit.data import PartnerTable, Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.evaluation.phantom_seeds import check_report_seeds, check_selection_seeds
from synapse_toolkit.fsio import sha256_file
from synapse_toolkit.inference.fragments import distance_parameters
from synapse_toolkit.inference.onnx_model import OnnxModel
from synapse_toolkit.io.cremi import read_cremi
from synapse_toolkit.synapses.assigners import (
    EMSynConnSettings,
    assign_emsynconn,
    assign_geometric,
    cleft_labels,
)
from synapse_toolkit.synapses.candidates import CandidateSettings
from synapse_toolkit.synapses.partners import deduplicate_by, evaluate_partners
from synapse_toolkit.synapses.pruning import PrunerONNX, row_scores
from synapse_toolkit.synapses.synful import (
    TUNED_DEFAULTS,
    SynfulSettings,
    extract_partners,
    tta_arguments,
    union,
)
from synapse_toolkit.synapses.targets import Grid
from synapse_toolkit.synapses.train_detectors import phantom_file
from synapse_toolkit.synapses.train_pruner import SegmentationSource, predicted_segmentation

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "plugins" / "syntk_synapses" / "models"
NEURONS = ROOT / "plugins" / "syntk_neurons" / "models" / "phantom_affinities.onnx"
#: the ``synful`` stage's ``verify_keep`` default (combine = "verified")
VERIFY_KEEP = float(Synful.Options.model_fields["verify_keep"].default)
#: the main job's extraction (the ``synful`` stage's defaults with ``tta``)
MAIN_TTA = SynfulSettings(**TUNED_DEFAULTS["vector, tta"])


def _cached(path: Path, make: Any) -> np.ndarray:
    if path.exists():
        return np.load(path)["a"]
    arr = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, a=arr)
    tmp.replace(path)
    return arr


def predictions(
    seed: int,
    args: argparse.Namespace,
    synful: bool = True,
    main_segmentation: bool = True,
    segmentations: bool = True,
) -> dict[str, Any]:
    """Truth and the model outputs of one phantom seed (each cached by seed and model sha256);
    ``main_segmentation``: also the main job's coarser ``segment`` (``main_seg``);
    ``segmentations=False``: neither predicted segmentation (ground-truth studies)."""
    path = phantom_file(seed, args.phantom_cache)
    data = read_cremi(path)
    if data.raw is None or data.neuron_ids is None:
        raise DataError(f"{path}: the partner predictions need raw and neuron_ids")
    raw = data.raw.read()
    grid = Grid.of(data.raw)
    cache = Path(args.cache_dir)

    def key(kind: str, model: str) -> Path:
        return cache / f"seed{seed}-{kind}-{sha256_file(Path(model))[:12]}.npz"

    out = {"seed": seed, "data": data, "raw": raw, "grid": grid, "gt_seg": data.neuron_ids.read()}
    tta = [[0, 0, 0]] if args.polarity_tta else None  # one channel: the 8 mirrorings undone
    out["proximity"] = _cached(
        key("proximity" + ("-tta" if tta else ""), args.polarity),
        lambda: OnnxModel(args.polarity).predict(raw, tta_offsets=tta)[0],
    )
    out["clefts"] = _cached(key("clefts", args.clefts), lambda: cleft_labels(
        OnnxModel(args.clefts).predict(raw)[0], grid, 0.9, 200))  # fmt: skip

    def segmentation(fragments: str) -> np.ndarray:
        frags = (("method", "distance_2d"), *distance_parameters({}).items()
                 ) if fragments == "distance_2d" else ()  # fmt: skip
        seg_key = "segmentation-tta-q75-0.5" + ("-d2d" if frags else "")
        return _cached(key(seg_key, args.neuron_model), lambda: predicted_segmentation(
            raw, SegmentationSource(str(args.neuron_model), 0.5, "quantile75", tta=True,
                                    fragments=frags)))  # fmt: skip

    if segmentations:
        out["pred_seg"] = segmentation(args.fragments)
    # the main job's `segment` (distance-seeded fragments), coarser than its `partner_segment`
    main = main_segmentation and segmentations
    if main:
        out["main_seg"] = segmentation("distance_2d")
    if synful:
        out["synful"] = _cached(key("synful", args.synful),
                                lambda: OnnxModel(args.synful).predict(raw))  # fmt: skip
        if main:  # the main job's synful prediction
            out["synful_tta"] = _cached(key("synful-tta", args.synful), lambda: OnnxModel(
                args.synful).predict(raw, **tta_arguments()))  # fmt: skip
    return out


def checkpoint_sweep(
    volumes: list[dict[str, Any]], models: list[Path], cache_dir: Path
) -> dict[str, Any]:
    """Score each synful ONNX model on ``volumes`` over a threshold x min_voxels sweep of the
    vector head; per model the best setting by mean pooled F (ground truth and predicted)."""
    base = SynfulSettings(head="vector", **TUNED_DEFAULTS["vector"])
    sweep = list(itertools.product([0.6, 0.75, 0.85, 0.9, 0.95], [100, 300]))
    out: dict[str, Any] = {}
    for model in models:
        sha = sha256_file(model)[:12]
        net = OnnxModel(model, n_threads=1)
        outs = []
        for v in volumes:
            path = cache_dir / f"seed{v['seed']}-synful-{sha}.npz"
            outs.append(_cached(path, lambda raw=v["raw"], net=net: net.predict(raw)))
        frac = float(np.mean([(o[0] > 0.5).mean() for o in outs]))
        rows = []
        for thr, mv in sweep:
            s = dataclasses.replace(base, threshold=thr, min_voxels=mv)
            res = {}
            for seg_key in ("gt_seg", "pred_seg"):
                scores = [
                    _score(extract_partners(o, v[seg_key], v["grid"], s, v["clefts"]), v)
                    for o, v in zip(outs, volumes, strict=True)
                ]
                res[seg_key] = _pooled(scores)["fscore"]
            rows.append({"threshold": thr, "min_voxels": mv, **res,
                         "mean_f": 0.5 * (res["gt_seg"] + res["pred_seg"])})  # fmt: skip
        best = max(rows, key=lambda r: r["mean_f"])
        out[str(model)] = {"sha256": sha256_file(model), "mask_fraction_gt_0.5": frac,
                           "best": best, "sweep": rows}  # fmt: skip
        print(f"{model}: mask > 0.5 in {frac:.3f} of the volume; best threshold "
              f"{best['threshold']} min_voxels {best['min_voxels']}: mean F "
              f"{best['mean_f']:.3f} (GT {best['gt_seg']:.3f}, predicted "
              f"{best['pred_seg']:.3f})", flush=True)  # fmt: skip
    return out


def export_checkpoints(config: str, checkpoints: list[str]) -> list[Path]:
    """ONNX next to each checkpoint (``<name>.onnx``), exported with the training config."""
    from synapse_toolkit.synapses.train_synful import export_synful_checkpoint, load_synful_config

    paths = []
    for ckpt in checkpoints:
        onnx = Path(ckpt).with_suffix(".onnx")
        if not onnx.exists():
            cfg = load_synful_config(config)
            cfg = cfg.model_copy(update={"training": cfg.training.model_copy(
                update={"onnx": str(onnx)})})  # fmt: skip
            export_synful_checkpoint(cfg, ckpt)
        paths.append(onnx)
    return paths


def confirmed(synful: PartnerTable, other: PartnerTable) -> PartnerTable:
    """Rows of ``synful`` whose (pre, post) segment pair also appears in ``other``."""
    pairs = set(zip(other.pre_segment.tolist(), other.post_segment.tolist(), strict=True))
    keep = [
        (int(a), int(b)) in pairs
        for a, b in zip(synful.pre_segment, synful.post_segment, strict=True)
    ]
    return synful.select(np.asarray(keep, bool))


def error_kinds(
    table: PartnerTable, truth: Any, neuron_ids: Volume, seg: np.ndarray, match: Any
) -> dict[str, int]:
    """Why each missed true partner was missed, and what each false row is.

    Missed (truth rows without a match): ``merged`` — its pre and post sites lie in one segment
    of the segmentation used (a split-free assigner cannot report it); ``no site`` — no predicted
    row has its post site within 400 nm in the true post neuron; ``wrong partner`` — such a row
    exists but its pre site is in another neuron (or farther than 400 nm); ``reversed`` — a row
    runs from the true post neuron to the true pre neuron. False rows: ``fp duplicate`` (its
    true pair is matched by another row), ``fp reversed``, ``fp other``.
    """
    from synapse_toolkit.metrics.cremi_partners import lookup_labels, pair_locations

    gt = neuron_ids.read()
    off = np.asarray(neuron_ids.offset_nm)
    res = np.asarray(neuron_ids.voxel_size_nm)
    g_pre, g_post = pair_locations(truth, off)
    pred_ann = table.to_annotations(truth.offset_nm)
    r_pre, r_post = pair_locations(pred_ann, off)
    gl_pre = lookup_labels(gt, g_pre, res, "half_away")[0]
    gl_post = lookup_labels(gt, g_post, res, "half_away")[0]
    sl_pre = lookup_labels(seg, g_pre, res, "half_away")[0]
    sl_post = lookup_labels(seg, g_post, res, "half_away")[0]
    rl_pre = lookup_labels(gt, r_pre, res, "half_away")[0]
    rl_post = lookup_labels(gt, r_post, res, "half_away")[0]
    matched_g = {j for _, j, _ in match}
    matched_r = {i for i, _, _ in match}
    out = dict.fromkeys(("merged", "no site", "wrong partner", "reversed", "fp duplicate",
                         "fp reversed", "fp other"), 0)  # fmt: skip
    for j in range(len(g_pre)):
        if j in matched_g:
            continue
        near_post = np.linalg.norm(r_post - g_post[j], axis=1) <= 400.0
        rev = near_post & (rl_post == gl_pre[j]) & (rl_pre == gl_post[j])
        near_pre_rev = np.linalg.norm(r_post - g_pre[j], axis=1) <= 400.0
        rev |= near_pre_rev & (rl_post == gl_pre[j]) & (rl_pre == gl_post[j])
        if sl_pre[j] == sl_post[j]:
            out["merged"] += 1
        elif rev.any():
            out["reversed"] += 1
        elif not (near_post & (rl_post == gl_post[j])).any():
            out["no site"] += 1
        else:
            out["wrong partner"] += 1
    for i in range(len(r_pre)):
        if i in matched_r:
            continue
        same = (gl_pre == rl_pre[i]) & (gl_post == rl_post[i])
        same &= np.linalg.norm(g_post - r_post[i], axis=1) <= 400.0
        rev = (gl_pre == rl_post[i]) & (gl_post == rl_pre[i])
        if same.any():
            out["fp duplicate"] += 1
        elif rev.any():
            out["fp reversed"] += 1
        else:
            out["fp other"] += 1
    return out


def _pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"fscore": f, "precision": p, "recall": r, "tp": tp, "fp": fp, "fn": fn,
            "f_per_volume": [x["fscore"] for x in rows],
            "counts_per_volume": [[x["tp"], x["fp"], x["fn"]] for x in rows]}  # fmt: skip


def pooled_summary(
    rows: dict[str, list[dict[str, Any]]], errors: dict[str, dict[str, int]], width: int = 36
) -> dict[str, Any]:
    """Per table name: pooled F, precision, recall, TP / FP / FN and error kinds (of
    :func:`tally`'s accumulators); each printed as one line."""
    out: dict[str, Any] = {}
    for key, r in rows.items():
        p = _pooled(r)
        out[key] = {k: p[k] for k in ("fscore", "precision", "recall", "tp", "fp", "fn")}
        out[key]["errors"] = errors[key]
        print(f"{key:{width}s} F {p['fscore']:.4f} P {p['precision']:.3f} R {p['recall']:.3f} "
              f"{p['tp']:.0f}/{p['fp']:.0f}/{p['fn']:.0f} {errors[key]}")  # fmt: skip
    return out


def main_job_table(v: dict[str, Any], seg_key: str, settings: SynfulSettings) -> PartnerTable:
    """The main job's rows on volume ``v``: synful on the TTA average with ``settings``,
    de-duplicated by its coarser ``segment`` (with the truth: the truth itself)."""
    seg, grid = v[seg_key], v["grid"]
    coarse = Volume(v["main_seg"] if seg_key == "pred_seg" else seg,
                    grid.voxel_size_nm, grid.offset_nm)  # fmt: skip
    return deduplicate_by(extract_partners(v["synful_tta"], seg, grid, settings, v["clefts"]),
                          coarse)  # fmt: skip


def tune_main(volumes: list[dict[str, Any]]) -> dict[str, Any]:
    """The main job's TTA extraction: threshold x min_voxels, pooled F with both segmentations
    (the main job runs on the predicted one)."""
    log: list[dict[str, Any]] = []
    for thr, mv in itertools.product([0.75, 0.8, 0.85, 0.9, 0.95], [100, 200, 300, 500]):
        s = dataclasses.replace(MAIN_TTA, threshold=thr, min_voxels=mv)
        res = {}
        for name, key in (("predicted", "pred_seg"), ("ground truth", "gt_seg")):
            p = _pooled([_score(main_job_table(v, key, s), v) for v in volumes])
            res[name] = {k: p[k] for k in ("fscore", "tp", "fp", "fn")}
        log.append({"threshold": thr, "min_voxels": mv, **res})
        print(f"threshold {thr} min_voxels {mv}: predicted F {res['predicted']['fscore']:.4f}, "
              f"ground truth F {res['ground truth']['fscore']:.4f}", flush=True)  # fmt: skip
    best = max(log, key=lambda r: r["predicted"]["fscore"])
    print(f"best (predicted): threshold {best['threshold']} min_voxels {best['min_voxels']}")
    return {"current": {"threshold": MAIN_TTA.threshold, "min_voxels": MAIN_TTA.min_voxels},
            "best": {k: best[k] for k in ("threshold", "min_voxels")}, "log": log}  # fmt: skip


def _score(table: PartnerTable, v: dict[str, Any]) -> dict[str, Any]:
    rec = evaluate_partners(table, v["data"].annotations, v["data"].neuron_ids)
    return {**rec.values, "matches": rec.details["matches"]}


def tune(volumes: list[dict[str, Any]]) -> dict[str, Any]:
    """Stage-wise sweep of the extraction settings; best mean pooled F over both segmentations."""

    pruner = PrunerONNX(str(MODELS / "pruner.onnx"))
    ems = {
        (id(v), k): assign_emsynconn(v["raw"], v["proximity"], v[k], v["grid"], pruner,
                                     EMSynConnSettings())
        for v in volumes for k in ("gt_seg", "pred_seg")
    }  # fmt: skip
    combine = False

    def evaluate(s: SynfulSettings) -> tuple[float, dict[str, float]]:
        res = {}
        for seg_key in ("gt_seg", "pred_seg"):
            rows = []
            for v in volumes:
                table = extract_partners(v["synful"], v[seg_key], v["grid"], s, v["clefts"])
                if combine:
                    table = union(ems[(id(v), seg_key)], table)
                rows.append(_score(table, v))
            res[seg_key] = _pooled(rows)["fscore"]
        return 0.5 * (res["gt_seg"] + res["pred_seg"]), res

    log: list[dict[str, Any]] = []
    best: dict[str, SynfulSettings] = {}
    for head in ("vector", "direction", "union"):
        combine = head == "union"
        s = SynfulSettings(head="vector")
        stages: list[dict[str, list[Any]]] = [
            {"threshold": [0.6, 0.7, 0.8, 0.85, 0.9, 0.95], "min_voxels": [50, 200, 500, 1000]},
            {"location": ["edt-max", "centre"], "vector_from": ["location", "mean"],
             "split_by_segment": [True, False]},
            {"score": ["sum"], "min_score": [0.0, 100.0, 300.0, 1000.0, 2000.0]},
        ]  # fmt: skip
        if head == "union":  # emsynconn's rows plus synful's most confident ones
            stages[-1] = {"score": ["sum"], "min_score": [0.0, 300.0, 1000.0, 2000.0, 4000.0]}
        if head == "direction":
            s = SynfulSettings(head="direction")
            stages.append({"distance": ["clefts"], "cleft_width_nm": [0.0, 20.0, 40.0, 80.0]})
            stages.append({"distance": ["segment"], "segment_depth_nm": [20.0, 40.0, 80.0]})
        stages.append({"snap_to_segment": [False, True]})
        kept: tuple[float, SynfulSettings] | None = None
        for grid in stages:
            scored = [kept] if kept is not None else []
            for combo in itertools.product(*grid.values()):
                cand = dataclasses.replace(s, **dict(zip(grid.keys(), combo, strict=True)))
                mean, res = evaluate(cand)
                scored.append((mean, cand))
                log.append({"head": head, **dict(zip(grid.keys(), combo, strict=True)),
                            "mean_f": mean, **res})  # fmt: skip
                what = dict(zip(grid.keys(), combo, strict=True))
                print(f"{head} {what}: mean F {mean:.3f} (GT {res['gt_seg']:.3f}, "
                      f"predicted {res['pred_seg']:.3f})", flush=True)  # fmt: skip
            kept = max(scored, key=lambda t: t[0])
            s = kept[1]
        best[head] = s
        print(f"best {head}: {s}", flush=True)
    return {"best": {k: dataclasses.asdict(v) for k, v in best.items()}, "log": log}


def tally(
    key: str, table: PartnerTable, v: dict[str, Any], seg: np.ndarray,
    acc: dict[str, list[dict[str, Any]]], errors: dict[str, dict[str, int]],
) -> None:  # fmt: skip
    """Score ``table`` on volume ``v`` into ``acc[key]`` and add its error kinds to
    ``errors[key]``."""
    sc = _score(table, v)
    acc.setdefault(key, []).append(sc)
    kinds = error_kinds(table, v["data"].annotations, v["data"].neuron_ids, seg, sc["matches"])
    tot = errors.setdefault(key, dict.fromkeys(kinds, 0))
    for k, n in kinds.items():
        tot[k] += n


def evaluate_all(
    volumes: list[dict[str, Any]], pruner: PrunerONNX, vector: SynfulSettings,
    direction: SynfulSettings, combined: SynfulSettings,
    emsynconn: EMSynConnSettings | None = None,
) -> dict[str, Any]:  # fmt: skip
    acc: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, dict[str, int]] = {}
    for v in volumes:
        for seg_name, seg_key in (("ground truth", "gt_seg"), ("predicted", "pred_seg")):
            seg = v[seg_key]
            grid = v["grid"]
            tables = {
                "synful": extract_partners(v["synful"], seg, grid, vector, v["clefts"]),
                "synful, direction head": extract_partners(
                    v["synful"], seg, grid, direction, v["clefts"]
                ),
                "emsynconn + pruning CNN": assign_emsynconn(
                    v["raw"], v["proximity"], seg, grid, pruner, emsynconn or EMSynConnSettings()
                ),
                "geometric baseline": assign_geometric(v["clefts"], v["proximity"], seg, grid),
            }
            tables["union: synful + emsynconn"] = union(
                tables["synful"], tables["emsynconn + pruning CNN"]
            )
            confident = extract_partners(v["synful"], seg, grid, combined, v["clefts"])
            tables["emsynconn + confident synful rows"] = union(
                tables["emsynconn + pruning CNN"], confident
            )
            # combine = "verified": emsynconn's rows + the synful rows its pruning CNN keeps
            kept = row_scores(tables["synful"], v["raw"], v["proximity"], seg, grid, pruner)
            tables["emsynconn + pruner-verified synful rows"] = union(
                tables["emsynconn + pruning CNN"], tables["synful"].select(kept > VERIFY_KEEP)
            )
            tables["synful confirmed by emsynconn"] = confirmed(
                tables["synful"], tables["emsynconn + pruning CNN"]
            )
            # the main job: synful (TTA) de-duplicated by its coarser `segment` (the truth:
            # itself); and the same without TTA (the main job before)
            coarse = Volume(v["main_seg"] if seg_key == "pred_seg" else seg,
                            grid.voxel_size_nm, grid.offset_nm)  # fmt: skip
            tables["synful + main-segmentation de-duplication"] = deduplicate_by(
                tables["synful"], coarse
            )
            tables["main job: synful (TTA) + main-segmentation de-duplication"] = main_job_table(
                v, seg_key, MAIN_TTA
            )
            dropped = dataclasses.replace(vector, rejoin_small_pieces=False)
            tables["synful, small split pieces dropped"] = extract_partners(
                v["synful"], seg, grid, dropped, v["clefts"]
            )
            for name, table in tables.items():
                tally(f"{name} | {seg_name}", table, v, seg, acc, errors)
    return {key: {**_pooled(rows), "errors": errors[key]} for key, rows in acc.items()}


def add_prediction_arguments(ap: argparse.ArgumentParser) -> None:
    """The options :func:`predictions` reads: phantom and prediction caches, the models, the
    predicted segmentation's fragments."""
    ap.add_argument("--phantom-cache", default=str(ROOT / "runs" / "phantom-cache"))
    ap.add_argument("--cache-dir", default=str(ROOT / "runs" / "partner-cache"))
    ap.add_argument("--synful", default=str(MODELS / "synful.onnx"))
    ap.add_argument("--polarity", default=str(MODELS / "polarity.onnx"))
    ap.add_argument("--polarity-tta", action="store_true",
                    help="average the signed proximity over the 8 mirrorings")  # fmt: skip
    ap.add_argument("--clefts", default=str(MODELS / "clefts.onnx"))
    ap.add_argument("--pruner", default=str(MODELS / "pruner.onnx"))
    ap.add_argument("--neuron-model", default=str(NEURONS))
    ap.add_argument("--fragments", choices=["affinities", "distance_2d"], default="affinities",
                    help="waterz fragments of the predicted segmentation: its own watershed, or "
                    "distance-transform seeds per section (default parameters)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--tune", action="store_true", help="sweep synful's extraction settings")
    ap.add_argument("--tune-main", action="store_true",
                    help="sweep the main job's TTA extraction")  # fmt: skip
    add_prediction_arguments(ap)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--checkpoints",
        nargs="+",
        default=None,
        help="training checkpoints (.pt) or .onnx files to compare (--seeds: dev)",
    )
    ap.add_argument("--train-config", default=None, help="training TOML of --checkpoints")
    ap.add_argument("--dev", action="store_true",
                    help="allow development seeds (selection, not held-out)")  # fmt: skip
    ap.add_argument("--settings", default=None,
                    help="JSON written by --tune (default: the stage defaults)")  # fmt: skip
    ap.add_argument(
        "--grow-threshold",
        type=float,
        default=None,
        help="emsynconn's candidates grown by hysteresis down to this |proximity|",
    )
    ap.add_argument("--emsynconn", type=float, nargs=4, default=None,
                    metavar=("THRESHOLD", "MIN_VOXELS", "MAX_GAP_NM", "PRUNE_THRESHOLD"),
                    help="candidate + pruning settings (default: the stage's)")  # fmt: skip
    ap.add_argument("--only-predict", action="store_true",
                    help="fill the caches of the non-synful predictions, then stop")  # fmt: skip
    args = ap.parse_args()
    if args.tune or args.tune_main or args.checkpoints:
        check_selection_seeds(args.seeds)
    else:
        check_report_seeds(args.seeds, allow_development=args.dev)
    t0 = time.time()
    volumes = []
    # the table and --tune-main score the main job's de-duplication
    scored = not (args.tune or args.checkpoints)
    synful = not (args.only_predict or args.checkpoints)
    for seed in args.seeds:
        volumes.append(predictions(seed, args, synful=synful, main_segmentation=scored))
        print(f"seed {seed} predicted ({time.time() - t0:.0f}s)", flush=True)
    if args.only_predict:
        return
    if args.checkpoints:
        onnx = [Path(c) for c in args.checkpoints if c.endswith(".onnx")]
        pts = [c for c in args.checkpoints if not c.endswith(".onnx")]
        if pts:
            if not args.train_config:
                raise SystemExit("--checkpoints with .pt files needs --train-config")
            onnx += export_checkpoints(args.train_config, pts)
        results = checkpoint_sweep(volumes, onnx, Path(args.cache_dir))
    elif args.tune:
        results = tune(volumes)
    elif args.tune_main:
        results = tune_main(volumes)
    else:
        # the stage's defaults (what `syntk pipeline run` uses) unless --settings says otherwise
        vector = SynfulSettings(**TUNED_DEFAULTS["vector"])
        direction = SynfulSettings(head="direction", **TUNED_DEFAULTS["direction"])
        combined = SynfulSettings(**TUNED_DEFAULTS["vector+emsynconn"])
        if args.settings:
            best = json.loads(Path(args.settings).read_text())["best"]
            vector = SynfulSettings(**best["vector"])
            direction = SynfulSettings(**best["direction"])
            combined = SynfulSettings(**best["union"])
        print(f"synful: {vector}\ndirection head: {direction}\ncombined: {combined}")
        ems = None
        if args.emsynconn:
            thr, min_voxels, gap, prune = args.emsynconn
            candidates = CandidateSettings(threshold=thr, min_voxels=int(min_voxels),
                                           max_gap_nm=gap)  # fmt: skip
            ems = EMSynConnSettings(candidates=candidates, prune_threshold=prune)
        if args.grow_threshold is not None:
            base = ems or EMSynConnSettings()
            ems = dataclasses.replace(base, candidates=dataclasses.replace(
                base.candidates, grow_threshold=args.grow_threshold))  # fmt: skip
        print(f"emsynconn: {ems or EMSynConnSettings()}")
        results = evaluate_all(volumes, PrunerONNX(args.pruner), vector, direction, combined, ems)
        n_true = sum(len(v["data"].annotations.partners) for v in volumes)
        print(f"\nCREMI partner F on phantom seeds {args.seeds} ({n_true} true pairs; pooled)")
        print(f"{'assigner | segmentation':50s}{'F':>7s}{'P':>7s}{'R':>7s}{'TP':>5s}{'FP':>5s}"
              f"{'FN':>5s}  errors")  # fmt: skip
        for key in sorted(results, key=lambda k: (k.split(" | ")[1], k)):
            r = results[key]
            errs = ", ".join(f"{k} {n}" for k, n in r["errors"].items() if n)
            print(f"{key:50s}{r['fscore']:7.3f}{r['precision']:7.3f}{r['recall']:7.3f}"
                  f"{r['tp']:5.0f}{r['fp']:5.0f}{r['fn']:5.0f}  {errs}")  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    print(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
