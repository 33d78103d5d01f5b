"""FIB affinity models on blurred / low-contrast copies (the unseen FIB volumes are less sharp than
gala), thresholds without test labels.

    python benchmarks/fib_perturbed.py score --model A --model B [--json out.json]
        the gala test volume and its perturbed copies, each model at its stored threshold
        (25 nm border mask); the best-on-test threshold (stored scoring) as a second, optimistic
        figure
    python benchmarks/fib_perturbed.py store --model M.onnx --checkpoint runs/X/best.pt
        store the waterz setting chosen by the checkpoint's training-time validation (the mean
        over the validation volumes of the training config, e.g. the crop and perturbed copies)
    python benchmarks/fib_perturbed.py quality --model A --raw F.h5:DATASET [--crop ...]
        label-free: mean |single pass - 8-mirror TTA| of the affinities (TTA disagreement)

Copies are :data:`synapse_toolkit.evaluation.fib.BLUR_COPIES`. The waterz setting of a FIB model
is chosen with `syntk evaluate fib-select --copies [--fragments] --write` (the crop and two of
these copies). Logic is in synapse_toolkit.evaluation.fib.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from synapse_toolkit.evaluation import fib


def store(model: str, checkpoint: str) -> dict[str, Any]:
    from synapse_toolkit.nn.checkpoint import load_state
    from synapse_toolkit.nn.export import update_metadata

    state = load_state(checkpoint)
    val = state.get("validation")
    if not val:
        raise SystemExit(f"{checkpoint}: no validation stored (not a best.pt)")
    cfg = state["train_config"]
    tr = cfg["training"]
    names = [
        f"roi {v.get('roi')}" + (f" perturbed {v['perturb']}" if v.get("perturb") else "")
        for v in cfg["data"]["validation"]
    ]
    ths = tr["validation_thresholds"]
    b = val["best"]
    agg = {
        "scoring": tr["validation_scoring"],
        "threshold": round(float(b["threshold"]), 3),
        "chosen_on": f"training-time validation of iteration {val['iteration']} (single pass, "
        f"no border mask): best mean cremi_score over {', '.join(names)} of "
        f"{cfg['data']['validation'][0]['raw']}, thresholds {ths[0]}..{ths[-1]}",
        "selection_scores": {k: round(float(b[k]), 4) for k in ("voi", "arand", "cremi_score")},
    }
    updates = {"agglomeration": agg, "voxel_size_nm": list(fib.GALA_VOXEL_SIZE_NM)}
    return {**agg, "written": update_metadata(model, updates)}


def score(models: list[str], threads: int, only: list[str] | None) -> dict[str, Any]:
    test = fib.gala_volume("test")
    sc = fib.make_scorer(test.voxel_size_nm, fib.BORDER_THRESHOLD_NM)
    out: dict[str, Any] = {}
    for vol in fib.blurred_copies(test, [n for n, _ in fib.BLUR_COPIES if not only or n in only]):
        for model in models:
            t = time.perf_counter()
            m = fib.model_affinities(model, vol.raw, vol.voxel_size_nm, n_threads=threads)
            agg = m.agglomeration or {}
            frags = agg.get("fragments")
            row = fib.at(m.affinities, vol.truth, sc, agg["scoring"], agg["threshold"], frags)
            rows = fib.sweep(m.affinities, vol.truth, sc, scorings=[agg["scoring"]],
                             fragments=frags)  # fmt: skip
            opt = fib.best(rows)
            curve = {f"{r['threshold']:.2f}": round(r["cremi_score"], 4) for r in rows}
            out.setdefault(vol.name, {})[model] = {
                "at_model_threshold": row, "best_on_test": opt, "cremi_by_threshold": curve,
            }  # fmt: skip
            print(
                f"{vol.name:38s} {model:55s} {row['scoring']}@{row['threshold']:.2f} "
                f"VOI {row['voi']:.3f} CREMI {row['cremi_score']:.3f} "
                f"(best on test {opt['cremi_score']:.3f}) {time.perf_counter() - t:.0f}s",
                file=sys.stderr,
            )
    return out


def quality(model: str, raw_spec: str, crop: str | None, threads: int) -> dict[str, Any]:
    raw = fib.read_array(raw_spec, "raw")
    if crop:
        raw = raw[tuple(slice(*map(int, p.split(":"))) for p in crop.split(","))]
    single = fib.model_affinities(model, raw, fib.GALA_VOXEL_SIZE_NM, n_threads=threads)
    tta = fib.model_affinities(model, raw, fib.GALA_VOXEL_SIZE_NM, tta=True, n_threads=threads)
    diff = np.abs(single.affinities - tta.affinities)
    boundary = tta.affinities.min(axis=0) < 0.5
    return {
        "model": model,
        "raw": raw_spec,
        "shape": list(raw.shape),
        "tta_disagreement": round(float(diff.mean()), 4),
        "boundary_fraction": round(float(boundary.mean()), 4),
        "mean_affinity": round(float(tta.affinities.mean()), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["store", "score", "quality"])
    ap.add_argument("--checkpoint")
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--raw")
    ap.add_argument("--crop")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--copy", action="append", help="score only these copies (names)")
    a = ap.parse_args()
    res: Any
    if a.what == "store":
        res = store(a.model[0], a.checkpoint)
    elif a.what == "score":
        res = score(a.model, a.threads, a.copy)
    else:
        res = [quality(m, a.raw, a.crop, a.threads) for m in a.model]
    text = json.dumps(res, indent=1, default=str)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
