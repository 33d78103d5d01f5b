"""Which true partners ``combine = "verified"`` misses with the ground-truth segmentation, by
phantom synapse type (development seeds only).

For every true pair of each phantom: its synapse type (the phantom's truth), whether it is matched,
whether EMSynConn holds an unpruned candidate for it (same pre and post neuron, post site within
400 nm), and whether `verified` holds a row of the same pair (a twin or duplicate merged away) or
of the reverse pair near it. Prints per type: pairs, misses, misses without a candidate, misses
with a row of the same pair, and pairs without a candidate; ``--json`` writes every pair's row and
that summary. Predictions come from ``eval_partners.predictions`` (same caches).

    python benchmarks/partner_miss_types.py --seeds 1201 ... 1208 9091 ... 9098 --json out.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from eval_partners import MODELS, _score, add_prediction_arguments, predictions
from partner_recall_levers import verified

from synapse_toolkit.data import PartnerTable
from synapse_toolkit.evaluation.phantom_seeds import check_selection_seeds
from synapse_toolkit.metrics.cremi_partners import lookup_labels, pair_locations
from synapse_toolkit.phantom.store import site_types
from synapse_toolkit.synapses.assigners import EMSynConnSettings, assign_emsynconn
from synapse_toolkit.synapses.pruning import PrunerONNX
from synapse_toolkit.synapses.train_detectors import phantom_file

NEAR_NM = 400.0  # CREMI's matching distance


def _row_labels(
    table: PartnerTable, v: dict[str, Any], off: np.ndarray, res: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Post sites (nm) and the true neurons at each row's pre and post site."""
    if not len(table):
        empty = np.zeros(0, np.uint64)
        return np.zeros((0, 3)), empty, empty
    pre, post = pair_locations(table.to_annotations(v["data"].annotations.offset_nm), off)
    gt = v["gt_seg"]
    return (post, lookup_labels(gt, pre, res, "half_away")[0],
            lookup_labels(gt, post, res, "half_away")[0])  # fmt: skip


def volume_pairs(seed: int, args: argparse.Namespace, pruner: PrunerONNX) -> list[dict[str, Any]]:
    """One row per true pair of phantom ``seed`` (see the module docstring)."""
    v = predictions(seed, args, segmentations=False)
    table = verified(v, pruner)
    matched = {j for _, j, _ in _score(table, v)["matches"]}
    every = assign_emsynconn(v["raw"], v["proximity"], v["gt_seg"], v["grid"], pruner,
                             EMSynConnSettings(prune_threshold=-1.0))  # fmt: skip
    ann, ids = v["data"].annotations, v["data"].neuron_ids
    off, res = np.asarray(ids.offset_nm), np.asarray(ids.voxel_size_nm)
    g_pre, g_post = pair_locations(ann, off)
    t_pre = lookup_labels(v["gt_seg"], g_pre, res, "half_away")[0]
    t_post = lookup_labels(v["gt_seg"], g_post, res, "half_away")[0]
    kind = dict(zip(ann.ids.tolist(),
                    site_types(phantom_file(seed, args.phantom_cache), ann.ids).tolist(),
                    strict=True))  # fmt: skip
    c_post, c_pre_l, c_post_l = _row_labels(every, v, off, res)
    r_post, r_pre_l, r_post_l = _row_labels(table, v, off, res)
    out = []
    for j, (pre_id, _) in enumerate(ann.partners.tolist()):
        near_c = np.linalg.norm(c_post - g_post[j], axis=1) <= NEAR_NM
        near_r = np.linalg.norm(r_post - g_post[j], axis=1) <= NEAR_NM
        out.append({
            "seed": seed, "pair": j, "type": kind[pre_id], "matched": j in matched,
            "candidate": bool((near_c & (c_pre_l == t_pre[j]) & (c_post_l == t_post[j])).any()),
            "row_same_pair": bool((near_r & (r_pre_l == t_pre[j]) & (r_post_l == t_post[j])).any()),
            "row_reversed": bool((near_r & (r_pre_l == t_post[j]) & (r_post_l == t_pre[j])).any()),
        })  # fmt: skip
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per synapse type: pairs, misses and their kinds, pairs without a candidate."""
    out: dict[str, dict[str, int]] = {}
    for t in sorted({r["type"] for r in rows}):
        of = [r for r in rows if r["type"] == t]
        miss = [r for r in of if not r["matched"]]
        out[str(t)] = {
            "pairs": len(of),
            "missed": len(miss),
            "missed_without_candidate": sum(not r["candidate"] for r in miss),
            "missed_with_a_row_of_the_pair": sum(r["row_same_pair"] for r in miss),
            "missed_reversed": sum(r["row_reversed"] for r in miss),
            "pairs_without_candidate": sum(not r["candidate"] for r in of),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--json", default=None)
    add_prediction_arguments(ap)
    args = ap.parse_args()
    check_selection_seeds(args.seeds)
    pruner = PrunerONNX(str(MODELS / "pruner.onnx"))
    rows = [r for seed in args.seeds for r in volume_pairs(seed, args, pruner)]
    by_type = summary(rows)
    for t, s in by_type.items():
        print(f"type {t}: " + ", ".join(f"{k} {n}" for k, n in s.items()))
    if args.json:
        out = {"seeds": args.seeds, "polarity": args.polarity, "by_type": by_type, "pairs": rows}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
