"""FIB affinity models on blurred / low-contrast copies (the unseen FIB volumes are less sharp than
gala), thresholds without test labels.

    python benchmarks/fib_perturbed.py select --model M.onnx [--fragments] [--write]
        choose the waterz scoring and threshold (with --fragments also the fragments: waterz's
        own or distance-transform seeds per section) on the validation crop (gala train, x in
        [150, 200)) AND its perturbed copies (mean CREMI score over copies and TTA off/on; no
        border mask, as `syntk evaluate fib-select`); --write stores it in the model's metadata
    python benchmarks/fib_perturbed.py score --model A --model B [--json out.json]
        the gala test volume and its perturbed copies, each model at its stored threshold
        (25 nm border mask); the best-on-test threshold (stored scoring) as a second, optimistic
        figure
    python benchmarks/fib_perturbed.py store --model M.onnx --checkpoint runs/X/best.pt
        store the waterz setting chosen by the checkpoint's training-time validation (the mean
        over the validation volumes of the training config, e.g. the crop and perturbed copies)
    python benchmarks/fib_perturbed.py quality --model A --raw F.h5:DATASET [--crop ...]
        label-free: mean |single pass - 8-mirror TTA| of the affinities (TTA disagreement)

Copies come from :func:`synapse_toolkit.nn.consistency.perturb_volume` without matching (the
affinity-unet stage matches grey values itself). Logic is in synapse_toolkit.evaluation.fib.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from synapse_toolkit.evaluation import fib
from synapse_toolkit.nn.consistency import perturb_volume

#: (name, perturbation) applied to the raw grey values; the stage then matches intensities
COPIES: list[tuple[str, dict[str, Any]]] = [
    ("unchanged", {}),
    ("blur sigma 1", {"blur_sigma": 1.0}),
    ("blur sigma 1.5", {"blur_sigma": 1.5}),
    ("blur sigma 2", {"blur_sigma": 2.0}),
    ("contrast x0.5", {"contrast": 0.5}),
    ("blur 1.5, contrast x0.6, noise sd 6", {"blur_sigma": 1.5, "contrast": 0.6, "noise_std": 6}),
]
#: the copies of the validation crop used for the threshold choice (as the v2 training config)
SELECT_COPIES = [COPIES[0], COPIES[1], COPIES[5]]


def copies(vol: fib.FibVolume, which: list[tuple[str, dict[str, Any]]]) -> list[fib.FibVolume]:
    out = []
    for name, spec in which:
        raw = perturb_volume(vol.raw, {**spec, "match": False}, name) if spec else vol.raw
        out.append(fib.FibVolume(name, raw, vol.truth, vol.voxel_size_nm))
    return out


def select(model: str, write: bool, threads: int, fragments: bool = False) -> dict[str, Any]:
    from synapse_toolkit.evaluation.isbi import fragment_grid

    val = fib.gala_validation_crop()
    score = fib.make_scorer(val.voxel_size_nm, 0.0)
    grid = fragment_grid() if fragments else [{"method": "affinities"}]
    tables: dict[str, dict[tuple[str, str, float], float]] = {}
    for vol in copies(val, SELECT_COPIES):
        for tta in (False, True):
            m = fib.model_affinities(model, vol.raw, vol.voxel_size_nm, tta=tta, n_threads=threads)
            table = tables.setdefault(f"{vol.name}, tta={str(tta).lower()}", {})
            for fs in grid:
                frag = None if fs["method"] == "affinities" else fs
                for r in fib.sweep(m.affinities, vol.truth, score, fragments=frag):
                    table[(json.dumps(fs), r["scoring"], r["threshold"])] = r["cremi_score"]
            print(f"select: {vol.name} tta={tta} done", file=sys.stderr)
    keys = list(next(iter(tables.values())))
    mean = {k: float(np.mean([t[k] for t in tables.values()])) for k in keys}
    best = min(keys, key=lambda k: (mean[k], k[2]))
    frag_setting, scoring, threshold = json.loads(best[0]), best[1], best[2]
    tried = "waterz's own or distance-seeded fragments x " if fragments else ""
    choice: dict[str, Any] = {
        "scoring": scoring,
        "threshold": threshold,
        **({"fragments": frag_setting} if frag_setting["method"] != "affinities" else {}),
        "chosen_on": f"{val.name} and perturbed copies of it "
        f"({', '.join(n for n, _ in SELECT_COPIES[1:])}): best mean cremi_score (no border mask; "
        f"mean over copies and affinity-unet tta=false and tta=true) over {tried}scorings "
        f"{', '.join(fib.SCORINGS)} x thresholds {fib.THRESHOLDS[0]}..{fib.THRESHOLDS[-1]} "
        "step 0.05",
        "selection_scores": {k: round(t[best], 4) for k, t in tables.items()},
        "selection_mean": round(mean[best], 4),
    }
    if fragments:  # the best of waterz's own fragments, for comparison
        own = min((k for k in keys if json.loads(k[0])["method"] == "affinities"),
                  key=lambda k: (mean[k], k[2]))  # fmt: skip
        choice["own_fragments_best"] = {"scoring": own[1], "threshold": own[2],
                                        "selection_mean": round(mean[own], 4)}  # fmt: skip
    from synapse_toolkit.nn.adapt import onnx_metadata, resolve_model

    stored = onnx_metadata(resolve_model(model)).get("agglomeration") or {}
    s_frag = stored.get("fragments") or {"method": "affinities"}
    for k in keys:  # the setting the model stores now, scored in the same tables
        if (json.loads(k[0]), k[1]) == (s_frag, stored.get("scoring")) and abs(
            k[2] - float(stored.get("threshold", -1))
        ) < 1e-9:
            choice["stored_setting_mean"] = round(mean[k], 4)
    if write:
        from synapse_toolkit.nn.export import update_metadata

        updates = {"agglomeration": dict(choice), "voxel_size_nm": list(fib.GALA_VOXEL_SIZE_NM)}
        choice["written"] = update_metadata(model, updates)
    return choice


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
    for vol in copies(test, [c for c in COPIES if not only or c[0] in only]):
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
    ap.add_argument("what", choices=["select", "store", "score", "quality"])
    ap.add_argument("--checkpoint")
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--fragments", action="store_true",
                    help="select: also try distance-seeded fragments")  # fmt: skip
    ap.add_argument("--raw")
    ap.add_argument("--crop")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--copy", action="append", help="score only these copies (names)")
    a = ap.parse_args()
    if a.what == "select":
        res: Any = select(a.model[0], a.write, a.threads, a.fragments)
    elif a.what == "store":
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
