"""Neurons on serial-section TEM (ISBI 2012): 2D section scores of an affinity model run through
the pipeline, against raw-intensity waterz, every setting chosen without the test labels.

Scores (:func:`synapse_toolkit.metrics.sections.score_sections`): each section on its own; the
segmentation is split into its 2D connected pieces per section; truth = 2D connected components
of the label's cell pixels (membrane ignored); CREMI score = sqrt(VOI x ARAND), VOI = split +
merge in bits; the mean over the sections.

- **model**: the pipeline (``hdf5-volumes`` loader -> ``affinity-unet`` -> ``waterz`` with its
  default options and no truth wired) on the test sections as one (z, 512, 512) volume at
  50 x 4 x 4 nm, so the waterz scoring and threshold come from the model's metadata (chosen on
  its validation sections). The pipeline's threshold sweep (``segmentations``) gives the
  best-on-test figure, reported as a labelled second number.
- **raw-intensity bar**: each section smoothed in-plane (Gaussian sigma in px), grey value / 255
  as a per-pixel value, in-plane edge affinity = min of its two pixels, z-affinity 0; waterz
  quantile50; sigma and threshold chosen on the *selection* sections, applied to the test ones.

:func:`export` writes a checkpoint as ONNX with the waterz setting chosen on its validation
sections and the training config's ``[domain]`` in the metadata (``syntk evaluate isbi-export``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.errors import DataError, SyntkError

ISBI_VOXEL_SIZE_NM = (50.0, 4.0, 4.0)
THRESHOLDS: tuple[float, ...] = tuple(round(float(t), 3) for t in np.arange(0.05, 1.0, 0.05))
SIGMAS: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0)  # px (4 nm), in-plane smoothing of the raw bar
DEFAULT_MODEL = "neurons/sstem_affinities"
DEFAULT_TEST = "20-23"  # the shipped model's held-out sections
DEFAULT_SELECT = "0-19"  # its training + validation sections

Row = dict[str, Any]
Log = Callable[[str], None]


def default_isbi_dir() -> Path:
    """The ISBI 2012 stack beside a source checkout (``../shared/data/em/isbi2012``)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "em" / "isbi2012"


def parse_sections(text: str, what: str = "sections") -> list[int]:
    """``"0-15,18"`` -> [0, ..., 15, 18]; one error line for anything else."""
    out: list[int] = []
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            lo, hi = int(a), int(b or a)
            if lo < 0 or hi < lo:
                raise ValueError
            out.extend(range(lo, hi + 1))
    except ValueError:
        raise SyntkError(f"{what}: expected ranges like 20-23 or 0-15,18, got {text!r}") from None
    return out


def read_sections(isbi_dir: str | Path, sections: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Raw (z, y, x) uint8 and cell mask of ``sections`` from ``<dir>/image`` and ``<dir>/label``
    (PNG ``<i>.png``; label 0 = membrane)."""
    from synapse_toolkit.nn.sections import read_membrane_stack

    d = Path(isbi_dir)
    if not (d / "image").is_dir() or not (d / "label").is_dir():
        raise DataError(f"{d}: expected an ISBI folder with image/ and label/ (PNG <i>.png)")
    return read_membrane_stack(d / "image", d / "label", sections)


# -- the raw-intensity bar -----------------------------------------------------------------------


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


def sweep(
    affs: np.ndarray,
    cells: np.ndarray,
    scoring: str = "quantile50",
    thresholds: Sequence[float] = THRESHOLDS,
    fragments: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """Mean 2D section scores of waterz at each threshold (from ``fragments`` if given)."""
    from synapse_toolkit.inference.agglomeration import sweep as agglomeration_sweep
    from synapse_toolkit.metrics.sections import mean_section_scores

    return agglomeration_sweep(affs, cells, [float(t) for t in thresholds], scoring=scoring,
                               fragments=fragments, score=mean_section_scores)  # fmt: skip


def raw_bar(
    selection: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    sigmas: Sequence[float] = SIGMAS,
    thresholds: Sequence[float] = THRESHOLDS,
) -> dict[str, Any]:
    """Sigma and threshold chosen on ``selection`` (lowest mean CREMI score), applied to
    ``test``; plus the best row on the test labels (optimistic)."""
    from synapse_toolkit.inference.agglomeration import agglomerate
    from synapse_toolkit.metrics.sections import score_sections

    choices = [
        {"sigma": s, **row}
        for s in sigmas
        for row in sweep(raw_affinities(selection[0], s), selection[1], thresholds=thresholds)
    ]
    chosen = min(choices, key=lambda r: r["cremi_score"])
    segs = agglomerate(raw_affinities(test[0], chosen["sigma"]), [chosen["threshold"]])
    held = score_sections(segs[0], test[1])
    best_test = min(
        (
            {"sigma": s, **r}
            for s in sigmas
            for r in sweep(raw_affinities(test[0], s), test[1], thresholds=thresholds)
        ),
        key=lambda r: r["cremi_score"],
    )
    return {"chosen_on_selection": chosen, "held_out": held, "best_on_test": best_test}


# -- the model, through the pipeline -------------------------------------------------------------

_PIPELINE = """\
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
options = {{ {model_key} = "{model}", tta = {tta} }}

"""
_SEGMENT = """
[stages.segment]
kind = "agglomerator"
plugin = "waterz"
inputs = {{ affinities = "affinities.affinities" }}
"""


def model_via_pipeline(
    model: str,
    raw: np.ndarray,
    cells: np.ndarray,
    *,
    voxel_size_nm: Sequence[float] = ISBI_VOXEL_SIZE_NM,
    n_threads: int = 1,
    tta: bool = False,
) -> dict[str, Any]:
    """The pipeline on ``raw`` with no truth wired; 2D section scores of its segmentation (the
    model's stored waterz setting) and of every threshold of its sweep. ``tta``: the
    ``affinity-unet`` stage averages its 8 mirrorings."""
    import zarr

    from synapse_toolkit.metrics.sections import mean_section_scores, score_sections

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        art = _run_pipeline(Path(tmp), model, raw, voxel_size_nm, n_threads, tta, segment=True)
        seconds = time.perf_counter() - t
        seg = np.asarray(zarr.open_array(str(art / "segment" / "segmentation.zarr"), mode="r")[...])
        affs = zarr.open_array(str(art / "affinities" / "affinities.zarr"), mode="r")
        used = dict(affs.attrs).get("agglomeration")
        segs = zarr.open_array(str(art / "segment" / "segmentations.zarr"), mode="r")
        thresholds = dict(segs.attrs)["thresholds"]
        assert isinstance(thresholds, list), thresholds  # written by the waterz stage
        rows = [
            {"threshold": float(th), **mean_section_scores(np.asarray(segs[i]), cells)}
            for i, th in enumerate(thresholds)
        ]
        held = score_sections(seg, cells)
    return {
        "held_out": held,
        "model_agglomeration": used,
        "best_on_test": min(rows, key=lambda r: r["cremi_score"]),
        "sweep": rows,
        "pipeline_seconds": round(seconds, 1),
    }


def model_affinities(
    model: str,
    raw: np.ndarray,
    *,
    voxel_size_nm: Sequence[float] = ISBI_VOXEL_SIZE_NM,
    n_threads: int = 1,
    tta: bool = False,
) -> np.ndarray:
    """(3, z, y, x) float32 affinities of ``model`` on ``raw`` from the pipeline's
    ``affinity-unet`` stage (as :func:`model_via_pipeline` runs it)."""
    import zarr

    with tempfile.TemporaryDirectory() as tmp:
        art = _run_pipeline(Path(tmp), model, raw, voxel_size_nm, n_threads, tta, segment=False)
        affs = zarr.open_array(str(art / "affinities" / "affinities.zarr"), mode="r")
        return np.asarray(affs[:3], dtype=np.float32)


def _run_pipeline(
    tmp: Path,
    model: str,
    raw: np.ndarray,
    voxel_size_nm: Sequence[float],
    n_threads: int,
    tta: bool,
    *,
    segment: bool,
) -> Path:
    """Run the affinity pipeline (and, with ``segment``, waterz after it) on ``raw`` written
    into ``tmp``; returns the run's artifacts folder."""
    import h5py

    from synapse_toolkit.api import run_pipeline_file
    from synapse_toolkit.models import names_a_file

    by_path = names_a_file(model)
    raw_path = tmp / "raw.h5"
    with h5py.File(raw_path, "w") as f:
        f["raw"] = raw
    out = tmp / "run"
    cfg = tmp / "pipeline.toml"
    vz, vy, vx = (float(v) for v in voxel_size_nm)
    cfg.write_text(
        (_PIPELINE + (_SEGMENT if segment else "")).format(
            raw=raw_path, out=out, threads=n_threads, vz=vz, vy=vy, vx=vx,
            model_key="model_path" if by_path else "model",
            model=Path(model).resolve() if by_path else model, tta=str(tta).lower(),
        )
    )  # fmt: skip
    run_pipeline_file(cfg)
    return out / "artifacts"


def fragment_grid() -> list[dict[str, Any]]:
    """The fragment settings :func:`select_agglomeration` tries: waterz's watershed, and
    distance-transform seeds at boundary thresholds 0.3/0.5/0.7 and smoothing 0/1/2 px."""
    grid: list[dict[str, Any]] = [{"method": "affinities"}]
    for bt in (0.3, 0.5, 0.7):
        for sigma in (0.0, 1.0, 2.0):
            grid.append(
                {"method": "distance_2d", "boundary_threshold": bt, "dt_sigma": sigma,
                 "min_distance": 3}
            )  # fmt: skip
    return grid


SELECT_SCORINGS = ("quantile50", "quantile75", "mean")


def select_agglomeration(
    model: str,
    isbi_dir: str | Path,
    sections: str = "16-19",
    *,
    context: str | None = None,
    scorings: Sequence[str] = SELECT_SCORINGS,
    fragment_settings: Sequence[dict[str, Any]] | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
    n_threads: int = 1,
    tta: bool = False,
    log: Log | None = None,
) -> dict[str, Any]:
    """The waterz setting (fragments, scoring, threshold) with the lowest mean 2D CREMI score on
    ``sections`` (the model's validation sections: never the held-out ones), from the model's
    affinities via the pipeline. ``context``: the model predicts these sections as one volume
    (they must include ``sections``) and only ``sections`` are scored; default ``sections``.
    Returns the choice (an ``agglomeration`` metadata entry) and every row tried."""
    from synapse_toolkit.inference.fragments import make_fragments

    say = log or (lambda _m: None)
    ids = parse_sections(sections)
    ctx = parse_sections(context, "--context") if context else ids
    if not set(ids) <= set(ctx):
        raise SyntkError(f"--context {context} does not include --sections {sections}")
    raw, cells = read_sections(isbi_dir, ctx)
    keep = [ctx.index(i) for i in ids]
    say(f"model {model} affinities on sections {context or sections}")
    affs = model_affinities(model, raw, n_threads=n_threads, tta=tta)[:, keep]
    cells = cells[keep]
    rows: list[Row] = []
    for frag_setting in fragment_settings or fragment_grid():
        frags = make_fragments(affs, frag_setting)
        for scoring in scorings:
            for r in sweep(affs, cells, scoring, thresholds, fragments=frags):
                rows.append({"fragments": dict(frag_setting), "scoring": scoring, **r})
        best = min((r for r in rows if r["fragments"] == frag_setting),
                   key=lambda r: r["cremi_score"])  # fmt: skip
        say(f"  {frag_setting}: best {best['scoring']} @ {best['threshold']} "
            f"-> {best['cremi_score']:.3f}")  # fmt: skip
    best = min(rows, key=lambda r: r["cremi_score"])
    choice = {
        "scoring": best["scoring"],
        "threshold": best["threshold"],
        "fragments": best["fragments"],
        "chosen_on": f"ISBI 2012 sections {sections} (validation) by mean 2D CREMI score"
        + (f", predicted within sections {context}" if context else "")
        + (", on 8-mirroring TTA affinities" if tta else ""),
        "validation_cremi_score": best["cremi_score"],
    }
    return {"choice": choice, "best": best, "rows": rows}


def evaluate(
    isbi_dir: str | Path,
    *,
    model: str = DEFAULT_MODEL,
    test: str = DEFAULT_TEST,
    select: str = DEFAULT_SELECT,
    baselines: bool = True,
    n_threads: int = 1,
    tta: bool = False,
    log: Log | None = None,
) -> dict[str, Any]:
    """The model (via the pipeline) and the raw-intensity bar on the ``test`` sections; the
    bar's settings are chosen on the ``select`` sections, which must not overlap ``test``."""
    say = log or (lambda _m: None)
    test_ids = parse_sections(test, "--test")
    sel_ids = parse_sections(select, "--select")
    if set(test_ids) & set(sel_ids):
        raise SyntkError("--test and --select overlap: settings would be chosen on test labels")
    test_data = read_sections(isbi_dir, test_ids)
    say(f"model {model} via the pipeline on sections {test}")
    report: dict[str, Any] = {
        "isbi_dir": str(isbi_dir), "test_sections": test_ids, "selection_sections": sel_ids,
        "voxel_size_nm": list(ISBI_VOXEL_SIZE_NM), "model_name": model,
        "tta": tta, "model": model_via_pipeline(model, *test_data, n_threads=n_threads, tta=tta),
    }  # fmt: skip
    if baselines:
        say(f"raw-intensity bar: sigma and threshold chosen on sections {select}")
        report["raw_bar"] = raw_bar(read_sections(isbi_dir, sel_ids), test_data)
    return report


def export(checkpoint: str | Path, out: str | Path) -> dict[str, Any]:
    """``checkpoint`` as ONNX (:func:`synapse_toolkit.nn.export.export_checkpoint`), then the
    waterz setting chosen on its validation sections (``agglomeration``) and the training
    config's ``[domain]`` into the metadata, and the ``.sha256`` sidecar."""
    from synapse_toolkit.nn.checkpoint import load_state
    from synapse_toolkit.nn.export import export_checkpoint, update_metadata

    ckpt = load_state(str(checkpoint))
    val = ckpt.get("validation")
    if not val:
        raise SyntkError(f"{checkpoint}: no validation record; export the best.pt of a run")
    tcfg = ckpt["train_config"]
    t = tcfg["training"]
    where = ", ".join(f"{v['raw']} roi {v.get('roi')}" for v in tcfg["data"]["validation"])
    metric = t.get("validation_metric", "volume")
    updates: dict[str, Any] = {
        "agglomeration": {
            "scoring": t["validation_scoring"],
            "threshold": val["best"]["threshold"],
            "chosen_on": f"validation volumes {where} by {metric} CREMI score",
            "validation_cremi_score": val["best"]["cremi_score"],
        },
        **(tcfg.get("domain") or {}),
    }
    info = export_checkpoint(checkpoint, out)
    written = update_metadata(out, updates)
    return {**info, "sha256": written["sha256"], "bytes": written["bytes"],
            "agglomeration": updates["agglomeration"]}  # fmt: skip
