"""suite2p's cell detection on a calcium movie, written as neurofinder regions JSON.

Runs in an environment with suite2p (it does not import syntk): suite2p 1.1.0 needs torch and
cellpose, so keep it out of syntk's own environment, e.g.

    python -m venv /tmp/s2pvenv && /tmp/s2pvenv/bin/pip install torch==2.13.0 suite2p==1.1.0
    /tmp/s2pvenv/bin/python benchmarks/bench_suite2p.py MOVIE.tif OUT.json [--classified OUT2.json]

then score OUT.json with syntk (``benchmarks/eval_calcium.py --suite2p OUT.json`` does both
side by side). Detection uses suite2p's defaults ('sparsery') with the movie's physical facts
only: cell diameter 10 px, indicator time constant tau 1.25 s (suite2p's value for GCaMP6),
frame rate 7 Hz (neurofinder 00 series); nothing is tuned on the truth. The movie is taken as
registered (neurofinder frames are). With ``--classified``, the ROIs that suite2p's built-in
classifier calls cells (after its own trace extraction) are written too.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import tifffile


def _stub_torchvision() -> None:
    """suite2p imports cellpose, which imports torchvision at module level; the torchvision wheel
    that PyPI gives next to the CPU torch cannot load its operators ("torchvision::nms does not
    exist"). suite2p's 'sparsery' detection never calls torchvision, so empty stand-in modules
    let the import through (any real use would fail loudly with an AttributeError)."""
    import sys
    import types

    try:
        import torchvision  # noqa: F401

        return
    except Exception:
        for key in [k for k in sys.modules if k.startswith("torchvision")]:
            del sys.modules[key]
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                 "torchvision.transforms._functional_tensor"):  # fmt: skip
        sys.modules[name] = types.ModuleType(name)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]  # type: ignore[attr-defined]
    tf = sys.modules["torchvision.transforms"]
    tf.functional = sys.modules["torchvision.transforms.functional"]  # type: ignore[attr-defined]
    tf._functional_tensor = sys.modules["torchvision.transforms._functional_tensor"]  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("movie")
    ap.add_argument("out")
    ap.add_argument("--classified", default=None)
    ap.add_argument("--diameter", type=float, default=10.0)
    ap.add_argument("--tau", type=float, default=1.25)
    ap.add_argument("--fs", type=float, default=7.0)
    args = ap.parse_args()

    import torch

    _stub_torchvision()
    from suite2p.detection.detect import detection_wrapper
    from suite2p.parameters import default_settings

    torch.set_num_threads(1)
    mov = tifffile.imread(args.movie).astype(np.float32)
    settings = default_settings()
    t0 = time.time()
    _, stat, _ = detection_wrapper(
        mov, diameter=[args.diameter, args.diameter], tau=args.tau, fs=args.fs,
        settings=settings["detection"], device=torch.device("cpu"),
    )  # fmt: skip
    seconds = time.time() - t0
    regions = [
        {"coordinates": np.stack([s["ypix"], s["xpix"]], axis=1).astype(int).tolist()} for s in stat
    ]
    with open(args.out, "w") as f:
        json.dump(regions, f)
    print(json.dumps({"suite2p_rois": len(regions), "seconds": round(seconds, 1),
                      "algorithm": settings["detection"]["algorithm"]}))  # fmt: skip
    if args.classified:  # as suite2p's pipeline: extract, neuropil-subtract, skew, classify
        from scipy.stats import skew
        from suite2p import classification
        from suite2p.extraction import extract

        ext = settings["extraction"]
        f_cell, f_neu, *_ = extract.extraction_wrapper(
            stat, mov, settings=ext, device=torch.device("cpu")
        )
        df = f_cell - ext["neuropil_coefficient"] * f_neu
        snr = 1 - 0.5 * np.diff(df, axis=1).var(axis=1) / df.var(axis=1)
        for k, s in enumerate(stat):
            s["snr"], s["skew"], s["std"] = snr[k], skew(df[k]), np.std(df[k])
        iscell = classification.classify(stat=stat, classfile=classification.builtin_classfile)
        keep = [r for r, c in zip(regions, iscell[:, 0], strict=True) if c > 0.5]
        with open(args.classified, "w") as f:
            json.dump(keep, f)
        print(json.dumps({"suite2p_classified_cells": len(keep)}))


if __name__ == "__main__":
    main()
