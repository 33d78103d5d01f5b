"""Three ways to recover the true partners that ``combine = "verified"`` misses with the
ground-truth segmentation (issue 19), on development seeds.

- **clefts verified t=T**: `verified`'s rows plus cleft-seeded candidates: for each predicted
  cleft component (cleft-labels 0.9 / 200 voxels), every ordered pair of distinct segments each
  with >= 20 voxels within 80 nm of it (the geometric baseline's neighbourhood), sites at the
  segment's near-cleft voxel closest to its near-cleft centroid; the pruning CNN scores each
  direction and the better one is kept if it scores above T;
- **relaxed t_low=T**: `verified`'s rows plus EMSynConn candidates the pruning CNN scores in
  (T, 0.5] whose pre component has a candidate kept at 0.5 (more posts of a polyadic synapse);
- **verified d=D**: `verified` with every de-duplication (EMSynConn's, synful's extraction, the
  union) at D nm instead of 400 (two true synapses between the same two neurons closer than
  400 nm are merged into one row at 400);
- **verified, component de-duplication** (``--components``): rows of one segment pair within
  400 nm are one synapse only if they lie within 200 nm or their post sites share a post-side
  component (or their pre sites a pre-side one) of the signed proximity beyond +-0.3, split by
  segment; two synapses between the same two neurons have separate components.

Pooled CREMI partner F and the error kinds of ``eval_partners.error_kinds``; ground-truth
segmentation only, so no predicted segmentation is computed. Predictions come from
``eval_partners.predictions`` (same caches). Development seeds only.

    python benchmarks/partner_recall_levers.py --seeds 1201 ... 1208 9091 ... 9098 --json a.json
    python benchmarks/partner_recall_levers.py --seeds 9401 ... 9408 9601 ... 9608 \\
        --clefts-keep --relaxed-keep 0.3 --distances 300 --json b.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
from eval_partners import (
    MODELS,
    add_prediction_arguments,
    pooled_summary,
    predictions,
    tally,
)

from synapse_toolkit.data import PartnerTable
from synapse_toolkit.evaluation.phantom_seeds import check_selection_seeds
from synapse_toolkit.synapses.assigners import (
    EMSynConnSettings,
    anchor_voxel,
    assign_emsynconn,
    cleft_neighbourhoods,
)
from synapse_toolkit.synapses.pruning import PrunerONNX, row_scores
from synapse_toolkit.synapses.synful import (
    TUNED_DEFAULTS,
    SynfulSettings,
    extract_partners,
    union,
)
from synapse_toolkit.synapses.targets import Grid


def cleft_pair_rows(
    clefts: np.ndarray, seg: np.ndarray, grid: Grid, reach_nm: float = 80.0, min_voxels: int = 20
) -> PartnerTable:
    """Every ordered pair of distinct segments near each cleft component (synapse id = the
    component's number), sites as in the geometric baseline."""
    rows: dict[str, list[Any]] = {k: [] for k in ("pre", "post", "ps", "qs", "sid")}
    for k, big, near in cleft_neighbourhoods(clefts, seg, grid, reach_nm, min_voxels):
        start = np.asarray([b.start for b in big])
        sites = {sid: anchor_voxel(mask) + start for sid, mask in near}
        for a, b in ((a, b) for a in sites for b in sites if a != b):
            rows["pre"].append(sites[a])
            rows["post"].append(sites[b])
            rows["ps"].append(a)
            rows["qs"].append(b)
            rows["sid"].append(k)
    if not rows["pre"]:
        return PartnerTable.empty()
    return PartnerTable(
        grid.to_world(np.stack(rows["pre"]).astype(float)),
        grid.to_world(np.stack(rows["post"]).astype(float)),
        np.asarray(rows["ps"], np.uint64), np.asarray(rows["qs"], np.uint64),
        np.ones(len(rows["pre"])), np.asarray(rows["sid"], np.uint64),
    )  # fmt: skip


def better_direction(table: PartnerTable, scores: np.ndarray) -> PartnerTable:
    """Per (cleft, unordered segment pair) the direction with the higher score (the scores set
    on the rows)."""
    best: dict[tuple[int, int, int], int] = {}
    for i in range(len(table)):
        a, b = int(table.pre_segment[i]), int(table.post_segment[i])
        key = (int(table.synapse_id[i]), min(a, b), max(a, b))
        if key not in best or scores[i] > scores[best[key]]:
            best[key] = i
    keep = np.zeros(len(table), bool)
    keep[list(best.values())] = True
    return dataclasses.replace(table, score=np.asarray(scores, np.float64)).select(keep)


def verified(v: dict[str, Any], pruner: PrunerONNX, distance_nm: float = 400.0) -> PartnerTable:
    """The stage's ``combine = "verified"`` with every de-duplication at ``distance_nm``."""
    seg, grid = v["gt_seg"], v["grid"]
    ems = assign_emsynconn(v["raw"], v["proximity"], seg, grid, pruner,
                           EMSynConnSettings(dedup_distance_nm=distance_nm))  # fmt: skip
    settings = SynfulSettings(**{**TUNED_DEFAULTS["vector+verified"],
                                 "dedup_distance_nm": distance_nm})  # fmt: skip
    syn = extract_partners(v["synful"], seg, grid, settings, v["clefts"])
    kept = row_scores(syn, v["raw"], v["proximity"], seg, grid, pruner)
    return union(ems, syn.select(kept > 0.5), distance_nm)


def site_components(
    proximity: np.ndarray, seg: np.ndarray, grid: Grid, table: PartnerTable, threshold: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the component id (split by segment; 0 = none) of the pre side (proximity >
    threshold) and of the post side (< -threshold) most common within 3 px in-plane of its
    pre and post site."""
    segm = seg.astype(np.uint64)
    out = []
    for side, sites in ((proximity > threshold, table.pre_nm), (proximity < -threshold,
                                                                table.post_nm)):  # fmt: skip
        lab = cc3d.connected_components(np.where(side, segm, 0), connectivity=26)
        ids = np.zeros(len(table), np.int64)
        for i, c in enumerate(np.round(grid.to_voxel(sites)).astype(int)):
            box = lab[c[0], max(c[1] - 3, 0) : c[1] + 4, max(c[2] - 3, 0) : c[2] + 4]
            found, n = np.unique(box[box != 0], return_counts=True)
            ids[i] = int(found[np.argmax(n)]) if len(found) else 0
        out.append(ids)
    return out[0], out[1]


def component_deduplicate(
    table: PartnerTable, pre_comp: np.ndarray, post_comp: np.ndarray, floor_nm: float = 200.0
) -> PartnerTable:
    """Like :func:`~synapse_toolkit.synapses.partners.deduplicate` at 400 nm (higher score
    kept), but rows farther apart than ``floor_nm`` are one synapse only if they share a pre-side
    or post-side component."""
    kept: list[int] = []
    for i in np.argsort(-table.score, kind="stable"):
        dup = False
        for j in kept:
            if (table.pre_segment[i] == 0 or table.pre_segment[i] != table.pre_segment[j]
                    or table.post_segment[i] != table.post_segment[j]):  # fmt: skip
                continue
            gap = max(np.linalg.norm(table.pre_nm[i] - table.pre_nm[j]),
                      np.linalg.norm(table.post_nm[i] - table.post_nm[j]))  # fmt: skip
            shared = (post_comp[i] != 0 and post_comp[i] == post_comp[j]) or (
                pre_comp[i] != 0 and pre_comp[i] == pre_comp[j])  # fmt: skip
            if gap <= floor_nm or (gap <= 400.0 and shared):
                dup = True
                break
        if not dup:
            kept.append(int(i))
    keep = np.zeros(len(table), bool)
    keep[kept] = True
    return table.select(keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--clefts-keep", type=float, nargs="*", default=[0.5, 0.7, 0.9, 0.95])
    ap.add_argument("--relaxed-keep", type=float, nargs="*", default=[0.1, 0.2, 0.3, 0.4])
    ap.add_argument("--distances", type=float, nargs="*", default=[100, 150, 200, 250, 300])
    ap.add_argument("--components", action="store_true",
                    help="also the component de-duplication (see above)")  # fmt: skip
    ap.add_argument("--json", default=None)
    add_prediction_arguments(ap)
    args = ap.parse_args()
    check_selection_seeds(args.seeds)
    pruner = PrunerONNX(str(MODELS / "pruner.onnx"))
    rows: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, dict[str, int]] = {}
    for seed in args.seeds:
        v = predictions(seed, args, segmentations=False)
        seg, grid = v["gt_seg"], v["grid"]
        base = verified(v, pruner)
        tables = {"verified (d=400)": base}
        if args.clefts_keep:
            cand = cleft_pair_rows(v["clefts"], seg, grid)
            if len(cand):
                cand = better_direction(
                    cand, row_scores(cand, v["raw"], v["proximity"], seg, grid, pruner)
                )
            for t in args.clefts_keep:
                extra = cand.select(cand.score > t) if len(cand) else cand
                tables[f"clefts verified t={t:g}"] = union(base, extra)
        if args.relaxed_keep:
            every = assign_emsynconn(v["raw"], v["proximity"], seg, grid, pruner,
                                     EMSynConnSettings(prune_threshold=-1.0))  # fmt: skip
            kept = every.score > 0.5
            polyadic = np.isin(every.synapse_id, every.synapse_id[kept])
            for t in args.relaxed_keep:
                extra = every.select(polyadic & ~kept & (every.score > t))
                tables[f"relaxed t_low={t:g}"] = union(base, extra)
        for d in args.distances:
            tables[f"verified d={d:g}"] = verified(v, pruner, d)
        if args.components:
            every_row = verified(v, pruner, 0.0)
            pre_comp, post_comp = site_components(v["proximity"], seg, grid, every_row)
            tables["verified, component de-duplication"] = component_deduplicate(
                every_row, pre_comp, post_comp
            )
        for name, table in tables.items():
            tally(name, table, v, seg, rows, errors)
        print(f"seed {seed}", flush=True)
    out: dict[str, Any] = {"seeds": args.seeds, **pooled_summary(rows, errors, 26)}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
