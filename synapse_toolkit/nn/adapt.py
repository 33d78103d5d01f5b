"""Label-free adaptation of a shipped affinity model to a volume (``syntk adapt affinities``).

The ONNX model's weights are loaded back into its U-Net (the architecture is in its metadata),
then trained for a time budget with the affinity trainer: the source's labelled data stays in
the loss (so the model cannot drift), and mean-teacher consistency
(:mod:`synapse_toolkit.nn.consistency`) runs on crops of the target volume, whose grey values are
matched to the source's training quantiles as inference does. When the source model carries a
spectrum reference (:mod:`synapse_toolkit.inference.spectrum`), the target is first filtered to
it, section by section, as inference would filter it, and the adapted model keeps the reference.
The result is exported to ONNX with the source's intensity reference and waterz setting, plus an
``adaptation`` record (source and target sha256, settings). No labels of the target volume are
used anywhere.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.errors import DataError, SyntkError
from synapse_toolkit.fsio import sha256_file
from synapse_toolkit.inference.quality import QUALITY_KEY
from synapse_toolkit.models import names_a_file, resolve_name_or_path

#: labelled source data for the FIB models: the bundled gala train volume, x in [0, 150)
GALA_LABELLED: dict[str, Any] = {
    "raw": "gala-fib/train-image",
    "labels": "gala-fib/train-gt",
    "roi": [[0, 50], [0, 100], [0, 150]],
}
#: photometric augmentation of both the labelled crops and the strong view
STRONG = {
    "intensity_scale": 0.3, "intensity_shift": 0.1, "gamma": 0.4, "noise_std": 0.05,
    "blur_prob": 0.6, "blur_sigma": 2.0, "missing_prob": 0.02,
}  # fmt: skip


def resolve_model(model: str) -> Path:
    """``--model``: a registry name or an ``.onnx`` path, verified as every stage's model is
    (:func:`synapse_toolkit.models.resolve_model`)."""
    return resolve_name_or_path(f"--model {model}", model).path


#: the modality of the labelled source data adaptation keeps in its loss (:data:`GALA_LABELLED`)
ADAPTABLE_MODALITY = "FIB-SEM"


def check_adaptable(model: str, meta: dict[str, Any]) -> None:
    """Refuse a model of another domain than the labelled source data adaptation trains on
    (FIB-SEM, isotropic): its declared modality (metadata, else its registry entry), or, when
    none is declared, an anisotropic voxel size."""
    from synapse_toolkit.domain import model_domain

    entry = None
    if not names_a_file(model):
        from synapse_toolkit.datasets import get_registry

        entry = get_registry().get(model)
    dom = model_domain(meta, entry)
    vs = dom.voxel_size_nm
    anisotropic = vs is not None and max(vs) / min(vs) > 1.5
    if (dom.modality is not None and dom.modality != ADAPTABLE_MODALITY) or (
        dom.modality is None and anisotropic
    ):
        what = dom.modality or f"anisotropic ({list(vs or ())} nm)"
        raise DataError(
            f"--model {model} is for {what} data; adaptation keeps {ADAPTABLE_MODALITY} labelled "
            f"data (gala) in its loss, so it adapts {ADAPTABLE_MODALITY} models only"
        )


def _load_onnx(path: Path, external_data: bool = True) -> Any:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=external_data)
    except OSError:
        raise
    except Exception as exc:  # protobuf's DecodeError for a file that is not a model
        raise DataError(f"{path}: not an ONNX model ({type(exc).__name__})") from None


def onnx_metadata(path: Path) -> dict[str, Any]:
    """The JSON-decoded ``metadata_props`` of an ONNX file."""
    m = _load_onnx(path, external_data=False)
    return {p.key: json.loads(p.value) for p in m.metadata_props}


def onnx_tensors(path: Path) -> dict[str, np.ndarray]:
    """The named weight tensors (graph initializers) of an ONNX file."""
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in _load_onnx(path).graph.initializer}


def load_onnx_unet(path: Path) -> tuple[Any, dict[str, Any]]:
    """The torch U-Net with the ONNX model's weights, and its metadata."""
    import torch

    from synapse_toolkit.nn.unet import UNet3D, UNetConfig

    meta = onnx_metadata(path)
    if "model_config" not in meta:
        raise SyntkError(f"{path}: no model_config in its metadata (not a syntk U-Net export)")
    net = UNet3D(UNetConfig.from_dict(meta["model_config"]))
    weights = onnx_tensors(path)
    state = net.state_dict()
    missing = [k for k in state if k not in weights]
    if missing:
        raise SyntkError(f"{path}: weights {missing[:3]} not found in the ONNX graph")
    net.load_state_dict({k: torch.from_numpy(np.array(weights[k])) for k in state})
    return net, meta


def onnx_state(model: str) -> dict[str, Any]:
    """A training state from an exported model (registry name or ``.onnx``): its architecture,
    weights and training iteration (``training.init_from``)."""
    from synapse_toolkit.nn.unet import UNetConfig

    net, meta = load_onnx_unet(resolve_model(model))
    arch = UNetConfig.from_dict({"out_channels": len(meta.get("offsets") or [0, 0, 0]),
                                 **meta["model_config"]})  # fmt: skip
    return {
        "model_config": arch.to_dict(),
        "state_dict": net.state_dict(),
        "iteration": int(meta.get("iteration") or 0),
    }


def _split(spec: str) -> tuple[str, str | None]:
    path, _, key = spec.partition(":")
    return path, key or None


def _h5_dataset(path: str, key: str | None) -> str:
    from synapse_toolkit.io.cremi import choose_hdf5_dataset, open_hdf5_file

    try:
        with open_hdf5_file(Path(path), "give an HDF5 file as FILE.h5[:DATASET]") as f:
            return choose_hdf5_dataset(f, Path(path), key)
    except DataError as exc:
        raise DataError(f"--unlabelled {exc}") from None


def filtered_target(
    path: str, dataset: str, reference: dict[str, Any], out_dir: Path, slab: int = 16
) -> tuple[str, str]:
    """The target volume filtered to ``reference`` (a ``spectrum_reference``) exactly as
    inference reads it (:class:`~synapse_toolkit.inference.spectrum.Filtered`: int16 for an
    8-bit source, so the filter's overshoot is kept, float32 otherwise), written slab by slab
    (the filter is in-plane) to ``out_dir/target_spectrum_matched.h5``."""
    import h5py

    from synapse_toolkit.inference import spectrum

    dst = out_dir / "target_spectrum_matched.h5"
    with h5py.File(path, "r") as f_in, h5py.File(dst, "w") as f_out:
        src = f_in[dataset]
        if (problem := spectrum.too_small(tuple(src.shape))) is not None:
            raise DataError(f"--unlabelled {path}:{dataset} {problem}")
        view = spectrum.Filtered(src, spectrum.matching_kernel(src, reference))
        out = f_out.create_dataset(
            "raw", shape=src.shape, dtype=view.dtype,
            chunks=(min(slab, src.shape[0]), *src.shape[1:]),
        )  # fmt: skip
        for z in range(0, src.shape[0], slab):
            out[z : z + slab] = view[z : z + slab]
        for key, value in src.attrs.items():
            out.attrs[key] = value
    return str(dst), "raw"


def adapt_affinities(
    model: str,
    unlabelled: str,
    out: str | Path,
    *,
    minutes: float = 20.0,
    voxel_size_nm: tuple[float, float, float] | None = None,
    iterations: int = 1_000_000,
    lr: float = 2e-4,
    weight: float = 1.0,
    num_threads: int = 2,
    seed: int = 0,
    work_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    selection: Any = None,
    source_raw: np.ndarray | None = None,
) -> dict[str, Any]:
    """Adapt ``model`` to the volume ``unlabelled`` (``FILE.h5[:DATASET]``); write ``out``.

    ``selection`` / ``source_raw``: see :func:`target_threshold` (default: the gala crops).
    """
    import torch

    from synapse_toolkit.datasets import resolve_dataset
    from synapse_toolkit.nn.export import export_checkpoint, update_metadata
    from synapse_toolkit.nn.training import TrainConfig, train
    from synapse_toolkit.nn.unet import UNetConfig

    src = resolve_model(model)
    source_sha = sha256_file(src)  # of the file whose weights and metadata are loaded next
    net, meta = load_onnx_unet(src)
    check_adaptable(model, meta)
    t_path, key = _split(unlabelled)
    if Path(t_path).suffix not in (".h5", ".hdf", ".hdf5"):
        raise DataError(f"--unlabelled {t_path}: HDF5 (.h5) expected")
    dataset = _h5_dataset(t_path, key)
    model_vs = meta.get("voxel_size_nm")
    if (
        voxel_size_nm is not None
        and model_vs is not None
        and not np.allclose(voxel_size_nm, model_vs, rtol=0.05)
    ):
        raise SyntkError(
            f"--voxel-size {list(voxel_size_nm)} nm differs from the model's {model_vs} nm; "
            "resample the volume to the model's voxel size first"
        )
    labelled = {
        "raw": str(resolve_dataset(GALA_LABELLED["raw"])),
        "labels": str(resolve_dataset(GALA_LABELLED["labels"])),
        "roi": GALA_LABELLED["roi"],
    }
    settings: dict[str, Any] = {
        "minutes": minutes, "lr": lr, "consistency_weight": weight, "seed": seed,
        "labelled": "gala FIB-SEM train volume, x in [0, 150) (source data kept in the loss)",
    }  # fmt: skip
    model_cfg = {k: v for k, v in meta["model_config"].items() if k != "out_channels"}
    augment = {"flip": True, "transpose_axes": [0, 1, 2], "elastic_sigma": 0.0, "margin": [0, 0, 0]}
    augment.update({k: v for k, v in STRONG.items() if k != "missing_prob"})
    spectrum_ref = meta.get("spectrum_reference")
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        c_path, c_dataset = t_path, dataset
        if spectrum_ref:
            log("filtering the target to the source model's spectrum reference")
            c_path, c_dataset = filtered_target(t_path, dataset, spectrum_ref, Path(tmp))
            settings["target_spectrum_matched"] = True
        semi = {"volumes": [{"raw": c_path, "raw_dataset": c_dataset}], "weight": weight,
                "start": 0, "rampup_iterations": 100, "every": 1, "strong": STRONG}  # fmt: skip
        init = Path(tmp) / "source.pt"
        arch = UNetConfig.from_dict({"out_channels": len(meta["offsets"]), **model_cfg})
        torch.save({"model_config": arch.to_dict(), "state_dict": net.state_dict()}, init)
        training = {
            "iterations": iterations, "time_limit_minutes": minutes, "lr": lr, "loss": "bce",
            "input_shape": meta["input_shape"], "seed": seed, "num_threads": num_threads,
            "out_dir": str(Path(tmp) / "run"), "checkpoint_every": 50, "init_from": str(init),
            "log_every": 10,
        }  # fmt: skip
        cfg = TrainConfig.model_validate({
            "model": model_cfg, "data": {"volumes": [labelled]}, "augment": augment,
            "semi_supervised": semi, "training": training,
        })  # fmt: skip
        summary = train(cfg, log=log)
        out = Path(out)
        export_checkpoint(summary["latest"], out)
        if spectrum_ref:  # inference filters the target as the adaptation saw it
            update_metadata(out, {"spectrum_reference": spectrum_ref}, sidecar=False)
    target_sha = sha256_file(t_path)
    updates: dict[str, Any] = {
        "adaptation": {
            "source_model": str(model),
            "source_sha256": source_sha,
            "target": f"{Path(t_path).name}:{dataset}",
            "target_sha256": target_sha,
            "iterations": summary["iterations"],
            "wall_s": round(summary["time_s"], 1),
            **settings,
        }
    }
    if "voxel_size_nm" in meta:
        updates["voxel_size_nm"] = meta["voxel_size_nm"]
    source_agg = meta.get("agglomeration") or {}
    if source_agg.get("scoring"):
        log("choosing the target threshold without target labels")
        target_raw = _read_target(t_path, dataset)
        source_ref = meta.get(QUALITY_KEY) or {}
        band = source_ref.get("band_factors") or list(DEFAULT_BAND)
        ridges = source_ref.get("ridges") or {}
        agg, ref, sig = target_threshold(
            out, str(source_agg["scoring"]), target_raw, (float(band[0]), float(band[1])),
            num_threads, selection=selection, source_raw=source_raw,
            fragments=source_agg.get("fragments"),
            ridge_threshold=float(ridges["threshold"]) if "threshold" in ridges else None,
        )  # fmt: skip
        updates["agglomeration"] = agg
        updates[QUALITY_KEY] = ref
        updates["adaptation"]["target_signals"] = sig
    written = update_metadata(out, updates)
    return {**updates["adaptation"], "agglomeration": updates.get("agglomeration"), "out": written}


#: warning band (factors of the reference boundary fraction) when the source model has none:
#: the FIB models' band (benchmarks/fib_quality.py: 0.87 separates the validation-crop copies
#: on which CREMI more than doubles from the others; 1.5 is a guard, no copy raised the fraction)
DEFAULT_BAND = (0.87, 1.5)
#: the target statistic is taken on a central crop of at most this many voxels per axis
TARGET_CROP = 160


def _read_target(path: str, dataset: str) -> np.ndarray:
    from synapse_toolkit.io.cremi import open_hdf5_file

    with open_hdf5_file(Path(path)) as f:
        arr = f[dataset]
        if len(arr.shape) != 3:
            raise DataError(f"--unlabelled {path}:{dataset}: expected (z, y, x), got {arr.shape}")
        box = tuple(
            slice(max(0, (n - TARGET_CROP) // 2), max(0, (n - TARGET_CROP) // 2) + TARGET_CROP)
            for n in arr.shape
        )
        return np.asarray(arr[box])


#: how ``syntk adapt`` sets the target threshold: "validation" (the threshold chosen on the
#: source's labelled validation crop, as is), "cdf" (carried over by the weakest-affinity
#: distribution) or "size" (the target threshold whose segment size matches the source's)
THRESHOLD_RULE = "validation"


def target_threshold(
    model: str | Path,
    scoring: str,
    target_raw: np.ndarray,
    band: tuple[float, float],
    num_threads: int = 2,
    rule: str = THRESHOLD_RULE,
    selection: Any = None,
    source_raw: np.ndarray | None = None,
    fragments: dict[str, Any] | None = None,
    ridge_threshold: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The waterz setting of an adapted ``model`` for its target, chosen without target labels.

    A threshold is chosen on the source's labelled validation crop (gala train, x in
    [150, 200); best CREMI score, no border mask, single pass). Two label-free ways to carry it
    to the target are computed beside it (:mod:`synapse_toolkit.inference.quality`): matching the
    fraction of voxels whose weakest affinity is below it ("cdf"), and matching the segment size
    in validation-crop-sized tiles on the source's training region ("size"); ``rule`` picks the
    stored one. ``selection`` (a labelled :class:`synapse_toolkit.evaluation.fib.FibVolume`)
    and ``source_raw`` (unlabelled source raw for the size reference) replace the gala crops.
    ``fragments``: the source model's stored fragments, used for the validation threshold and
    the size candidate, and stored with the choice.
    Returns ``(agglomeration, quality_reference, target_signals)``.
    """
    from synapse_toolkit.evaluation import fib
    from synapse_toolkit.inference import quality

    if rule not in ("validation", "cdf", "size"):
        raise SyntkError(f"threshold rule {rule!r}: use validation, cdf or size")
    val = selection if selection is not None else fib.gala_validation_crop()
    m_val = fib.model_affinities(str(model), val.raw, val.voxel_size_nm, n_threads=num_threads)
    rows = fib.sweep(m_val.affinities, val.truth, fib.make_scorer(val.voxel_size_nm, 0.0),
                     scorings=[scoring], fragments=fragments)  # fmt: skip
    chosen = fib.best(rows)
    t_val = float(chosen["threshold"])
    ref = quality.reference(
        [m_val.affinities], band, f"{val.name} (single pass, intensity matched)",
        f"the source model's band factors {list(band)}",
    )  # fmt: skip
    ref["band_factors"] = list(band)
    if ridge_threshold is not None:  # the source's ridge filter, this model's recall of it
        from synapse_toolkit.inference.ridges import ridge_reference

        ref["ridges"] = ridge_reference(val.raw, m_val.affinities, ridge_threshold,
                                        f"{val.name} (single pass, intensity matched)")  # fmt: skip
    if source_raw is None:
        source_raw = fib.gala_volume("train").raw[:, :, :150]
    m_src = fib.model_affinities(str(model), source_raw, val.voxel_size_nm, n_threads=num_threads)
    ref_size = next(
        iter(quality.size_curve(m_src.affinities, scoring, [t_val], fragments).values())
    )
    m_t = fib.model_affinities(str(model), target_raw, fib.GALA_VOXEL_SIZE_NM,
                               n_threads=num_threads)  # fmt: skip
    candidates = {
        "validation": t_val,
        "cdf": quality.matched_threshold(quality.weakest_affinity(m_t.affinities), ref, t_val),
        "size": quality.size_matched_threshold(
            quality.size_curve(m_t.affinities, scoring, fragments=fragments), ref_size
        ),
    }
    how = {
        "validation": "used as is",
        "cdf": "carried to the target by matching the fraction of voxels whose weakest affinity "
        "is below it",
        "size": "carried to the target by matching the segment size in 50x100x50 tiles "
        f"({ref_size:.0f} voxels at it on the source's training region)",
    }[rule]
    sig = quality.signals(m_t.affinities)
    agg = {
        "scoring": scoring,
        "threshold": float(candidates[rule]),
        **({"fragments": dict(fragments)} if fragments else {}),
        "chosen_on": (
            f"no target labels: {scoring} @ {t_val:g} chosen on {val.name} with this model "
            f"(best cremi_score, no border mask, single pass), {how} (target: central crop "
            f"{list(target_raw.shape)})"
        ),
        "rule": rule,
        "candidates": candidates,
        "selection_scores": {
            k: round(float(chosen[k]), 4) for k in ("voi", "arand", "cremi_score")
        },
    }
    return agg, ref, {"boundary_fraction": sig["boundary_fraction"], "crop": list(target_raw.shape)}
