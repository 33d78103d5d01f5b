"""ISBI 2012 ssTEM: 2D section scores of the ssTEM affinity model (via the pipeline) and of the
raw-intensity waterz bar, on held-out sections, with every threshold chosen without their labels.

Scores (synapse_toolkit.metrics.sections): each section on its own; the segmentation is split into
its 2D connected pieces per section; truth = 2D connected components of the label's cell pixels
(membrane ignored); CREMI score = sqrt(VOI * ARAND), VOI = split + merge in bits; mean over the
sections.

- **model**: ``syntk pipeline run`` on the held-out sections as one (z, 512, 512) volume at
  50 x 4 x 4 nm: hdf5-volumes loader -> affinity-unet (``--model``) -> waterz with its default
  options and no truth wired, so the threshold and scoring come from the model's metadata (chosen
  on validation sections 16-19 when it was trained). The pipeline's threshold sweep
  (``segmentations``) also gives the best-on-test figure, reported as a labelled second number.
- **raw-intensity bar**: each section smoothed (Gaussian, in-plane sigma), grey value / 255 as a
  per-pixel affinity, in-plane edge affinity = min of its two pixels, z-affinity 0; waterz
  quantile50; sigma and threshold chosen on the selection sections (default 0-19, the model's
  training + validation sections), then applied to the held-out ones.

    python benchmarks/eval_isbi.py                                   # held-out 20-23
    python benchmarks/eval_isbi.py --model path/to/model.onnx --json out.json
    python benchmarks/eval_isbi.py export runs/sstem_affinities/best.pt OUT.onnx

``export`` writes the ONNX file with the metadata the pipeline reads: the waterz scoring and
threshold chosen on the checkpoint's validation sections, and the model's domain (modality, voxel
size, real or synthetic training data) from the training config's ``[domain]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synapse_toolkit.inference.agglomeration import agglomerate
from synapse_toolkit.metrics.sections import score_sections
from synapse_toolkit.nn.sections import ISBI_VOXEL_SIZE_NM, _parse_sections, read_membrane_stack

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ISBI = ROOT.parent / "shared" / "data" / "em" / "isbi2012"
THRESHOLDS = [round(t, 3) for t in np.arange(0.05, 1.0, 0.05)]
SIGMAS = [0.0, 1.0, 2.0, 3.0]  # px (4 nm), in-plane smoothing of the raw bar


def raw_affinities(raw: np.ndarray, sigma: float) -> np.ndarray:
    """In-plane affinities from grey values (membranes dark): min of the two pixels, z = 0."""
    from scipy import ndimage

    v = raw.astype(np.float32) / 255.0
    if sigma > 0:
        v = ndimage.gaussian_filter(v, (0.0, sigma, sigma))
    affs = np.zeros((3, *v.shape), np.float32)
    affs[1, :, 1:] = np.minimum(v[:, 1:], v[:, :-1])
    affs[2, :, :, 1:] = np.minimum(v[:, :, 1:], v[:, :, :-1])
    return affs


def sweep(affs: np.ndarray, cells: np.ndarray, scoring: str = "quantile50") -> list[dict]:
    rows: list[dict] = []

    def keep(th: float, seg: np.ndarray) -> None:
        s = score_sections(seg, cells)
        rows.append({"threshold": th, **{k: v for k, v in s.items() if k != "sections"}})

    agglomerate(affs, THRESHOLDS, scoring=scoring, on_segmentation=keep)
    return rows


def raw_bar(sel: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> dict:
    """Sigma and threshold chosen on ``sel`` (mean score over its sections), applied to ``test``."""
    choices = []
    for sigma in SIGMAS:
        for row in sweep(raw_affinities(sel[0], sigma), sel[1]):
            choices.append({"sigma": sigma, **row})
    chosen = min(choices, key=lambda r: r["cremi_score"])
    segs = agglomerate(raw_affinities(test[0], chosen["sigma"]), [chosen["threshold"]])
    held = score_sections(segs[0], test[1])
    best_test = min(
        ({"sigma": s, **r} for s in SIGMAS for r in sweep(raw_affinities(test[0], s), test[1])),
        key=lambda r: r["cremi_score"],
    )
    return {"chosen_on_selection": chosen, "held_out": held, "best_on_test": best_test}


PIPELINE = """\
name = "isbi-sstem"

[input]
path = "{raw}"

[output]
dir = "{out}"

[run]
n_threads = {threads}

[stages.load]
kind = "loader"
plugin = "hdf5-volumes"
[stages.load.options]
voxel_size_nm = [{vz}, {vy}, {vx}]
volumes.raw = {{ path = "{raw}", dataset = "raw" }}

[stages.affinities]
kind = "detector"
plugin = "affinity-unet"
inputs = {{ raw = "load.raw" }}
options = {{ {model_key} = "{model}" }}

[stages.segment]
kind = "agglomerator"
plugin = "waterz"
inputs = {{ affinities = "affinities.affinities" }}
"""


def model_via_pipeline(model: str, raw: np.ndarray, cells: np.ndarray, threads: int) -> dict:
    """``syntk pipeline run`` on ``raw`` (no truth wired); scores of its segmentation."""
    import h5py
    import zarr

    is_path = model.endswith(".onnx")
    with tempfile.TemporaryDirectory() as tmp:
        raw_path = Path(tmp) / "raw.h5"
        with h5py.File(raw_path, "w") as f:
            f["raw"] = raw
        out = Path(tmp) / "run"
        cfg = Path(tmp) / "pipeline.toml"
        vz, vy, vx = ISBI_VOXEL_SIZE_NM
        cfg.write_text(
            PIPELINE.format(
                raw=raw_path, out=out, threads=threads, vz=vz, vy=vy, vx=vx,
                model_key="model_path" if is_path else "model",
                model=Path(model).resolve() if is_path else model,
            )
        )  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.run(
            ["syntk", "pipeline", "run", str(cfg)], capture_output=True, text=True, check=False
        )
        seconds = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"pipeline failed:\n{proc.stdout}\n{proc.stderr}")
        seg_store = zarr.open_array(
            str(out / "artifacts" / "segment" / "segmentation.zarr"), mode="r"
        )
        seg = np.asarray(seg_store[...])
        affs_store = zarr.open_array(
            str(out / "artifacts" / "affinities" / "affinities.zarr"), mode="r"
        )
        used = dict(affs_store.attrs).get("agglomeration")
        held = score_sections(seg, cells)
        segs = zarr.open_array(str(out / "artifacts" / "segment" / "segmentations.zarr"), mode="r")
        sweep_rows = []
        for i, th in enumerate(dict(segs.attrs)["thresholds"]):
            s = score_sections(np.asarray(segs[i]), cells)
            sweep_rows.append({"threshold": th, **{k: v for k, v in s.items() if k != "sections"}})
        return {
            "held_out": held,
            "model_agglomeration": used,
            "best_on_test": min(sweep_rows, key=lambda r: r["cremi_score"]),
            "sweep": sweep_rows,
            "pipeline_seconds": seconds,
            "stderr_tail": proc.stderr.strip().splitlines()[-3:],
        }


def export(checkpoint: str, out: str) -> dict[str, Any]:
    """Export with the validation-chosen waterz settings and the domain in the metadata."""
    from synapse_toolkit.nn.export import (
        export_model,
        load_checkpoint,
        training_intensity_reference,
    )

    net, ckpt = load_checkpoint(checkpoint)
    val = ckpt.get("validation")
    if not val:
        raise SystemExit(f"{checkpoint}: no validation record; export the best.pt of a run")
    tcfg = ckpt["train_config"]
    meta: dict[str, Any] = {
        "offsets": ckpt.get("offsets"),
        "iteration": ckpt.get("iteration"),
        "model_config": ckpt["model_config"],
        "agglomeration": {
            "scoring": tcfg["training"]["validation_scoring"],
            "threshold": val["best"]["threshold"],
            "chosen_on": "validation volumes "
            + ", ".join(f"{v['raw']} roi {v.get('roi')}" for v in tcfg["data"]["validation"])
            + f" by {tcfg['training'].get('validation_metric', 'volume')} CREMI score",
            "validation_cremi_score": val["best"]["cremi_score"],
        },
    }
    ref = training_intensity_reference(tcfg)
    if ref is not None:
        meta["intensity_reference"] = ref
    meta.update(tcfg.get("domain") or {})
    return export_model(net, ckpt["input_shape"], out, metadata=meta)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        ap = argparse.ArgumentParser(prog="eval_isbi.py export")
        ap.add_argument("checkpoint")
        ap.add_argument("out")
        a = ap.parse_args(argv[1:])
        info = export(a.checkpoint, a.out)
        Path(a.out).with_suffix(".sha256").write_text(f"{info['sha256']}  {Path(a.out).name}\n")
        print(json.dumps({k: info[k] for k in ("path", "sha256", "bytes", "max_abs_diff")}))
        print(json.dumps(info.get("agglomeration")))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isbi", default=str(DEFAULT_ISBI), help="folder with image/ and label/")
    ap.add_argument("--model", default="neurons/sstem_affinities", help="registry name or .onnx")
    ap.add_argument("--test", default="20-23", help="held-out sections")
    ap.add_argument("--select", default="0-19", help="sections that choose the raw bar's settings")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-raw", action="store_true", help="only the model")
    ap.add_argument("--json", help="write all figures here")
    a = ap.parse_args(argv)
    d = Path(a.isbi)
    test_ids, sel_ids = _parse_sections(a.test), _parse_sections(a.select)
    if set(test_ids) & set(sel_ids):
        raise SystemExit("--test and --select overlap: thresholds would be chosen on test labels")
    test = read_membrane_stack(d / "image", d / "label", test_ids)
    result: dict[str, Any] = {"test_sections": test_ids, "selection_sections": sel_ids}
    m = model_via_pipeline(a.model, *test, threads=a.threads)
    agg = m["model_agglomeration"] or {}
    result["model"] = m
    h = m["held_out"]
    print(f"model {a.model} via the pipeline, sections {a.test}, no truth wired (waterz "
          f"{agg.get('scoring')} @ {agg.get('threshold')} from the model's metadata):")  # fmt: skip
    print(f"  CREMI {h['cremi_score']:.3f}  VOI {h['voi']:.3f} (split {h['voi_split']:.3f} "
          f"merge {h['voi_merge']:.3f})  ARAND {h['arand']:.3f}")  # fmt: skip
    b = m["best_on_test"]
    print(f"  (best on test, chosen with test labels: CREMI {b['cremi_score']:.3f} at "
          f"{b['threshold']}, VOI {b['voi']:.3f})")  # fmt: skip
    if not a.skip_raw:
        sel = read_membrane_stack(d / "image", d / "label", sel_ids)
        r = raw_bar(sel, test)
        result["raw_bar"] = r
        c, h = r["chosen_on_selection"], r["held_out"]
        print(f"raw-intensity bar (quantile50, sigma {c['sigma']} px, threshold {c['threshold']} "
              f"chosen on sections {a.select}):")  # fmt: skip
        print(f"  CREMI {h['cremi_score']:.3f}  VOI {h['voi']:.3f} (split {h['voi_split']:.3f} "
              f"merge {h['voi_merge']:.3f})  ARAND {h['arand']:.3f}")  # fmt: skip
        b = r["best_on_test"]
        print(f"  (best on test: CREMI {b['cremi_score']:.3f} at sigma {b['sigma']} "
              f"threshold {b['threshold']})")  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
