"""Built-in synapse plugins: section aligner, cleft / signed-proximity detectors (ONNX, tiled),
cleft post-processing, and the partner assigners ``emsynconn``, ``synful`` and
``geometric-baseline``.

The library code lives in :mod:`synapse_toolkit.synapses`; these classes only adapt it to the
stage contracts. Bundled models are in ``models/`` next to this file (see ``models/README.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, NonNegativeInt

from synapse_toolkit import __version__
from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND
from synapse_toolkit.data import Annotations, PartnerTable, SectionTransform, Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.hookspecs import hookimpl
from synapse_toolkit.inference.intensity import INTENSITY_SCALE_HELP
from synapse_toolkit.stages import (
    Aligner,
    Detector,
    ModelOptions,
    PartnerAssigner,
    Port,
    Postprocessor,
    Stage,
    StageOptions,
)
from synapse_toolkit.synapses import DETECTOR_OVERLAP

MODELS = Path(__file__).parent / "models"

_ALIGN_VOLUMES: dict[str, tuple[str, bool]] = {
    # port: (artifact type, is labels)
    "raw": ("intensity", False),
    "neuron_ids": ("labels", True),
    "clefts": ("labels", True),
    "segmentation": ("labels", True),
    "cleft_labels": ("labels", True),
    "proximity": ("map", False),
    "cleft_probability": ("map", False),
}


def _fill_for(port: str, vol: Volume) -> float | int:
    if port in ("clefts", "cleft_labels"):
        return int(CLEFT_BACKGROUND)
    return 0


class SectionTranslation(Aligner["SectionTranslation.Options"]):
    """Per-section translations by phase correlation (robust to missing/defective sections).

    ``mode = "estimate"`` estimates the transform from ``raw`` and applies it to every given
    volume and to ``annotations``/``partners``; ``mode = "inverse"`` takes a ``transform`` input
    and maps everything back to the original frame.
    """

    name: ClassVar[str] = "section-translation"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "per-section translation alignment (phase correlation)"
    inputs: ClassVar[Mapping[str, Port]] = {
        **{
            k: Port(t, f"{k} to align / map back", required=False)
            for k, (t, _) in _ALIGN_VOLUMES.items()
        },
        "annotations": Port("annotations", "point annotations to move", required=False),
        "partners": Port("partners", "partner table to move", required=False),
        "transform": Port("transform", "transform to invert (inverse mode)", required=False),
    }
    outputs: ClassVar[Mapping[str, Port]] = {
        **{k: Port(t, f"aligned {k}") for k, (t, _) in _ALIGN_VOLUMES.items()},
        "annotations": Port("annotations", "moved annotations"),
        "partners": Port("partners", "moved partners"),
        "transform": Port("transform", "per-section shifts (nm) that were applied"),
    }

    class Options(StageOptions):
        mode: Literal["estimate", "inverse"] = "estimate"
        sigma_px: float = Field(1.0, ge=0, description="Smoothing before correlation (pixels).")
        max_shift_px: int = Field(64, gt=0, description="Largest section-to-section shift.")
        min_quality: float = Field(3.0, gt=0, description="Absolute peak quality floor.")
        min_relative_quality: float = Field(
            0.6, ge=0, description="Defective if below this x the median pair quality."
        )
        integer: bool = Field(
            True, description="Whole-pixel shifts (labels are always shifted by whole pixels)."
        )
        n_references: int = Field(
            1, ge=1, description="Previous good sections each section is registered to (median)."
        )
        patch_px: int | None = Field(
            96, gt=8, description="Patch side of the voting correlation; none = whole sections."
        )
        patch_step_px: int = Field(32, gt=0, description="Stride between voting patches.")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from synapse_toolkit.synapses.alignment import (
            estimate_translations,
            transform_annotations,
        )
        from synapse_toolkit.synapses.partners import transform_partners

        o = self.options
        vols = {k: v for k, v in inputs.items() if k in _ALIGN_VOLUMES and v is not None}
        if o.mode == "inverse":
            if inputs.get("transform") is None:
                raise DataError(f"stage {self.context.stage_name}: inverse mode needs `transform`")
            transform: SectionTransform = inputs["transform"].inverse()
        else:
            raw = inputs.get("raw")
            if raw is None:
                raise DataError(f"stage {self.context.stage_name}: estimate mode needs `raw`")
            transform, report = estimate_translations(
                raw.data, raw.voxel_size_nm, sigma_px=o.sigma_px,
                max_shift_px=o.max_shift_px, min_quality=o.min_quality,
                min_relative_quality=o.min_relative_quality,
                integer=o.integer,
                n_references=o.n_references,
                patch_px=o.patch_px, patch_step_px=o.patch_step_px,
            )  # fmt: skip
            if report.skipped:
                self.context.logger.info("skipped sections (missing/defective): %s", report.skipped)
        if not vols:
            raise DataError(f"stage {self.context.stage_name}: no volume to align")
        ref = next(iter(vols.values()))
        out: dict[str, Any] = {"transform": transform}
        for port, vol in vols.items():
            out[port] = self._apply(port, vol, transform)
        if inputs.get("annotations") is not None:
            out["annotations"] = transform_annotations(inputs["annotations"], transform, ref)
        if inputs.get("partners") is not None:
            out["partners"] = transform_partners(inputs["partners"], transform, ref)
        return out

    def _apply(self, port: str, vol: Volume, transform: SectionTransform) -> Volume:
        from synapse_toolkit.synapses.alignment import apply_transform

        labels = _ALIGN_VOLUMES[port][1]
        res = self.context.create_volume(port, vol.shape, vol.dtype, like=vol,
                                         fill_value=_fill_for(port, vol))  # fmt: skip
        nz = vol.spatial_shape[0]
        single = np.zeros((1, 2))
        for z in range(nz):
            key = (slice(None), slice(z, z + 1)) if len(vol.shape) == 4 else (slice(z, z + 1),)
            sec = np.asarray(vol.data[key])
            single[0] = transform.shifts_nm[z]
            res.data[key] = apply_transform(
                sec, SectionTransform(single.copy()), vol.voxel_size_nm, labels=labels,
                fill=_fill_for(port, vol),
            )  # fmt: skip
        return res


class _OnnxDetector(Detector["_OnnxDetector.Options"]):
    """Tiled ONNX inference of a synapse U-Net on ``raw``."""

    output_port: ClassVar[str] = ""
    inputs: ClassVar[Mapping[str, Port]] = {"raw": Port("intensity", "EM intensities (uint8)")}

    class Options(ModelOptions):
        model: str = Field("", description="Registry model name (default: the bundled one).")
        overlap: tuple[NonNegativeInt, NonNegativeInt, NonNegativeInt] = Field(
            DETECTOR_OVERLAP, description="Tile overlap (voxels)."
        )
        intensity_scale: float | None = Field(None, description=INTENSITY_SCALE_HELP)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from synapse_toolkit.inference.onnx_model import OnnxModel

        raw: Volume = inputs["raw"]
        o = self.options
        path = _resolved_model(self, o.model, o.model_path, o.sha256, raw=raw)
        model = OnnxModel(path, n_threads=self.context.n_threads)
        out = self.context.create_volume(self.output_port, (1, *raw.spatial_shape), np.float32,
                                         like=raw)  # fmt: skip
        from synapse_toolkit.inference.tiled import TileGrid

        n = len(TileGrid(raw.spatial_shape, model.input_shape, model.output_shape,
                         self.options.overlap))  # fmt: skip
        task = self.context.progress("tiles", n)
        model.predict(raw.data, out.data, tuple(self.options.overlap), progress=task.advance,
                      intensity_scale=self.options.intensity_scale)  # fmt: skip
        return {self.output_port: out}


def _resolved_model(
    stage: Stage, name: str, path: Path | None, sha256: str | None, raw: Volume | None = None
) -> Path:
    """The stage's verified ONNX file (registry name, or a checked path), noted in the manifest.

    With ``raw``, a registry model trained on synthetic phantoms that runs on a volume that is not
    a phantom gets one warning line, recorded as ``domain_warning`` (:mod:`synapse_toolkit.domain`).
    """
    from synapse_toolkit.models import resolve_model

    chosen = name or DEFAULT_MODELS[stage.name]
    model = resolve_model(f"stage {stage.context.stage_name}", name=chosen, path=path,
                          sha256=sha256, logger=stage.context.logger)  # fmt: skip
    stage.context.record("model", model.as_record())
    if raw is not None and path is None:
        from synapse_toolkit.datasets import get_registry
        from synapse_toolkit.domain import domain_warning, input_domain, model_domain

        mdom = model_domain(None, get_registry().get(chosen))
        if mdom.to_dict():
            stage.context.record("model_domain", mdom.to_dict())
        warning = domain_warning(stage.context.stage_name, chosen, mdom, input_domain(raw))
        if warning:
            stage.context.logger.warning(warning)
            stage.context.record("domain_warning", warning)
    return model.path


#: registry names of the bundled models, by stage plugin name
DEFAULT_MODELS = {
    "synapse-clefts": "synapses/clefts",
    "synapse-polarity": "synapses/polarity",
    "emsynconn": "synapses/pruner",
    "synful": "synapses/synful",
}


class CleftDetector(_OnnxDetector):
    """Synaptic cleft probability (sigmoid U-Net, ONNX)."""

    name: ClassVar[str] = "synapse-clefts"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "cleft probability map, U-Net (ONNX, tiled)"
    output_port: ClassVar[str] = "cleft_probability"
    outputs: ClassVar[Mapping[str, Port]] = {
        "cleft_probability": Port("map", "cleft probability (1, z, y, x) in [0, 1]", channels=1)
    }


class PolarityDetector(_OnnxDetector):
    """EMSynConn signed proximity (tanh U-Net, ONNX): + near pre, - near post sites."""

    name: ClassVar[str] = "synapse-polarity"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "signed synaptic proximity in [-1, 1], U-Net (ONNX, tiled)"
    output_port: ClassVar[str] = "proximity"
    outputs: ClassVar[Mapping[str, Port]] = {
        "proximity": Port("map", "signed proximity (1, z, y, x) in [-1, 1]", channels=1)
    }


class CleftLabels(Postprocessor["CleftLabels.Options"]):
    """Cleft probability → CREMI cleft label volume (threshold, cc3d, size filter; background
    0xffffffffffffffff)."""

    kind: ClassVar[str] = "postprocessor"
    name: ClassVar[str] = "cleft-labels"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "threshold + connected components of a cleft probability map"
    inputs: ClassVar[Mapping[str, Port]] = {
        "cleft_probability": Port("map", "cleft probability (1, z, y, x) or (z, y, x)")
    }
    outputs: ClassVar[Mapping[str, Port]] = {"clefts": Port("labels", "CREMI cleft ids")}

    class Options(StageOptions):
        threshold: float = Field(
            0.9, ge=0, le=1, description="Strict threshold (0.9 suits the bundled model)."
        )
        min_voxels: int = Field(200, ge=0, description="Smallest cleft kept (voxels).")
        block_shape: tuple[int, int, int] | None = Field(
            None, description="Block shape (z, y, x voxels); default: the run's block_shape."
        )
        n_workers: int | None = Field(
            None, ge=1, description="Blocks processed at once (default: [execution] n_workers)."
        )
        executor: Literal["processes", "threads"] = Field("processes", description="Worker kind.")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from synapse_toolkit.synapses.blockwise import cleft_labels_blockwise

        prob: Volume = inputs["cleft_probability"]
        o = self.options
        out = self.context.create_volume("clefts", prob.spatial_shape, np.uint64, like=prob,
                                         fill_value=int(CLEFT_BACKGROUND))  # fmt: skip
        n = self.context.block_workers(o.n_workers)
        res = cleft_labels_blockwise(
            prob.data, out.data, o.threshold, o.min_voxels,
            block_shape=o.block_shape or self.context.block_shape,
            work_dir=self.context.work_dir(), n_workers=n,
            pool=self.context.block_pool(n, o.executor, "cleft-labels", count_blocks(
                prob.spatial_shape, o.block_shape or self.context.block_shape)),
            progress=_progress(self.context),
        )  # fmt: skip
        self.context.record("blockwise", res)
        _remove_work(self.context)
        return {"clefts": out}


def count_blocks(shape: tuple[int, int, int], block_shape: tuple[int, int, int]) -> int:
    from synapse_toolkit.blockwise import count_blocks as count

    return count(shape, block_shape)


def _progress(context: Any) -> Any:
    def start(phase: str, n: int) -> Any:
        return context.progress(f"blocks ({phase})", n).advance

    return start


def _remove_work(context: Any) -> None:
    """Remove the stage's block work after success (the stage's artifacts now hold it)."""
    import contextlib
    import shutil

    work = context.work_dir()
    shutil.rmtree(work, ignore_errors=True)
    with contextlib.suppress(OSError):
        work.parent.rmdir()  # <run dir>/blockwise, when no other stage uses it


def _spatial(vol: Volume) -> np.ndarray:
    arr = vol.read()
    return arr[0] if arr.ndim == 4 else arr


def _check_grids(stage: str, **vols: Volume) -> None:
    shapes = {k: v.spatial_shape for k, v in vols.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"stage {stage}: inputs are on different grids: {shapes}")


#: the partner assigners' optional input: rows that are one synapse in a coarser segmentation
#: are de-duplicated (:func:`_deduplicated_by_coarse`)
COARSE_SEGMENTATION = Port(
    "labels",
    "a coarser segmentation of the same volume (e.g. the main job's): rows whose pre and post "
    "sites share its segments and lie within dedup_distance_nm are one synapse",
    required=False,
    grid="in",
)


def _coarse_input(stage: str, inputs: Mapping[str, Any], **vols: Volume) -> Volume | None:
    """The optional ``coarse_segmentation`` input, checked to lie on the grid of ``vols``."""
    coarse: Volume | None = inputs.get("coarse_segmentation")
    extra = {"coarse_segmentation": coarse} if coarse is not None else {}
    _check_grids(stage, **vols, **extra)
    return coarse


def _deduplicated_by_coarse(
    table: PartnerTable, coarse: Volume | None, distance_nm: float
) -> PartnerTable:
    """``table`` de-duplicated by the segment ids of ``coarse`` (unchanged without it)."""
    from synapse_toolkit.synapses.partners import deduplicate_by

    return table if coarse is None else deduplicate_by(table, coarse, distance_nm)


class EMSynConn(PartnerAssigner["EMSynConn.Options"]):
    """EMSynConn partners: signed-proximity candidates paired across touching segments, kept or
    dropped by the pruning CNN (``prune = false`` keeps every candidate), de-duplicated (also by
    ``coarse_segmentation`` when wired)."""

    name: ClassVar[str] = "emsynconn"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "signed-proximity candidates + pruning 3D CNN (EMSynConn)"
    inputs: ClassVar[Mapping[str, Port]] = {
        "raw": Port(
            "intensity", "EM intensities (needed by the pruning CNN)", required=False, grid="in"
        ),
        "proximity": Port("map", "signed proximity (1, z, y, x)", grid="in"),
        "segmentation": Port("labels", "neuron segmentation", grid="in"),
        "coarse_segmentation": COARSE_SEGMENTATION,
    }
    outputs: ClassVar[Mapping[str, Port]] = {
        "partners": Port("partners", "pre→post pairs"),
        "annotations": Port("annotations", "the same in CREMI form"),
    }

    class Options(StageOptions):
        prune: bool = Field(True, description="Run the pruning CNN on the candidates.")
        pruner_model: str = Field("", description="Registry name of the pruning CNN "
                                  "(default: the bundled one).")  # fmt: skip
        pruner_model_path: Path | None = Field(None, description="A pruning ONNX file instead.")
        pruner_sha256: str | None = Field(None, description="Expected sha256 of the file.")
        prune_threshold: float = Field(0.5, ge=0, le=1)
        intensity_scale: float | None = Field(None, description="The pruning CNN's input: "
                                              + INTENSITY_SCALE_HELP)  # fmt: skip
        threshold: float = Field(
            0.3, gt=0, lt=1, description="Proximity threshold (±); 0.4 suits prune = false."
        )
        min_voxels: int = Field(50, ge=1)
        max_gap_nm: float = Field(60.0, gt=0)
        max_centroid_distance_nm: float = Field(400.0, gt=0)
        dedup_distance_nm: float = Field(400.0, ge=0)
        block_shape: tuple[int, int, int] | None = Field(
            None, description="Block shape (z, y, x voxels); default: the run's block_shape."
        )
        context: tuple[int, int, int] = Field(
            (4, 96, 96), description="Voxels read around each block for its candidates (z, y, x)."
        )
        n_workers: int | None = Field(
            None, ge=1, description="Blocks processed at once (default: [execution] n_workers)."
        )
        executor: Literal["processes", "threads"] = Field("processes", description="Worker kind.")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from synapse_toolkit.synapses.assigners import EMSynConnSettings
        from synapse_toolkit.synapses.blockwise import emsynconn_blockwise
        from synapse_toolkit.synapses.candidates import CandidateSettings

        o = self.options
        prox: Volume = inputs["proximity"]
        seg: Volume = inputs["segmentation"]
        raw: Volume | None = inputs.get("raw")
        coarse = _coarse_input(self.context.stage_name, inputs, proximity=prox, segmentation=seg)
        pruner = None
        if o.prune:
            if raw is None:
                raise DataError(f"stage {self.context.stage_name}: pruning needs the `raw` input")
            pruner = str(_resolved_model(self, o.pruner_model, o.pruner_model_path,
                                         o.pruner_sha256, raw=raw))  # fmt: skip
        settings = EMSynConnSettings(
            candidates=CandidateSettings(
                threshold=o.threshold, min_voxels=o.min_voxels, max_gap_nm=o.max_gap_nm,
                max_centroid_distance_nm=o.max_centroid_distance_nm,
            ),
            prune_threshold=o.prune_threshold,
            dedup_distance_nm=o.dedup_distance_nm,
        )  # fmt: skip
        n = self.context.block_workers(o.n_workers)
        table, res = emsynconn_blockwise(
            None if raw is None else raw.data, prox.data, seg.data, seg.voxel_size_nm,
            seg.offset_nm, settings=settings, pruner=pruner, n_threads=1,
            intensity_scale=o.intensity_scale,
            block_shape=o.block_shape or self.context.block_shape, context=o.context,
            work_dir=self.context.work_dir(), n_workers=n,
            pool=self.context.block_pool(n, o.executor, "emsynconn", count_blocks(
                seg.spatial_shape, o.block_shape or self.context.block_shape)),
            progress=_progress(self.context),
        )  # fmt: skip
        self.context.record("blockwise", res)
        _remove_work(self.context)
        return _partner_outputs(_deduplicated_by_coarse(table, coarse, o.dedup_distance_nm), seg)


class GeometricBaseline(PartnerAssigner["GeometricBaseline.Options"]):
    """No-learning baseline: each cleft's most positive neighbouring segment is pre-synaptic,
    segments with negative mean polarity near the cleft are post-synaptic."""

    name: ClassVar[str] = "geometric-baseline"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "clefts + polarity overlap with segments (no learning)"
    inputs: ClassVar[Mapping[str, Port]] = {
        "clefts": Port("labels", "CREMI cleft labels"),
        "proximity": Port("map", "signed proximity (1, z, y, x)", grid="in"),
        "segmentation": Port("labels", "neuron segmentation", grid="in"),
    }
    outputs: ClassVar[Mapping[str, Port]] = EMSynConn.outputs

    class Options(StageOptions):
        neighbourhood_nm: float = Field(80.0, gt=0)
        min_pre_polarity: float = Field(0.1)
        max_post_polarity: float = Field(-0.1)
        min_overlap_voxels: int = Field(20, ge=1)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from synapse_toolkit.synapses.assigners import BaselineSettings, assign_geometric
        from synapse_toolkit.synapses.targets import Grid

        cl: Volume = inputs["clefts"]
        prox: Volume = inputs["proximity"]
        seg: Volume = inputs["segmentation"]
        _check_grids(self.context.stage_name, clefts=cl, proximity=prox, segmentation=seg)
        settings = BaselineSettings(**self.options.model_dump())
        table = assign_geometric(cl.read(), _spatial(prox), seg.read(), Grid.of(seg), settings)
        return _partner_outputs(table, seg)


def _partner_outputs(table: PartnerTable, seg: Volume) -> dict[str, Any]:
    ann: Annotations = table.to_annotations(seg.offset_nm)
    return {"partners": table, "annotations": ann}


from syntk_synapses import clustering as _clustering  # noqa: E402  (needs _resolved_model)
from syntk_synapses import synful as _synful  # noqa: E402


@hookimpl
def syntk_register_stages(registry: Any) -> None:
    registry.add_aligner(SectionTranslation)
    registry.add_detector(CleftDetector)
    registry.add_detector(PolarityDetector)
    registry.add_postprocessor(CleftLabels)
    registry.add_partner_assigner(EMSynConn)
    registry.add_partner_assigner(GeometricBaseline)
    registry.add_partner_assigner(_synful.Synful)
    registry.add_clusterer(_clustering.AutoencoderKMeans)
    registry.add_loader(_clustering.PhantomSynapseTypes)
