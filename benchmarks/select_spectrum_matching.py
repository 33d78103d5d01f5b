"""Spectral matching for a FIB affinity model: measured on validation copies, stored on request.

The unseen FIB volumes are blurrier and noisier than gala (their in-plane spectra have relatively
less power at membrane frequencies); :mod:`synapse_toolkit.inference.spectrum` filters each
section to the training data's spectral shape before the network sees it.

    python benchmarks/select_spectrum_matching.py select --model M.onnx [--write] [--json F]
        the validation crop (gala train, x in [150, 200)) and its perturbed copies at the model's
        stored waterz setting, single pass, with and without spectral matching (the reference:
        the spectrum of the model's training data, gala train x in [0, 150)); the rule fixed
        before the run: adopt when the mean CREMI score over the selection copies improves by
        more than 0.02 and the unchanged crop gets worse by at most 0.01; --write then stores the
        reference in the model's metadata (weights unchanged; new sha256)
    python benchmarks/select_spectrum_matching.py score --model M.onnx [--json F]
        the held-out gala test volume and its copies (25 nm border mask), matching on and off
    python benchmarks/select_spectrum_matching.py quality --model M.onnx --raw F.h5:DATASET
        label-free: the boundary fraction the fit warning uses, matching on and off
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.evaluation import fib
from synapse_toolkit.inference import spectrum
from synapse_toolkit.nn.export import update_metadata

TRAIN_ROI = (slice(None), slice(None), slice(0, 150))
MIN_GAIN, MAX_LOSS = 0.02, 0.01


def reference() -> dict[str, Any]:
    train = fib.gala_volume("train")
    return {
        "radial_power": [
            round(float(v), 8) for v in spectrum.radial_spectrum(train.raw[TRAIN_ROI])
        ],
        "window": spectrum.WINDOW,
        "measured_on": "gala FIB-SEM train volume, x in [0, 150) (the model's training data)",
    }


def _with_reference(model: str, ref: dict[str, Any], tmp: Path) -> str:
    copy = tmp / Path(model).name
    shutil.copyfile(model, copy)
    update_metadata(copy, {"spectrum_reference": ref}, sidecar=False)
    return str(copy)


def _scores(model: str, volumes: list[fib.FibVolume], border_nm: float, threads: int,
            match_spectrum: bool = True) -> dict[str, dict[str, Any]]:  # fmt: skip
    out: dict[str, dict[str, Any]] = {}
    for vol in volumes:
        sc = fib.make_scorer(vol.voxel_size_nm, border_nm)
        m = fib.model_affinities(model, vol.raw, vol.voxel_size_nm, n_threads=threads,
                                 match_spectrum=match_spectrum)  # fmt: skip
        agg = m.agglomeration or {}
        row = fib.at(m.affinities, vol.truth, sc, agg["scoring"], agg["threshold"],
                     agg.get("fragments"))  # fmt: skip
        out[vol.name] = {k: round(float(row[k]), 4) for k in ("voi", "arand", "cremi_score")}
        print(f"{Path(model).parent.name}/{Path(model).name} {vol.name:38s} "
              f"CREMI {row['cremi_score']:.4f}", file=sys.stderr, flush=True)  # fmt: skip
    return out


def select(model: str, write: bool, threads: int) -> dict[str, Any]:
    ref = reference()
    vols = fib.blurred_copies(fib.gala_validation_crop())
    with tempfile.TemporaryDirectory() as tmp:
        # 0.0: no border mask (make_scorer passes a zero border on as None)
        off = _scores(model, vols, 0.0, threads)
        on = _scores(_with_reference(model, ref, Path(tmp)), vols, 0.0, threads)
    names = list(fib.SELECTION_COPIES)
    mean_off = float(np.mean([off[n]["cremi_score"] for n in names]))
    mean_on = float(np.mean([on[n]["cremi_score"] for n in names]))
    loss = on["unchanged"]["cremi_score"] - off["unchanged"]["cremi_score"]
    adopt = mean_off - mean_on > MIN_GAIN and loss <= MAX_LOSS
    out = {"model": model, "off": off, "on": on, "selection_copies": names,
           "selection_mean_off": round(mean_off, 4), "selection_mean_on": round(mean_on, 4),
           "unchanged_change": round(loss, 4), "adopt": adopt}  # fmt: skip
    if write and adopt:
        ref["chosen_on"] = (
            f"validation crop (gala train x in [150, 200)) and copies {names}: mean CREMI "
            f"{mean_off:.4f} -> {mean_on:.4f} (single pass, stored waterz setting)"
        )
        out["written"] = update_metadata(model, {"spectrum_reference": ref})
    return out


def score(model: str, threads: int) -> dict[str, Any]:
    vols = fib.blurred_copies(fib.gala_volume("test"))
    off = _scores(model, vols, fib.BORDER_THRESHOLD_NM, threads, match_spectrum=False)
    on = _scores(model, vols, fib.BORDER_THRESHOLD_NM, threads)
    return {"model": model, "off": off, "on": on}


def quality(model: str, raw_spec: str, threads: int) -> dict[str, Any]:
    from synapse_toolkit.inference.quality import signals

    raw = fib.read_array(raw_spec, "raw")
    out: dict[str, Any] = {"model": model, "raw": raw_spec}
    for flag in (False, True):
        m = fib.model_affinities(model, raw, (10, 10, 10), match_spectrum=flag, n_threads=threads)
        out[f"match_spectrum={flag}"] = signals(m.affinities)["boundary_fraction"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("select", "score", "quality"))
    ap.add_argument("--model", required=True)
    ap.add_argument("--raw", default=None)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.command == "select":
        out = select(args.model, args.write, args.threads)
    elif args.command == "score":
        out = score(args.model, args.threads)
    else:
        if not args.raw:
            ap.error("quality needs --raw F.h5:DATASET")
        out = quality(args.model, args.raw, args.threads)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
