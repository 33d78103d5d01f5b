"""Held-out neurofinder scores of the CNN ROI detector beside the classical bar (and suite2p).

Data: ``/work/shared/data/calcium/neurofinder-crop`` (real, Svoboda-lab field of view). The
split matches ``syntk_calcium.train``: the full-view mean image's left-half regions, rows
``[0, 200)`` train, ``[200, 256)`` validation, rows ``[256, 512)`` **held out**; columns
``[0, 240)`` are scored (cells crossing column 256 have no truth). A region counts for a window
when its centre lies in it (truth and prediction alike).

- CNN: the region thresholds and TTA are the ones chosen on validation (``syntk_calcium.train
  --select-only``), i.e. the ``threshold-regions`` / ``neurofinder-cnn`` stage defaults; the
  held-out truth never chooses anything.
  A best-on-held-out threshold is printed as a second, labelled figure only.
- Classical bar: DoG local maxima on the standardised mean image, parameters grid-searched on
  rows ``[0, 256)`` (train + validation), then scored on the held-out rows.
- The crop movie (200 frames, rows 288-416 / cols 64-192: inside the held-out rows) through the
  loader's streaming mean projection, scored against ``regions_crop.json`` (the 38 regions lying
  entirely inside the crop), for the CNN, the bar and, with ``--suite2p OUT.json`` from
  ``benchmarks/bench_suite2p.py``, suite2p.

- ``--phantom-seeds``: calcium phantoms (192x192, 90 cells, 300 frames; seeds outside the
  trainer's 5001-5012 / 5101-5103), CNN and local maxima (default parameters) on the mean image.
- ``--trained-on-heldout``: for a refit model (``syntk_calcium.train --refit``), which trained on
  every labelled row: the row-256-511 and crop figures are then printed under
  ``trained_on_*`` keys, a sanity check and not a held-out result.

    python benchmarks/eval_calcium.py [--model FILE.onnx] [--suite2p s2p.json] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
from syntk_calcium.io import open_source, summary_images
from syntk_calcium.preprocess import clip_standardise
from syntk_calcium.regions import extract_regions, local_maxima_regions, regions_in_window
from syntk_calcium.stages import DETECTOR_TTA, REGION_DEFAULTS, cnn_probability

from synapse_toolkit.data import Regions
from synapse_toolkit.metrics.neurofinder import load_regions, score_neurofinder
from synapse_toolkit.phantom.calcium import generate_calcium

DATA = Path("/work/shared/data/calcium/neurofinder-crop")
SELECT_ROWS, TEST_ROWS, COLS = (0, 256), (256, 512), (0, 240)
GRID_T = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
BASELINE_GRID = {
    "sigma": (1.0, 1.5, 2.0, 3.0),
    "background_sigma": (6.0, 10.0),
    "threshold": (0.1, 0.2, 0.3, 0.5, 0.7, 1.0),
    "min_distance": (3, 4, 6),
}


def _window_score(truth: Regions, pred: Regions, rows: tuple, cols: tuple) -> dict[str, Any]:
    s = score_neurofinder(regions_in_window(truth, rows, cols), regions_in_window(pred, rows, cols))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in s.as_dict().items()}


def tune_baseline(image: np.ndarray, truth: Regions) -> dict[str, Any]:
    """Local-maxima parameters with the best combined score on the selection rows."""
    best: tuple[float, dict[str, Any]] = (-1.0, {})
    for values in itertools.product(*BASELINE_GRID.values()):
        params: dict[str, Any] = dict(zip(BASELINE_GRID, values, strict=True))
        pred = local_maxima_regions(image, **params)
        c = _window_score(truth, pred, SELECT_ROWS, COLS)["combined"]
        if c > best[0]:
            best = (c, params)
    return best[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--model", default=None, help="ONNX file (default: calcium/neurofinder_cnn)")
    ap.add_argument("--suite2p", default=None, help="suite2p regions JSON of the crop movie")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument(
        "--params",
        default=None,
        help="region parameters as JSON (default: the "
        "threshold-regions stage defaults, chosen on validation)",
    )
    ap.add_argument("--tta", choices=("on", "off"), default=None,
                    help="default: the neurofinder-cnn stage default")  # fmt: skip
    ap.add_argument(
        "--flat-field",
        type=float,
        default=None,
        help="flat-field sigma (px) of the preprocessing (default: the stage's)",
    )
    ap.add_argument("--phantom-seeds", default="", help="comma-separated phantom seeds to score")
    ap.add_argument("--trained-on-heldout", action="store_true",
                    help="a refit model (trained on rows 256-511): label so")  # fmt: skip
    args = ap.parse_args()
    data = Path(args.data)

    if args.model is None:
        from synapse_toolkit.datasets import model_path

        model = model_path("calcium/neurofinder_cnn")
    else:
        model = Path(args.model)
    params = dict(REGION_DEFAULTS) if args.params is None else json.loads(args.params)
    tta = DETECTOR_TTA if args.tta is None else args.tta == "on"
    ff = args.flat_field
    out: dict[str, Any] = {"model": str(model), "region_params (validation)": params, "tta": tta,
                           "flat_field_sigma": ff}  # fmt: skip

    mean = np.load(data / "mean_fullfov_512x512_float32.npy")
    truth = load_regions(data / "regions_fullfov_left_half.json")
    prob = cnn_probability(mean, model, n_threads=1, tta=tta, flat_field_sigma=ff)
    cnn = extract_regions(prob[0], prob[1], **params)
    out["fullfov_heldout_cnn"] = _window_score(truth, cnn, TEST_ROWS, COLS)
    out["fullfov_validation_cnn"] = _window_score(truth, cnn, (200, 256), COLS)
    cols = np.array([c[:, 1].mean() for c in cnn.coordinates]) if len(cnn) else np.zeros(0)
    out["fullfov_cnn_roi_count (label-free)"] = {
        "cols 0-255": int((cols < 256).sum()), "cols 256-511": int((cols >= 256).sum())
    }  # fmt: skip
    bparams = tune_baseline(clip_standardise(mean), truth)
    base = local_maxima_regions(clip_standardise(mean), **bparams)
    out["baseline_params (rows 0-255)"] = bparams
    out["fullfov_heldout_baseline"] = _window_score(truth, base, TEST_ROWS, COLS)
    oracle: tuple[float, tuple[float, float, int]] = (-1.0, (0.0, 0.0, 0))
    for t, ct, m in itertools.product(GRID_T, GRID_T, (10, 20, 30, 40)):
        pred = extract_regions(prob[0], prob[1], threshold=t, core_threshold=ct, min_size=m)
        c = _window_score(truth, pred, TEST_ROWS, COLS)["combined"]
        if c > oracle[0]:
            oracle = (c, (t, ct, m))
    out["fullfov_heldout_cnn_best_on_test (reference only)"] = {
        "combined": round(oracle[0], 4), "threshold, core_threshold, min_size": oracle[1]
    }  # fmt: skip

    src = open_source(data / "movie_200x128x128_uint16.tif")
    crop_mean = summary_images(src, ["mean"])[0]
    crop_truth = load_regions(data / "regions_crop.json")
    cp = cnn_probability(crop_mean, model, n_threads=1, tta=tta, flat_field_sigma=ff)
    whole = ((0, 128), (0, 128))
    out["crop_movie_cnn"] = _window_score(
        crop_truth, extract_regions(cp[0], cp[1], **params), *whole
    )
    out["crop_movie_baseline"] = _window_score(
        crop_truth, local_maxima_regions(clip_standardise(crop_mean), **bparams), *whole
    )
    if args.suite2p:
        out["crop_movie_suite2p"] = _window_score(crop_truth, load_regions(args.suite2p), *whole)
    for seed in [int(v) for v in args.phantom_seeds.split(",") if v.strip()]:
        ph = generate_calcium(seed=seed, shape=(192, 192), n_cells=90, frames=300)
        pm = ph.movie.astype(np.float64).mean(axis=0).astype(np.float32)
        pp = cnn_probability(pm, model, n_threads=1, tta=tta, flat_field_sigma=ff)
        out[f"phantom{seed}_cnn"] = _window_score(
            ph.regions, extract_regions(pp[0], pp[1], **params), (0, 192), (0, 192)
        )
        out[f"phantom{seed}_baseline (default parameters)"] = _window_score(
            ph.regions, local_maxima_regions(clip_standardise(pm)), (0, 192), (0, 192)
        )
    if args.trained_on_heldout:  # rows 256-511 and the crop were training data: not held out
        out = {k.replace("fullfov_heldout", "trained_on_rows_256_511").replace(
            "crop_movie", "trained_on_crop_movie"): v for k, v in out.items()}  # fmt: skip
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
