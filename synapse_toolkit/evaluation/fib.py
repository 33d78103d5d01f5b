"""Neurons on FIB-SEM: an affinity model against classical baselines, thresholds without test
labels.

Every method's affinities go through the same waterz agglomeration
(:func:`synapse_toolkit.inference.agglomeration.agglomerate`, default fragment settings as the
``waterz`` stage) and are scored by :func:`synapse_toolkit.metrics.cremi_neurons.score_neuron_ids`
(VOI in bits, adapted Rand error, CREMI score = sqrt(VOI x ARAND); truth label 0 = boundary is
ignored; border mask as given, CREMI's 25 nm by default).

- **model**: affinities from the ``affinity-unet`` stage itself (intensity matching, resampling to
  the model's voxel size, tiling, optional TTA), segmented at the scoring and threshold stored in
  the model's metadata (``agglomeration``: chosen on its validation data, never on test labels).
  That is the figure to quote. The best row of a sweep against the evaluated volume's own labels
  is reported as a second, optimistic figure (``best_on_test``).
- **baselines**: (a) raw intensity scaled to [0, 1] (membranes dark, so it is an affinity), and
  (b) a boundary probability map ``p`` as affinity ``1 - p`` when one is given; each as per-voxel
  affinities in all three channels (``voxel``) or as ``edge-min`` (an edge gets the minimum of its
  two voxels). Variant, scoring and threshold are chosen on *selection* data (for the gala test
  volume: the FIB model's validation crop, train volume x in [150, 200)); without selection data
  they are chosen on the evaluated volume's labels and marked ``optimistic``.

:func:`choose_agglomeration` is how the model's stored scoring and threshold are chosen
(``syntk evaluate fib-select``).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from synapse_toolkit.errors import DataError, SyntkError
from synapse_toolkit.fsio import sha256_file

if TYPE_CHECKING:
    from synapse_toolkit.inference.resample import ResamplePolicy

THRESHOLDS: tuple[float, ...] = tuple(round(float(t), 3) for t in np.arange(0.05, 1.0, 0.05))
SCORINGS: tuple[str, ...] = ("mean", "quantile50", "quantile75")
SELECT_BY = "cremi_score"
BORDER_THRESHOLD_NM = 25.0  # CREMI's border mask, the cremi-neurons scorer's default
GALA_VOXEL_SIZE_NM = (10.0, 10.0, 10.0)
#: the shipped FIB model's validation crop: gala *train* volume, (z, y, x) voxel ranges
GALA_VALIDATION_ROI = ((0, 50), (0, 100), (150, 200))
GALA_DATASETS = {  # registry names of the bundled gala FIB-SEM files (dataset `stack`)
    "test-image": "gala-fib/test-image",
    "test-gt": "gala-fib/test-gt",
    "test-p1": "gala-fib/test-p1",
    "train-image": "gala-fib/train-image",
    "train-gt": "gala-fib/train-gt",
    "train-p1": "gala-fib/train-p1",
}
#: the default FIB-SEM model (``neurons/fib_affinities``, the first one, stays available by name)
DEFAULT_MODEL = "neurons/fib_affinities_v2"

Row = dict[str, Any]
Score = Callable[[np.ndarray, np.ndarray], dict[str, float]]
Log = Callable[[str], None]


def _zyx_nm(values: Sequence[float]) -> tuple[float, float, float]:
    z, y, x = (float(v) for v in values)
    return (z, y, x)


@dataclass
class FibVolume:
    """A volume to evaluate on: raw, truth (uint64, ignored voxels = 2**64-1), optional boundary
    probability map, voxel size (z, y, x) in nm."""

    name: str
    raw: np.ndarray
    truth: np.ndarray
    voxel_size_nm: tuple[float, float, float]
    boundary: np.ndarray | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def crop(self, roi: Sequence[tuple[int, int]], name: str) -> FibVolume:
        sl = tuple(slice(a, b) for a, b in roi)
        b = None if self.boundary is None else self.boundary[sl]
        return FibVolume(name, self.raw[sl], self.truth[sl], self.voxel_size_nm, b)


# -- reading -------------------------------------------------------------------------------------


def read_array(spec: str | Path, what: str = "volume") -> np.ndarray:
    """``FILE.h5[:DATASET]`` (HDF5; without a dataset the file's only one, or ``stack``) or
    ``STORE.zarr[:ARRAY]``. Errors name the file and key."""
    text = str(spec)
    path, _, key = text.partition(":")
    if not path:
        raise DataError(f"{what}: empty file name in {text!r}")
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what}: {p}: file not found")
    if p.is_dir() or p.suffix == ".zarr":
        import zarr

        try:
            return np.asarray(zarr.open_array(str(p), path=key or "", mode="r")[...])
        except Exception as exc:  # zarr raises several kinds for a missing/damaged array
            raise DataError(f"{what}: {p}: cannot read array {key!r} ({exc})") from exc
    from synapse_toolkit.io.cremi import choose_hdf5_dataset, open_hdf5_file

    try:
        with open_hdf5_file(p) as f:
            return np.asarray(f[choose_hdf5_dataset(f, p, key or None)][...])
    except DataError as exc:
        raise DataError(f"{what}: {exc}") from None


def truth_with_ignore(labels: np.ndarray, ignore_label: int | None = 0) -> np.ndarray:
    """uint64 truth with ``ignore_label`` (gala: 0 = boundary) set to CREMI's ignore id."""
    from synapse_toolkit.cremi_ids import NEURON_IGNORE

    if labels.dtype.kind not in "iu":
        raise DataError(f"truth must hold integer labels, got dtype {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and int(labels.min()) < 0:
        raise DataError("truth has negative labels")
    truth = labels.astype(np.uint64)
    if ignore_label is not None:
        truth[labels == ignore_label] = NEURON_IGNORE
    return truth


def make_volume(
    raw: np.ndarray,
    labels: np.ndarray,
    voxel_size_nm: Sequence[float],
    *,
    name: str,
    boundary: np.ndarray | None = None,
    ignore_label: int | None = 0,
) -> FibVolume:
    """A checked :class:`FibVolume` (3D raw, truth of the same shape, boundary map likewise)."""
    if raw.ndim != 3:
        raise DataError(f"{name}: raw must be 3D (z, y, x), got shape {raw.shape}")
    if labels.shape != raw.shape:
        raise DataError(f"{name}: truth shape {labels.shape} != raw shape {raw.shape}")
    if boundary is not None:
        if boundary.ndim == 4:  # channel-last (ilastik) boundary maps: first channel
            boundary = boundary[..., 0]
        if boundary.shape != raw.shape:
            raise DataError(f"{name}: boundary shape {boundary.shape} != raw shape {raw.shape}")
        boundary = boundary.astype(np.float32)
    vs = tuple(float(v) for v in voxel_size_nm)
    if len(vs) != 3 or min(vs) <= 0:
        raise DataError(f"{name}: voxel size must be three positive numbers (z y x nm), got {vs}")
    return FibVolume(name, raw, truth_with_ignore(labels, ignore_label), vs, boundary)


def gala_volume(split: str) -> FibVolume:
    """The bundled gala FIB-SEM ``test`` or ``train`` volume (raw, truth, boundary map p1),
    verified against the registry's sha256."""
    from synapse_toolkit.datasets import resolve_dataset

    if split not in ("test", "train"):
        raise SyntkError(f"gala split must be 'test' or 'train', got {split!r}")
    paths = {k: resolve_dataset(GALA_DATASETS[f"{split}-{k}"]) for k in ("image", "gt", "p1")}
    return make_volume(
        read_array(paths["image"], "raw"),
        read_array(paths["gt"], "truth"),
        GALA_VOXEL_SIZE_NM,
        name=f"gala FIB-SEM {split} volume",
        boundary=read_array(paths["p1"], "boundary"),
    )


def gala_validation_crop() -> FibVolume:
    """The shipped FIB model's validation crop (gala train volume, x in [150, 200))."""
    return gala_volume("train").crop(
        GALA_VALIDATION_ROI, "gala FIB-SEM train volume, validation crop x in [150, 200)"
    )


# -- affinities ----------------------------------------------------------------------------------


def edge_min(values: np.ndarray) -> np.ndarray:
    """Affinity of edge (v, v+o) = min(value(v), value(v+o)); 0 where v+o is outside."""
    from synapse_toolkit.affinities import NEAREST_NEIGHBOURS

    out = np.zeros((3, *values.shape), np.float32)
    for c, off in enumerate(NEAREST_NEIGHBOURS):
        a = tuple(slice(-o, None) if o < 0 else slice(None) for o in off)
        b = tuple(slice(None, o) if o < 0 else slice(None) for o in off)
        out[(c, *a)] = np.minimum(values[a], values[b])
    return out


def unit_range(values: np.ndarray) -> np.ndarray:
    """``values`` scaled to [0, 1] by their own min and max."""
    v = values.astype(np.float32)
    lo, hi = float(v.min()), float(v.max())
    return (v - lo) / max(hi - lo, 1e-12)


def baseline_affinities(values01: np.ndarray, variant: str) -> np.ndarray:
    if variant == "voxel":
        return np.stack([values01] * 3).astype(np.float32)
    if variant == "edge-min":
        return edge_min(values01)
    raise SyntkError(f"unknown baseline variant {variant!r} (voxel, edge-min)")


@dataclass
class ModelAffinities:
    affinities: np.ndarray  # (3, z, y, x) float32
    agglomeration: dict[str, Any] | None  # the model's stored waterz settings
    model: dict[str, Any]  # path, sha256 as the stage recorded them
    seconds: float


def model_affinities(
    model: str,
    raw: np.ndarray,
    voxel_size_nm: Sequence[float],
    *,
    tta: bool = False,
    match_intensity: bool = True,
    match_spectrum: bool = True,
    resample: ResamplePolicy = "always",
    n_threads: int = 2,
) -> ModelAffinities:
    """The ``affinity-unet`` stage on ``raw``: the pipeline's inference path.

    ``model`` is a registry name or an ``.onnx`` path (pinned to its sha256 as it is now).
    """
    from syntk_neurons.stages import AffinityDetector

    from synapse_toolkit.data import Volume
    from synapse_toolkit.models import names_a_file
    from synapse_toolkit.stages import StageContext

    by_path = names_a_file(model)
    opts = AffinityDetector.Options(
        **(
            {"model_path": Path(model), "sha256": sha256_file(model)}
            if by_path
            else {"model": model}
        ),
        tta=tta,
        match_intensity=match_intensity,
        match_spectrum=match_spectrum,
        resample=resample,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext("affinities", Path(tmp), n_threads=n_threads)
        t = time.perf_counter()
        vs = _zyx_nm(voxel_size_nm)
        affs = AffinityDetector(opts, ctx).run({"raw": Volume(raw, vs)})["affinities"]
        agg = dict(affs.data.attrs).get("agglomeration")
        out = np.asarray(affs.read()[:3], dtype=np.float32)
        seconds = time.perf_counter() - t
    return ModelAffinities(out, agg, dict(ctx.notes.get("model", {})), seconds)


# -- agglomeration and scores --------------------------------------------------------------------


def make_scorer(
    voxel_size_nm: Sequence[float], border_threshold_nm: float = BORDER_THRESHOLD_NM
) -> Score:
    """``score(segmentation, truth) -> {voi_split, voi_merge, voi, arand, cremi_score}``."""
    from synapse_toolkit.metrics.cremi_neurons import score_neuron_ids

    vs = _zyx_nm(voxel_size_nm)

    def score(seg: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        s = score_neuron_ids(
            truth,
            seg,
            border_threshold_nm=border_threshold_nm or None,
            voxel_size_nm=vs,
        )
        return {
            "voi_split": float(s.voi_split),
            "voi_merge": float(s.voi_merge),
            "voi": float(s.voi_split + s.voi_merge),
            "arand": float(s.adapted_rand),
            "cremi_score": float(s.cremi_score),
        }

    return score


def sweep(
    affs: np.ndarray,
    truth: np.ndarray,
    score: Score,
    scorings: Sequence[str] = SCORINGS,
    thresholds: Sequence[float] = THRESHOLDS,
    fragments: Mapping[str, Any] | None = None,
) -> list[Row]:
    """One scored row per (scoring, threshold); waterz's own fragments, or ``fragments`` (a
    setting of :func:`synapse_toolkit.inference.fragments.make_fragments`)."""
    from synapse_toolkit.inference.agglomeration import sweep as agglomeration_sweep
    from synapse_toolkit.inference.fragments import make_fragments

    frags = make_fragments(affs, fragments)
    rows: list[Row] = []
    for scoring in scorings:
        swept = agglomeration_sweep(affs, truth, thresholds, scoring=scoring, fragments=frags,
                                    score=score)  # fmt: skip
        rows.extend({"scoring": scoring, **r} for r in swept)
    return rows


def best(rows: Sequence[Row], select_by: str = SELECT_BY) -> Row:
    return dict(min(rows, key=lambda r: (r[select_by], r["threshold"])))


def at(
    affs: np.ndarray,
    truth: np.ndarray,
    score: Score,
    scoring: str,
    threshold: float,
    fragments: Mapping[str, Any] | None = None,
) -> Row:
    """Scores of the segmentation at one scoring function and threshold (fragments as
    :func:`sweep`)."""
    from synapse_toolkit.inference.agglomeration import agglomerate
    from synapse_toolkit.inference.fragments import make_fragments

    frags = make_fragments(affs, fragments)
    seg = agglomerate(affs, [float(threshold)], scoring=scoring, fragments=frags)[0]
    return {"scoring": scoring, "threshold": float(threshold), **score(seg, truth)}


def stored_and_swept(
    m: ModelAffinities, truth: np.ndarray, score: Score
) -> tuple[Row | None, list[Row]]:
    """The model's row at its stored waterz setting (``None`` without one) and the sweep over
    scorings and thresholds, both from the model's stored fragments, as the ``waterz`` stage
    agglomerates with ``fragments_from = "auto"``."""
    agg = m.agglomeration
    frags = agg.get("fragments") if agg else None
    rows = sweep(m.affinities, truth, score, fragments=frags)
    if not agg or not agg.get("scoring") or agg.get("threshold") is None:
        return None, rows
    scoring, th = str(agg["scoring"]), float(agg["threshold"])
    swept = [r for r in rows if r["scoring"] == scoring and abs(r["threshold"] - th) < 1e-9]
    # the stored setting is usually on the sweep's grid: no second agglomeration
    main = swept[0] if swept else at(m.affinities, truth, score, scoring, th, fragments=frags)
    return main, rows


#: perturbed copies of a FIB volume as a less sharp acquisition might show it: (name, spec of
#: :func:`synapse_toolkit.nn.consistency.perturb_volume`); grey values are not matched back,
#: since the ``affinity-unet`` stage matches intensities itself
BLUR_COPIES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("unchanged", {}),
    ("blur sigma 1", {"blur_sigma": 1.0}),
    ("blur sigma 1.5", {"blur_sigma": 1.5}),
    ("blur sigma 2", {"blur_sigma": 2.0}),
    ("contrast x0.5", {"contrast": 0.5}),
    ("blur 1.5, contrast x0.6, noise sd 6", {"blur_sigma": 1.5, "contrast": 0.6, "noise_std": 6}),
)
#: the copies a FIB model's waterz setting is chosen on with ``--copies`` (the validation
#: volumes of ``examples/train/fib_affinities_v2.toml``)
SELECTION_COPIES: tuple[str, ...] = (
    "unchanged",
    "blur sigma 1",
    "blur 1.5, contrast x0.6, noise sd 6",
)


def blurred_copies(volume: FibVolume, names: Sequence[str] | None = None) -> list[FibVolume]:
    """``volume``'s :data:`BLUR_COPIES` (all, or those named, in table order), same truth."""
    from synapse_toolkit.nn.consistency import perturb_volume

    known = [n for n, _ in BLUR_COPIES]
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise SyntkError(f"unknown perturbed copies {unknown} (known: {known})")
    out = []
    for name, spec in BLUR_COPIES:
        if names is not None and name not in names:
            continue
        raw = perturb_volume(volume.raw, {**spec, "match": False}, name) if spec else volume.raw
        out.append(FibVolume(name, raw, volume.truth, volume.voxel_size_nm))
    return out


def _fragments_key(setting: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(setting or {"method": "affinities"}), sort_keys=True)


def choose_agglomeration(
    model: str,
    selection: FibVolume | Sequence[FibVolume],
    *,
    tta: Sequence[bool] = (False, True),
    fragment_settings: Sequence[Mapping[str, Any]] | None = None,
    border_threshold_nm: float = 0.0,
    select_by: str = SELECT_BY,
    n_threads: int = 2,
    log: Log | None = None,
    copies_of: str | None = None,
) -> dict[str, Any]:
    """The waterz setting for ``model``, chosen on ``selection`` volumes (never test data).

    The model's affinities come from the ``affinity-unet`` stage, once per volume and ``tta``
    setting. Each (fragments, scoring, threshold) over ``fragment_settings`` (default: waterz's
    own fragments only; a setting of
    :func:`synapse_toolkit.inference.fragments.make_fragments`, or ``{"method":
    "affinities"}`` for waterz's own) x :data:`SCORINGS` x :data:`THRESHOLDS` is scored by
    ``select_by``; the lowest mean over all volumes and ``tta`` settings wins (ties: the lower
    threshold), so one stored setting serves them all. No border mask by default: on a small
    crop a 25 nm mask leaves too few errors to choose by. ``copies_of`` names the volume that
    the first selection volume is unchanged and the others are copies of (:func:`blurred_copies`).

    Returns the metadata to store (``scoring``, ``threshold``, ``fragments`` when not waterz's
    own, ``chosen_on``, per-volume ``selection_scores``, ``selection_mean``), the best setting
    with waterz's own fragments (``own_fragments_best``) when seeded ones were tried, and every
    scored row (``sweeps``, keyed like ``selection_scores``).
    """
    say = log or (lambda _m: None)
    volumes = [selection] if isinstance(selection, FibVolume) else list(selection)
    if not volumes:
        raise SyntkError("choose_agglomeration: no selection volume")
    grid = [dict(f) for f in fragment_settings] if fragment_settings else [{"method": "affinities"}]
    sweeps: dict[str, list[Row]] = {}
    for vol in volumes:
        score = make_scorer(vol.voxel_size_nm, border_threshold_nm)
        for t in tta:
            m = model_affinities(model, vol.raw, vol.voxel_size_nm, tta=t, n_threads=n_threads)
            name = f"tta={str(t).lower()}"
            name = name if len(volumes) == 1 else f"{vol.name}, {name}"
            rows = sweeps.setdefault(name, [])
            for fs in grid:
                frag = None if fs.get("method") == "affinities" else fs
                rows += [
                    {**r, "fragments": fs} if len(grid) > 1 else r
                    for r in sweep(m.affinities, vol.truth, score, fragments=frag)
                ]
            say(f"select: {name} done")

    def key(r: Row) -> tuple[str, str, float]:
        return (_fragments_key(r.get("fragments")), r["scoring"], r["threshold"])

    table = {name: {key(r): r for r in rows} for name, rows in sweeps.items()}
    keys = list(next(iter(table.values())))
    mean = {k: float(np.mean([t[k][select_by] for t in table.values()])) for k in keys}
    best_key = min(keys, key=lambda k: (mean[k], k[2]))
    frag_setting = json.loads(best_key[0])
    mask = f"border mask {border_threshold_nm:g} nm" if border_threshold_nm else "no border mask"
    settings = " and ".join(f"tta={str(t).lower()}" for t in tta)
    over = "copies and " if len(volumes) > 1 else ""
    tried = "waterz's own or seeded fragments x " if len(grid) > 1 else ""
    names = (copies_of or volumes[0].name) + (
        f" and perturbed copies of it ({', '.join(v.name for v in volumes[1:])})"
        if len(volumes) > 1
        else ""
    )
    choice: dict[str, Any] = {
        "scoring": best_key[1],
        "threshold": best_key[2],
        **({"fragments": frag_setting} if frag_setting["method"] != "affinities" else {}),
        "chosen_on": f"{names}: best {select_by} ({mask}; mean over {over}affinity-unet "
        f"{settings}) over {tried}scorings {', '.join(SCORINGS)} x thresholds "
        f"{THRESHOLDS[0]}..{THRESHOLDS[-1]} step 0.05",
        "selection_scores": {
            name: {
                k: round(v, 4)
                for k, v in t[best_key].items()
                if k not in ("scoring", "threshold", "fragments")
            }
            for name, t in table.items()
        },
        "selection_mean": round(mean[best_key], 4),
    }
    if len(grid) > 1:
        own = [k for k in keys if json.loads(k[0])["method"] == "affinities"]
        if own:
            o = min(own, key=lambda k: (mean[k], k[2]))
            choice["own_fragments_best"] = {
                "scoring": o[1],
                "threshold": o[2],
                "selection_mean": round(mean[o], 4),
            }
    return {**choice, "sweeps": sweeps}


def setting_mean(
    choice: Mapping[str, Any], setting: Mapping[str, Any], select_by: str = SELECT_BY
) -> float | None:
    """The mean ``select_by`` of a stored ``agglomeration`` setting in ``choice``'s sweeps, or
    None when that setting was not among those tried."""
    want = (
        _fragments_key(setting.get("fragments")),
        setting.get("scoring"),
        float(setting.get("threshold", -1)),
    )
    values = [
        r[select_by]
        for rows in choice["sweeps"].values()
        for r in rows
        if (_fragments_key(r.get("fragments")), r["scoring"]) == want[:2]
        and abs(float(r["threshold"]) - want[2]) < 1e-9
    ]
    return float(np.mean(values)) if len(values) == len(choice["sweeps"]) else None


# -- the evaluation ------------------------------------------------------------------------------


def _baseline(
    name: str,
    values: Callable[[FibVolume], np.ndarray | None],
    volume: FibVolume,
    selection: FibVolume | None,
    score: Score,
    select_score: Score | None,
) -> Row | None:
    v_test = values(volume)
    if v_test is None:
        return None
    test_rows = {
        var: sweep(baseline_affinities(v_test, var), volume.truth, score)
        for var in ("voxel", "edge-min")
    }
    best_test = min(
        ({"variant": var, **best(rows)} for var, rows in test_rows.items()),
        key=lambda r: r[SELECT_BY],
    )
    v_sel = values(selection) if selection is not None else None
    if selection is not None and v_sel is not None and select_score is not None:
        cands = [
            {
                "variant": var,
                **best(sweep(baseline_affinities(v_sel, var), selection.truth, select_score)),
            }
            for var in ("voxel", "edge-min")
        ]
        chosen = min(cands, key=lambda r: r[SELECT_BY])
        row = next(
            r
            for r in test_rows[chosen["variant"]]
            if r["scoring"] == chosen["scoring"] and r["threshold"] == chosen["threshold"]
        )
        return {
            "method": name,
            "chosen_on": selection.name,
            "optimistic": False,
            "held_out": {"variant": chosen["variant"], **row},
            "selection_scores": chosen,
            "best_on_test": best_test,
        }
    return {
        "method": name,
        "chosen_on": f"{volume.name} (its own labels)",
        "optimistic": True,
        "held_out": best_test,
        "best_on_test": best_test,
    }


def raw_values(vol: FibVolume) -> np.ndarray:
    return unit_range(vol.raw)


def boundary_values(vol: FibVolume) -> np.ndarray | None:
    return None if vol.boundary is None else 1.0 - vol.boundary.astype(np.float32)


def evaluate(
    volume: FibVolume,
    *,
    model: str = DEFAULT_MODEL,
    tta: bool = False,
    match_intensity: bool = True,
    selection: FibVolume | None = None,
    baselines: bool = True,
    border_threshold_nm: float = BORDER_THRESHOLD_NM,
    n_threads: int = 2,
    log: Log | None = None,
) -> dict[str, Any]:
    """The model at its stored threshold (main figure), its best-on-test row, and the baselines
    (chosen on ``selection`` when given). A JSON-able dict."""
    say = log or (lambda _m: None)
    score = make_scorer(volume.voxel_size_nm, border_threshold_nm)
    say(f"model affinities on {volume.name} {volume.raw.shape} (tta={tta})")
    m = model_affinities(
        model,
        volume.raw,
        volume.voxel_size_nm,
        tta=tta,
        match_intensity=match_intensity,
        n_threads=n_threads,
    )
    say(f"  {m.seconds:.1f} s; agglomeration sweep")
    agg = m.agglomeration
    main, rows = stored_and_swept(m, volume.truth, score)
    report: dict[str, Any] = {
        "volume": volume.name,
        "shape": list(volume.raw.shape),
        "voxel_size_nm": list(volume.voxel_size_nm),
        "border_threshold_nm": border_threshold_nm,
        "metrics": "synapse_toolkit.metrics.cremi_neurons (VOI in bits; lower is better)",
        "model": {
            "model": model,
            **m.model,
            "tta": tta,
            "intensity_matching": match_intensity,
            "inference_s": round(m.seconds, 2),
            "agglomeration": agg,
            "at_model_threshold": main,
            "best_on_test": best(rows),
            "sweep": rows,
        },
        "baselines": {},
    }
    if not baselines:
        return report
    sel_score = (
        None if selection is None else make_scorer(selection.voxel_size_nm, border_threshold_nm)
    )
    for name, fn in (("raw intensity", raw_values), ("boundary map", boundary_values)):
        say(f"baseline: {name}")
        res = _baseline(name, fn, volume, selection, score, sel_score)
        if res is not None:
            report["baselines"][name] = res
    return report


# -- robustness ----------------------------------------------------------------------------------


def zoom_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``labels`` re-gridded to ``shape`` by nearest neighbour on ``scipy.ndimage.zoom``'s grid
    (corners aligned), ids unchanged. ``ndimage.zoom`` itself goes through float64, which turns
    the uint64 ignore id into 0, a real label."""
    index = [
        np.rint(np.arange(m) * ((n - 1) / max(m - 1, 1))).astype(np.intp)
        for n, m in zip(labels.shape, shape, strict=True)
    ]
    return labels[np.ix_(*index)]


def zoomed(vol: FibVolume, factor: float, name: str, *, same_voxel_size: bool = False) -> FibVolume:
    """``vol`` enlarged ``factor`` times (raw linear, 8-bit; truth nearest, ids kept). The voxel
    size shrinks by ``factor`` (the same tissue on a finer grid), or with ``same_voxel_size``
    stays (larger structures on the same grid)."""
    from scipy import ndimage

    raw = ndimage.zoom(vol.raw.astype(np.float32), factor, order=1)
    raw = np.clip(np.round(raw), 0, 255).astype(np.uint8)
    vs = vol.voxel_size_nm if same_voxel_size else _zyx_nm([v / factor for v in vol.voxel_size_nm])
    return FibVolume(name, raw, zoom_labels(vol.truth, raw.shape), vs)


def darkened(vol: FibVolume, fraction: float, level: float, name: str, seed: int = 7) -> FibVolume:
    """``vol`` with a seeded ``fraction`` of its labelled objects given dark cytoplasm: their
    voxels' grey values become ``level`` plus half their deviation from the objects' mean (the
    texture kept, its contrast halved); boundary voxels (the ignored truth) and the other objects
    are unchanged. Neurites with dark cytoplasm touching light ones, as some FIB-SEM volumes show
    them; ``level`` near the membranes' grey makes membranes between two darkened objects
    invisible."""
    from synapse_toolkit.nn.augment import darken_labelled

    raw, n = darken_labelled(vol.raw, vol.truth, fraction, level, seed, name)
    notes = {**vol.notes, "darkened": {"fraction": fraction, "level": level, "seed": seed,
                                       "objects": n}}  # fmt: skip
    return FibVolume(name, raw, vol.truth, vol.voxel_size_nm, vol.boundary, notes)


def perturbations(vol: FibVolume) -> list[tuple[str, FibVolume]]:
    """The volume as another acquisition might show it: grey-value changes, 16-bit counts, noise,
    blur, and finer / coarser voxels (zoom 1.25 and 0.8, voxel size scaled accordingly)."""
    from scipy import ndimage

    r = vol.raw.astype(np.float32)

    def u8(x: np.ndarray) -> np.ndarray:
        return np.clip(np.round(x), 0, 255).astype(np.uint8)

    def same(name: str, raw: np.ndarray) -> tuple[str, FibVolume]:
        return name, FibVolume(name, raw, vol.truth, vol.voxel_size_nm)

    def zoom(name: str, f: float) -> tuple[str, FibVolume]:
        return name, zoomed(vol, f, name)

    noise = np.random.default_rng(0).normal(0, 10, r.shape)
    return [
        same("unchanged", vol.raw),
        same("contrast x0.5", u8(128 + (r - r.mean()) * 0.5)),
        same("contrast x1.4", u8(128 + (r - r.mean()) * 1.4)),
        same("brightness -40", u8(r - 40)),
        same("brightness +40", u8(r + 40)),
        same("gamma 0.6", u8(255 * (r / 255) ** 0.6)),
        same("gamma 1.6", u8(255 * (r / 255) ** 1.6)),
        same("uint16, x200 + 1000", (r * 200 + 1000).astype(np.uint16)),
        same("noise sd 10", u8(r + noise)),
        same("blur sigma 1", u8(ndimage.gaussian_filter(r, 1))),
        zoom("8 nm voxels", 1.25),
        zoom("12.5 nm voxels", 0.8),
    ]


def robustness(
    volume: FibVolume,
    *,
    model: str = DEFAULT_MODEL,
    tta: bool = False,
    border_threshold_nm: float = BORDER_THRESHOLD_NM,
    raw_setting: Row | None = None,
    n_threads: int = 2,
    log: Log | None = None,
) -> list[Row]:
    """CREMI score on perturbed copies: the model with and without intensity matching at its
    stored threshold (best-on-test beside it), and the raw baseline at ``raw_setting``
    (variant, scoring, threshold chosen elsewhere) or, without one, at its best on the copy."""
    say = log or (lambda _m: None)
    out: list[Row] = []
    for name, vol in perturbations(volume):
        say(f"robustness: {name}")
        score = make_scorer(vol.voxel_size_nm, border_threshold_nm)
        row: Row = {"perturbation": name}
        for label, match in (("matched", True), ("unmatched", False)):
            m = model_affinities(
                model,
                vol.raw,
                vol.voxel_size_nm,
                tta=tta,
                match_intensity=match,
                n_threads=n_threads,
            )
            main, rows = stored_and_swept(m, vol.truth, score)
            if main is not None:
                row[label] = main["cremi_score"]
            row[f"{label}_best_on_test"] = best(rows)["cremi_score"]
        values = unit_range(vol.raw)
        if raw_setting is not None:
            affs = baseline_affinities(values, raw_setting["variant"])
            row["raw"] = at(
                affs, vol.truth, score, raw_setting["scoring"], raw_setting["threshold"]
            )["cremi_score"]
        row["raw_best_on_test"] = min(
            best(sweep(baseline_affinities(values, v), vol.truth, score))["cremi_score"]
            for v in ("voxel", "edge-min")
        )
        out.append(row)
    return out
