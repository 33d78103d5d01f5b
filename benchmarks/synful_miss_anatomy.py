"""What the true partner pairs that ``synful`` misses look like, on development seeds only.

With the ground-truth segmentation (so no segmentation error hides a pair) and the stage's tuned
vector-head settings, every true pair of each phantom seed is marked found or missed, with:

- ``later_post``: the post site is not the first post of its synapse (polyadic synapses give their
  second and later posts a cleft of 0.75x the radius, ``docs/phantom.md``);
- ``cleft_voxels``: voxels of the synapse's cleft in the truth;
- ``mask_max`` / ``mask_voxels_<threshold>``: the synful mask's maximum, and its voxels above the
  extraction threshold (0.9), inside the true post neuron within (2, 40, 40) voxels of the post
  site (the extraction keeps components of at least ``min_voxels`` = 200 such voxels).

Predictions come from ``eval_partners.py``'s cache. Refuses seeds outside the development sets,
so held-out seeds stay unread::

    python benchmarks/synful_miss_anatomy.py --seeds 1201 1202 1203 1204 1205 1206 1207 1208 \\
        9091 9092 9093 9094 9095 9096 9097 9098 --json benchmarks/results/synful_miss_anatomy.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from eval_partners import _score, add_prediction_arguments, predictions

from synapse_toolkit.evaluation.phantom_seeds import check_selection_seeds
from synapse_toolkit.metrics.cremi_partners import lookup_labels, pair_locations
from synapse_toolkit.phantom.store import read_phantom_truth
from synapse_toolkit.synapses.synful import TUNED_DEFAULTS, SynfulSettings, extract_partners
from synapse_toolkit.synapses.train_detectors import phantom_file

#: half-size (z, y, x voxels) of the window around a post site where the mask is read
WINDOW = (2, 40, 40)
#: the extraction whose misses are looked at: the stage's tuned vector head
SETTINGS = SynfulSettings(head="vector", **TUNED_DEFAULTS["vector"])


def seed_rows(seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per true pair of ``seed``: found or missed, and what it looks like."""
    v = predictions(seed, args)
    data = v["data"]
    gt = v["gt_seg"]
    res = np.asarray(data.neuron_ids.voxel_size_nm)
    _, g_post = pair_locations(data.annotations, np.asarray(data.neuron_ids.offset_nm))
    table = extract_partners(v["synful"], gt, v["grid"], SETTINGS, v["clefts"])
    found = {j for _, j, _ in _score(table, v)["matches"]}
    truth = read_phantom_truth(phantom_file(seed, args.phantom_cache))
    first_post: dict[int, int] = {}  # synapse id -> its first post site
    synapse_of: dict[int, int] = {}  # post site -> synapse id
    for sid, _pre, post, *_ in truth.partners.astype(np.int64):
        first_post.setdefault(int(sid), int(post))
        synapse_of[int(post)] = int(sid)
    cleft_ids, cleft_sizes = np.unique(data.clefts.read(), return_counts=True)
    cleft_voxels = dict(zip(cleft_ids.tolist(), cleft_sizes.tolist(), strict=True))
    post_label = lookup_labels(gt, g_post, res, "half_away")[0]
    mask = v["synful"][0]
    rows = []
    for j, post_site in enumerate(data.annotations.partners[:, 1].astype(np.int64)):
        sid = synapse_of.get(int(post_site), -1)
        centre = np.clip(np.round(g_post[j] / res).astype(int), 0, np.asarray(gt.shape) - 1)
        lo = np.maximum(centre - WINDOW, 0)
        hi = centre + np.asarray(WINDOW) + 1
        win = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        inside = gt[win] == post_label[j]
        m = mask[win][inside]
        rows.append({
            "seed": seed, "pair": j, "found": j in found,
            "later_post": sid >= 0 and first_post[sid] != int(post_site),
            "cleft_voxels": int(cleft_voxels.get(sid, 0)),
            "mask_max": float(m.max()) if m.size else 0.0,
            f"mask_voxels_{SETTINGS.threshold}": int((m > SETTINGS.threshold).sum()),
        })  # fmt: skip
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def share(rs: list[dict[str, Any]], test: Any) -> float:
        return round(float(np.mean([test(r) for r in rs])), 3) if rs else 0.0

    thr, min_voxels = SETTINGS.threshold, SETTINGS.min_voxels
    out: dict[str, Any] = {}
    for name, rs in (("found", [r for r in rows if r["found"]]),
                     ("missed", [r for r in rows if not r["found"]])):  # fmt: skip
        out[name] = {
            "pairs": len(rs),
            "later_post": share(rs, lambda r: r["later_post"]),
            "median_cleft_voxels": float(np.median([r["cleft_voxels"] for r in rs])) if rs else 0,
            f"mask_max_below_{thr}": share(rs, lambda r: r["mask_max"] < thr),
            f"under_{min_voxels}_mask_voxels_above_{thr}": share(
                rs, lambda r: r[f"mask_voxels_{thr}"] < min_voxels
            ),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--json", default=None)
    add_prediction_arguments(ap)
    args = ap.parse_args()
    check_selection_seeds(args.seeds)  # an analysis that guides the next choice
    rows = [r for seed in args.seeds for r in seed_rows(seed, args)]
    result = {"seeds": args.seeds, "settings": TUNED_DEFAULTS["vector"], "summary": summary(rows),
              "pairs": rows}  # fmt: skip
    print(json.dumps(result["summary"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
