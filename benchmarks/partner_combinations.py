"""Ways for synful's rows and EMSynConn's to help each other, on development seeds.

- **orient**: an EMSynConn row (A -> B) is flipped when synful reports B -> A for that segment
  pair and not A -> B (for EMSynConn's reversed partners);
- **fill**: EMSynConn's rows plus synful's rows whose post site is farther than ``--fill-nm``
  from every EMSynConn post site (synful only where EMSynConn found no synapse);
- **vote**: EMSynConn's rows plus the candidates its pruning CNN rejected whose segment pair
  synful reports with a post site within 400 nm;
- **more posts**: EMSynConn's rows plus synful's rows that share an EMSynConn row's pre segment
  with post sites within 400 nm, for segment pairs EMSynConn does not have (polyadic synapses);
- **verified**: EMSynConn's rows plus synful's rows that the pruning CNN keeps (score > 0.5 on
  the candidate patch centred between the row's pre and post sites, with its two segments;
  ``--verify-keep`` adds other cut-offs as ``verified t=T``); ``--veto-keep`` adds the main
  job's rows that the pruning CNN scores above T (``main job vetoed t=T``);
- synful with small split pieces dropped or rejoined (``rejoin_small_pieces``), each with and
  without de-duplication by the main job's coarser ``segment``
  (:func:`~synapse_toolkit.synapses.partners.deduplicate_by`; the last is the main job's);

beside EMSynConn (+ pruning CNN) and the plain union, with the ground-truth and the predicted
segmentation; pooled CREMI partner F and the error kinds of ``eval_partners.error_kinds``.
Predictions come from ``eval_partners.predictions`` (same caches). Development seeds only.

    python benchmarks/partner_combinations.py --seeds 1201 ... 1208 9091 ... 9098 \\
        9401 ... 9408 9601 ... 9608 --json benchmarks/results/partner_combinations_dev.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from eval_partners import (
    MODELS,
    add_prediction_arguments,
    pooled_summary,
    predictions,
    tally,
)

from synapse_toolkit.data import PartnerTable, Volume
from synapse_toolkit.evaluation.phantom_seeds import check_selection_seeds
from synapse_toolkit.synapses.assigners import EMSynConnSettings, assign_emsynconn
from synapse_toolkit.synapses.partners import deduplicate_by
from synapse_toolkit.synapses.pruning import PrunerONNX, row_scores
from synapse_toolkit.synapses.synful import (
    TUNED_DEFAULTS,
    SynfulSettings,
    extract_partners,
    union,
)


def orient(table: PartnerTable, reference: PartnerTable) -> tuple[PartnerTable, int]:
    """``table`` with each row flipped whose segment pair ``reference`` has only the other way
    round; and how many were flipped."""
    pairs = set(zip(reference.pre_segment.tolist(), reference.post_segment.tolist(), strict=True))
    flip = np.array(
        [(b, a) in pairs and (a, b) not in pairs
         for a, b in zip(table.pre_segment.tolist(), table.post_segment.tolist(), strict=True)],
        dtype=bool,
    )  # fmt: skip
    if not flip.any():
        return table, 0
    return dataclasses.replace(
        table,
        pre_nm=np.where(flip[:, None], table.post_nm, table.pre_nm),
        post_nm=np.where(flip[:, None], table.pre_nm, table.post_nm),
        pre_segment=np.where(flip, table.post_segment, table.pre_segment),
        post_segment=np.where(flip, table.pre_segment, table.post_segment),
    ), int(flip.sum())


def fill(table: PartnerTable, extra: PartnerTable, distance_nm: float) -> PartnerTable:
    """``table``'s rows plus ``extra``'s rows whose post site lies farther than ``distance_nm``
    from every post site of ``table`` (joined by :func:`union`)."""
    if len(table) and len(extra):
        gap = np.linalg.norm(extra.post_nm[:, None] - table.post_nm[None], axis=2).min(axis=1)
        extra = extra.select(gap > distance_nm)
    return union(table, extra)


def vote(table: PartnerTable, rejected: PartnerTable, reference: PartnerTable) -> PartnerTable:
    """``table``'s rows plus the ``rejected`` rows whose segment pair ``reference`` reports with a
    post site within 400 nm (joined by :func:`union`)."""
    keep = np.zeros(len(rejected), bool)
    for i in range(len(rejected)):
        same = (reference.pre_segment == rejected.pre_segment[i]) & (
            reference.post_segment == rejected.post_segment[i])  # fmt: skip
        near = np.linalg.norm(reference.post_nm - rejected.post_nm[i], axis=1) <= 400.0
        keep[i] = bool((same & near).any())
    return union(table, rejected.select(keep))


def more_posts(table: PartnerTable, extra: PartnerTable) -> PartnerTable:
    """``table``'s rows plus ``extra``'s rows whose pre segment is that of a ``table`` row with
    a post site within 400 nm, for segment pairs ``table`` does not have (joined by
    :func:`union`)."""
    pairs = set(zip(table.pre_segment.tolist(), table.post_segment.tolist(), strict=True))
    keep = np.zeros(len(extra), bool)
    for i in range(len(extra)):
        near = np.linalg.norm(table.post_nm - extra.post_nm[i], axis=1) <= 400.0
        same_pre = bool((near & (table.pre_segment == extra.pre_segment[i])).any())
        keep[i] = same_pre and (int(extra.pre_segment[i]), int(extra.post_segment[i])) not in pairs
    return union(table, extra.select(keep))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--fill-nm", type=float, default=400.0, help="(the de-duplication distance)")
    ap.add_argument("--verify-keep", type=float, nargs="*", default=[],
                    help="more pruner cut-offs for `verified` (always run at 0.5)")  # fmt: skip
    ap.add_argument("--veto-keep", type=float, nargs="*", default=[],
                    help="pruner cut-offs for `main job vetoed`")  # fmt: skip
    ap.add_argument("--json", default=None)
    add_prediction_arguments(ap)
    args = ap.parse_args()
    check_selection_seeds(args.seeds)
    pruner = PrunerONNX(str(MODELS / "pruner.onnx"))
    vector = SynfulSettings(**TUNED_DEFAULTS["vector"])
    plain = dataclasses.replace(vector, rejoin_small_pieces=False)
    rows: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, dict[str, int]] = {}
    flipped = {"gt_seg": 0, "pred_seg": 0}
    for seed in args.seeds:
        v = predictions(seed, args)
        for seg_key in ("gt_seg", "pred_seg"):
            seg = v[seg_key]
            ems = assign_emsynconn(v["raw"], v["proximity"], seg, v["grid"], pruner,
                                   EMSynConnSettings())  # fmt: skip
            unpruned = assign_emsynconn(v["raw"], v["proximity"], seg, v["grid"], pruner,
                                        EMSynConnSettings(prune_threshold=-1.0))  # fmt: skip
            syn = extract_partners(v["synful"], seg, v["grid"], vector, v["clefts"])
            kept = row_scores(syn, v["raw"], v["proximity"], seg, v["grid"], pruner)
            dropped = extract_partners(v["synful"], seg, v["grid"], plain, v["clefts"])
            oriented, n = orient(ems, syn)
            flipped[seg_key] += n
            coarse = Volume(v["main_seg"] if seg_key == "pred_seg" else seg,
                            v["grid"].voxel_size_nm, v["grid"].offset_nm)  # fmt: skip
            tables = {"emsynconn + pruning CNN": ems, "orient": oriented,
                      "fill": fill(ems, syn, args.fill_nm), "union": union(ems, syn),
                      "vote": vote(ems, unpruned.select(unpruned.score <= 0.5), syn),
                      "more posts": more_posts(ems, syn),
                      "verified": union(ems, syn.select(kept > 0.5)),
                      "synful, small split pieces dropped": dropped,
                      "synful, dropped + main-segmentation de-duplication":
                          deduplicate_by(dropped, coarse),
                      "synful (pieces rejoined)": syn,
                      "synful + main-segmentation de-duplication (main job)":
                          deduplicate_by(syn, coarse)}  # fmt: skip
            for t in args.verify_keep:
                tables[f"verified t={t}"] = union(ems, syn.select(kept > t))
            if args.veto_keep:
                main = tables["synful + main-segmentation de-duplication (main job)"]
                vetoed = row_scores(main, v["raw"], v["proximity"], seg, v["grid"], pruner)
                for t in args.veto_keep:
                    tables[f"main job vetoed t={t}"] = main.select(vetoed > t)
            for name, table in tables.items():
                tally(f"{name} | {seg_key}", table, v, seg, rows, errors)
        print(f"seed {seed}", flush=True)
    out: dict[str, Any] = {"seeds": args.seeds, "fill_nm": args.fill_nm, "flipped": flipped}
    out.update(pooled_summary(rows, errors))
    print(f"rows flipped: {flipped}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
