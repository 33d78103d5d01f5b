"""Label-free quality signal and label-free threshold of FIB affinity models
(:mod:`synapse_toolkit.inference.quality`).

    python benchmarks/fib_quality.py measure --model A --model B [--unlabelled F.h5:raw --crop ..]
        per model, on the validation crop (gala train, x in [150, 200)) and perturbed copies of
        it: boundary fraction, CREMI at the stored threshold and at the distribution-matched
        threshold (no border mask, as the threshold choice); on an unlabelled volume: the signals
    python benchmarks/fib_quality.py store --model M.onnx --band LOW HIGH
        write the model's reference (boundary fraction and weakest-affinity distribution on the
        validation crop, single pass) and the warning band into its metadata
    python benchmarks/fib_quality.py slices --model A --model B --raw F.h5:DATASET --crop .. --png P
        raw and each model's weakest affinity (dark = boundary) on three z-sections, side by side;
        the boundary fraction of each model on the crop in the JSON
    python benchmarks/fib_quality.py ridges --model A --model B --unlabelled F.h5:DATASET
        label-free: how many of the voxels a classical ridge filter finds (dark thin structures;
        its threshold chosen on gala train against the truth boundaries) each model marks as
        boundary, on gala, its perturbed copies and three 50 x 100 x 200 crops of the volume
    python benchmarks/fib_quality.py store-ridges --model M.onnx
        add the ridge filter's threshold and the model's ridge recall on the validation crop to
        its stored quality reference (the warning line's second opinion)
    python benchmarks/fib_quality.py test --model M [--copy NAME]
        the gala test volume and its perturbed copies (`fib.BLUR_COPIES`): CREMI
        at the stored and at the matched threshold (25 nm border mask) -- labels for scoring only
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from synapse_toolkit.evaluation import fib
from synapse_toolkit.inference import quality, ridges

BAND_CHOSEN_ON = (
    "validation crop and perturbed copies of it (blur, contrast, noise; "
    "benchmarks/fib_quality.py measure) with neurons/fib_affinities and neurons/fib_affinities_v2:"
    " copies on which a model's CREMI more than doubles fall outside the band, the others inside"
)


def _ref(model: str, threads: int) -> dict[str, Any]:
    from synapse_toolkit.nn.adapt import onnx_metadata, resolve_model

    meta = onnx_metadata(resolve_model(model))
    if quality.QUALITY_KEY in meta:
        return dict(meta[quality.QUALITY_KEY])
    val = fib.gala_validation_crop()
    m = fib.model_affinities(model, val.raw, val.voxel_size_nm, n_threads=threads)
    return quality.reference([m.affinities], (0.0, 1e9), "validation crop", "not stored")


def _ref_size(model: str, threads: int) -> float:
    """Segment size at the stored threshold on the model's training region (gala train, x in
    [0, 150): not the validation crop, so that the copies of the crop are another region)."""
    train = fib.gala_volume("train")
    raw = train.raw[:, :, :150]
    m = fib.model_affinities(model, raw, train.voxel_size_nm, n_threads=threads)
    agg = m.agglomeration or {}
    curve = quality.size_curve(
        m.affinities, agg["scoring"], [float(agg["threshold"])], agg.get("fragments")
    )
    return next(iter(curve.values()))


def _rows(model: str, vols: list[fib.FibVolume], border: float, threads: int) -> list[dict]:
    ref = _ref(model, threads)
    ref_size = _ref_size(model, threads)
    out = []
    for vol in vols:
        sc = fib.make_scorer(vol.voxel_size_nm, border)
        m = fib.model_affinities(model, vol.raw, vol.voxel_size_nm, n_threads=threads)
        agg = m.agglomeration or {}
        sig = quality.signals(m.affinities)
        t_match = quality.matched_threshold(
            quality.weakest_affinity(m.affinities), ref, float(agg["threshold"])
        )
        frags = agg.get("fragments")  # the stored fragments, as the pipeline's waterz uses them
        curve = quality.size_curve(m.affinities, agg["scoring"], fragments=frags)
        t_size = quality.size_matched_threshold(curve, ref_size)
        # the three thresholds in one agglomeration (fragments made once)
        ths = sorted({float(agg["threshold"]), float(t_match), float(t_size)})
        by_t = {round(r["threshold"], 6): r for r in fib.sweep(
            m.affinities, vol.truth, sc, scorings=[agg["scoring"]], thresholds=ths,
            fragments=frags)}  # fmt: skip
        stored, matched, sized = (by_t[round(float(t), 6)]
                                  for t in (agg["threshold"], t_match, t_size))  # fmt: skip
        row = {
            "volume": vol.name, "model": model,
            "boundary_fraction": sig["boundary_fraction"],
            "stored": {"threshold": agg["threshold"], "cremi": round(stored["cremi_score"], 4),
                       "voi": round(stored["voi"], 4)},
            "matched": {"threshold": t_match, "cremi": round(matched["cremi_score"], 4),
                        "voi": round(matched["voi"], 4)},
            "size_matched": {"threshold": t_size, "cremi": round(sized["cremi_score"], 4),
                             "voi": round(sized["voi"], 4), "reference_size": round(ref_size)},
        }  # fmt: skip
        print(json.dumps(row), file=sys.stderr)
        out.append(row)
    return out


def measure(models: list[str], unlabelled: str | None, crop: str | None, threads: int) -> dict:
    val = fib.gala_validation_crop()
    vols = fib.blurred_copies(val)
    res: dict[str, Any] = {"validation": [], "unlabelled": []}
    for model in models:
        res["validation"] += _rows(model, vols, 0.0, threads)
        if unlabelled:
            raw = fib.read_array(unlabelled, "raw")
            if crop:
                raw = raw[tuple(slice(*map(int, p.split(":"))) for p in crop.split(","))]
            m = fib.model_affinities(model, raw, fib.GALA_VOXEL_SIZE_NM, n_threads=threads)
            sig = quality.signals(m.affinities)
            row = {"volume": unlabelled, "crop": crop, "model": model,
                   "boundary_fraction": sig["boundary_fraction"]}  # fmt: skip
            print(json.dumps(row), file=sys.stderr)
            res["unlabelled"].append(row)
    return res


def store(model: str, band: tuple[float, float], threads: int) -> dict[str, Any]:
    from synapse_toolkit.nn.export import update_metadata

    val = fib.gala_validation_crop()
    m = fib.model_affinities(model, val.raw, val.voxel_size_nm, n_threads=threads)
    ref = quality.reference(
        [m.affinities], band, f"{val.name} (single pass, intensity matched)", BAND_CHOSEN_ON
    )
    ref["band_factors"] = list(band)
    return {**ref, "written": update_metadata(model, {quality.QUALITY_KEY: ref})}


def test(models: list[str], only: list[str] | None, threads: int) -> list[dict]:
    t = fib.gala_volume("test")
    vols = fib.blurred_copies(t, [n for n, _ in fib.BLUR_COPIES if not only or n in only])
    return [r for m in models for r in _rows(m, vols, fib.BORDER_THRESHOLD_NM, threads)]


def slices(models: list[str], raw_spec: str, crop: str | None, png: str, threads: int) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = fib.read_array(raw_spec, "raw")
    if crop:
        raw = raw[tuple(slice(*map(int, p.split(":"))) for p in crop.split(","))]
    zs = [raw.shape[0] // 4, raw.shape[0] // 2, 3 * raw.shape[0] // 4]
    weakest, out = [], {}
    for model in models:
        m = fib.model_affinities(model, raw, fib.GALA_VOXEL_SIZE_NM, n_threads=threads)
        weakest.append(quality.weakest_affinity(m.affinities))
        out[model] = quality.signals(m.affinities)["boundary_fraction"]
    fig, axes = plt.subplots(len(zs), 1 + len(models), figsize=(3 * (1 + len(models)), 3 * len(zs)))
    for i, z in enumerate(zs):
        axes[i, 0].imshow(raw[z], cmap="gray")
        axes[i, 0].set_title(f"raw z={z}", fontsize=8)
        for j, (model, w) in enumerate(zip(models, weakest, strict=True)):
            axes[i, j + 1].imshow(w[z], cmap="gray", vmin=0, vmax=1)
            axes[i, j + 1].set_title(f"{model.rsplit('/', 1)[-1]} bf {out[model]:.3f}", fontsize=8)
    for a in axes.ravel():
        a.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    return {"png": png, "z": zs, "boundary_fraction": out}


#: (z, y, x) corners of the 50 x 100 x 200 crops `ridges` reads from an unlabelled volume
RIDGE_CROPS = ((0, 0, 0), (100, 75, 25), (200, 150, 50))
RIDGES_CHOSEN_ON = (
    "gala train x in [0, 150) (the FIB models' training region): F1 of the ridge pixels against "
    "the truth boundary, 1-pixel in-plane tolerance both ways"
)


def truth_boundary(truth: np.ndarray) -> np.ndarray:
    """Voxels whose label differs from one of their 6 neighbours."""
    t = np.asarray(truth)
    b = np.zeros(t.shape, bool)
    for ax in range(3):
        d = np.diff(t, axis=ax) != 0
        b[(slice(None),) * ax + (slice(1, None),)] |= d
        b[(slice(None),) * ax + (slice(None, -1),)] |= d
    return b


def within_1px(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of ``a``'s voxels within one in-plane voxel (4-neighbourhood) of ``b``."""
    near = np.stack([ridges.near_in_plane(s) for s in b])
    return float((a & near).sum() / max(int(a.sum()), 1))


def ridge_threshold() -> tuple[float, float]:
    """The ridge filter's threshold chosen on the FIB models' training region (F1), and the F1."""
    train = fib.gala_volume("train")
    strength = ridges.ridge_map(train.raw[:, :, :150])
    tb = truth_boundary(train.truth[:, :, :150])
    best = (-1.0, 0.0)
    for t in np.quantile(strength, np.linspace(0.5, 0.95, 46)):
        m = strength > t
        p, r = within_1px(m, tb), within_1px(tb, m)
        best = max(best, (2 * p * r / max(p + r, 1e-9), float(t)))
    return best[1], best[0]


def store_ridges(model: str, threads: int) -> dict[str, Any]:
    """Add the ridge filter's threshold and the model's ridge recall on its validation crop
    (single pass) to the model's stored quality reference."""
    from synapse_toolkit.nn.adapt import onnx_metadata, resolve_model
    from synapse_toolkit.nn.export import update_metadata

    ref = dict(onnx_metadata(resolve_model(model)).get(quality.QUALITY_KEY) or {})
    if not ref:
        raise SystemExit(f"{model}: no {quality.QUALITY_KEY} to add the ridges to (run `store`)")
    thr, f1 = ridge_threshold()
    val = fib.gala_validation_crop()
    m = fib.model_affinities(model, val.raw, val.voxel_size_nm, n_threads=threads)
    measured_on = f"{val.name} (single pass, intensity matched)"
    ref["ridges"] = {
        **ridges.ridge_reference(val.raw, m.affinities, round(thr, 5), measured_on),
        "threshold_f1": round(f1, 4), "threshold_chosen_on": RIDGES_CHOSEN_ON,
    }  # fmt: skip
    return {**ref["ridges"], "written": update_metadata(model, {quality.QUALITY_KEY: ref})}


def ridge_rows(models: list[str], unlabelled: str | None, threads: int) -> dict[str, Any]:
    thr, f1 = ridge_threshold()
    val = fib.gala_validation_crop()
    vols: list[tuple[str, np.ndarray, np.ndarray | None]] = [
        ("gala validation crop", val.raw, val.truth)
    ]
    vols += [
        (f"gala test: {c.name}", c.raw, c.truth)
        for c in fib.blurred_copies(fib.gala_volume("test"))
    ]
    if unlabelled:
        raw = fib.read_array(unlabelled, "raw")
        for z, y, x in RIDGE_CROPS:
            vols.append((f"{unlabelled} crop at {(z, y, x)}",
                         raw[z : z + 50, y : y + 100, x : x + 200], None))  # fmt: skip
    # per labelled volume, model-independent: its truth boundary and the ridges' recall of it
    truth_b = {name: truth_boundary(t) for name, _, t in vols if t is not None}
    by_ridges = {name: round(within_1px(truth_b[name], ridges.ridge_map(r) > thr), 4)
                 for name, r, t in vols if t is not None}  # fmt: skip
    rows = []
    for model in models:
        for name, raw_v, truth in vols:
            m = fib.model_affinities(model, raw_v, fib.GALA_VOXEL_SIZE_NM, n_threads=threads)
            got = ridges.ridge_recall(raw_v, m.affinities, thr)
            row: dict[str, Any] = {
                "model": model,
                "volume": name,
                "boundary_fraction": quality.signals(m.affinities)["boundary_fraction"],
                "ridge_fraction": got["ridge_fraction"],
                "ridge_recall_by_model": got["ridge_recall"],
            }
            if truth is not None:
                mb = quality.weakest_affinity(m.affinities) < quality.BOUNDARY_AT
                row["truth_recall_by_model"] = round(within_1px(truth_b[name], mb), 4)
                row["truth_recall_by_ridges"] = by_ridges[name]
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    return {"ridge_threshold": thr, "ridge_f1_on_gala_train": round(f1, 4),
            "chosen_on": RIDGES_CHOSEN_ON, "rows": rows}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "what", choices=["measure", "store", "test", "slices", "ridges", "store-ridges"]
    )
    ap.add_argument("--png")
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--unlabelled")
    ap.add_argument("--raw")
    ap.add_argument("--crop")
    ap.add_argument("--band", type=float, nargs=2)
    ap.add_argument("--copy", action="append")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.what == "measure":
        res: Any = measure(a.model, a.unlabelled, a.crop, a.threads)
    elif a.what == "store":
        if not a.band:
            raise SystemExit("store: --band LOW HIGH required")
        res = store(a.model[0], (a.band[0], a.band[1]), a.threads)
    elif a.what == "slices":
        res = slices(a.model, a.raw, a.crop, a.png, a.threads)
    elif a.what == "ridges":
        res = ridge_rows(a.model, a.unlabelled, a.threads)
    elif a.what == "store-ridges":
        res = store_ridges(a.model[0], a.threads)
    else:
        res = test(a.model, a.copy, a.threads)
    text = json.dumps(res, indent=1, default=str)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
