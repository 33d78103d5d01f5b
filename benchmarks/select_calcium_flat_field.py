"""Validation check of the calcium detector's flat-field preprocessing (no held-out truth read).

The right half of the neurofinder field of view is several times dimmer than the left (column
means of the mean image, no labels needed), and the seed's preprocessing standardises over the
whole image, so cells there reach the network with a fraction of the contrast it was trained on.
``flat_field_sigma`` divides the image by its smoothed brightness first.

Scored on the **validation** rows 200-255 x cols 0-239 of the full-view mean image (the split
model's validation, ``syntk_calcium.train``) and on a *dimmed* copy of them: each left-half column
``c`` multiplied by the brightness of column ``256 + c`` relative to the left half's (the
right half's measured column profile, smoothed), i.e. the validation cells as dim as their
counterparts on the right. Plus the phantom validation seeds 5101-5103, plain and dimmed by a
ramp of the same profile. Region parameters: the stage defaults (chosen on validation without
flat-field).

    python benchmarks/select_calcium_flat_field.py --model runs/nf-split/split.onnx \\
        --sigmas 0,24 --json benchmarks/results/calcium_flat_field.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d
from syntk_calcium.io import load_regions_file
from syntk_calcium.regions import extract_regions, regions_in_window
from syntk_calcium.stages import REGION_DEFAULTS, cnn_probability
from syntk_calcium.train import PHANTOM_VAL, VAL_ROWS, phantom_mean

from synapse_toolkit.metrics.neurofinder import score_neurofinder

DATA = Path(__file__).resolve().parents[2] / "shared/data/calcium/neurofinder-crop"
COLS = (0, 240)


def right_half_profile(mean: np.ndarray) -> np.ndarray:
    """Gain per left-half column: brightness of column 256 + c over the left half's mean."""
    colmean = gaussian_filter1d(mean.mean(axis=0).astype(np.float64), 16, mode="nearest")
    half = mean.shape[1] // 2
    return colmean[half:] / colmean[:half].mean()


def score(image: np.ndarray, truth: Any, rows: tuple, cols: tuple, model: Path, ff: float,
          params: dict[str, Any]) -> dict[str, float]:  # fmt: skip
    prob = cnn_probability(image, model, n_threads=1, flat_field_sigma=ff)
    pred = extract_regions(prob[0], prob[1], **params)
    s = score_neurofinder(regions_in_window(truth, rows, cols), regions_in_window(pred, rows, cols))
    return {"recall": round(s.recall, 4), "precision": round(s.precision, 4),
            "combined": round(s.combined, 4)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--sigmas", default="0,24")
    ap.add_argument("--cache", default="runs/phantom-cache-calcium")
    ap.add_argument("--params", default=None, help="region parameters JSON (default: the stage's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    data, model = Path(args.data), Path(args.model)
    params = dict(REGION_DEFAULTS) if args.params is None else json.loads(args.params)
    mean = np.load(data / "mean_fullfov_512x512_float32.npy")
    truth = load_regions_file(data / "regions_fullfov_left_half.json")
    gain = right_half_profile(mean)
    dimmed = mean.astype(np.float64).copy()
    dimmed[:, : gain.size] *= gain[None, :]
    out: dict[str, Any] = {"model": str(model), "region_params": params,
                           "right_half_gain (cols 256..511 / left mean, every 32nd)":
                           [round(float(g), 3) for g in gain[::32]]}  # fmt: skip
    for ff in [float(v) for v in args.sigmas.split(",")]:
        res: dict[str, Any] = {
            "validation": score(mean, truth, VAL_ROWS, COLS, model, ff, params),
            "validation_dimmed": score(dimmed, truth, VAL_ROWS, COLS, model, ff, params),
        }
        for seed in PHANTOM_VAL:
            pm, pr = phantom_mean(seed, Path(args.cache))
            ramp = np.interp(np.linspace(0, gain.size - 1, pm.shape[1]), np.arange(gain.size), gain)
            whole = ((0, pm.shape[0]), (0, pm.shape[1]))
            res[f"phantom{seed}"] = score(pm, pr, *whole, model, ff, params)
            res[f"phantom{seed}_dimmed"] = score(pm * ramp[None, :], pr, *whole, model, ff, params)
        res["real_mean_combined"] = round(
            0.5 * (res["validation"]["combined"] + res["validation_dimmed"]["combined"]), 4
        )
        out[f"flat_field_sigma={ff:g}"] = res
        print(json.dumps({f"flat_field_sigma={ff:g}": res}))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
