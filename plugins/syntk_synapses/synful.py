"""The ``synful`` partner assigner: Funke's edge classifier in Synful's factorisation (post-synaptic
mask + vector to the pre-synaptic partner), with the direction head as an option of the same
model. The library code is :mod:`synapse_toolkit.synapses.synful`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, NonNegativeInt

from synapse_toolkit import __version__
from synapse_toolkit.data import Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.inference.intensity import INTENSITY_SCALE_HELP
from synapse_toolkit.stages import ModelOptions, PartnerAssigner, Port
from syntk_synapses import COARSE_SEGMENTATION

if TYPE_CHECKING:
    from synapse_toolkit.data import PartnerTable


class Synful(PartnerAssigner["Synful.Options"]):
    """Synful partners: a U-Net (ONNX, tiled) predicts the post-synaptic mask, the vector (nm) to
    the pre-synaptic partner and a unit direction; components of the thresholded mask become
    post sites, pre = site + vector (or + direction x distance from the clefts with
    ``head = "direction"``), segment ids are looked up, rows grouped and de-duplicated (also by
    ``coarse_segmentation`` when wired: split segments of one neuron give one row).
    Options left unset take the values chosen for the head (and combination) on development
    phantom seeds (:data:`synapse_toolkit.synapses.synful.TUNED_DEFAULTS`)."""

    name: ClassVar[str] = "synful"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "post-synaptic mask + partner vectors U-Net (Synful)"
    inputs: ClassVar[Mapping[str, Port]] = {
        "raw": Port("intensity", "EM intensities", grid="in"),
        "segmentation": Port("labels", "neuron segmentation", grid="in"),
        "clefts": Port(
            "labels", "CREMI cleft labels (head = 'direction')", required=False, grid="in"
        ),
        "proximity": Port(
            "map",
            "signed proximity (combine = 'emsynconn' or 'verified')",
            required=False,
            grid="in",
        ),
        "coarse_segmentation": COARSE_SEGMENTATION,
    }
    outputs: ClassVar[Mapping[str, Port]] = {
        "partners": Port("partners", "pre→post pairs"),
        "annotations": Port("annotations", "the same in CREMI form"),
    }

    class Options(ModelOptions):
        model: str = Field("", description="Registry model name (default: the bundled one).")
        overlap: tuple[NonNegativeInt, NonNegativeInt, NonNegativeInt] | None = Field(
            None, description="Tile overlap (voxels); default: the model's."
        )
        intensity_scale: float | None = Field(None, description=INTENSITY_SCALE_HELP)
        tta: bool | None = Field(
            None,
            description="Average the 8 mirrorings (vectors negated along mirrored axes); "
            "none: on for the vector head without `combine` (the main job; chosen on "
            "development seeds), off otherwise.",
        )
        head: Literal["vector", "direction"] = Field(
            "vector", description="Regressed vector, or unit direction x cleft-derived distance."
        )
        threshold: float | None = Field(
            None, gt=0, lt=1, description="Mask threshold (strict >); none: the tuned one."
        )
        min_voxels: int | None = Field(
            None, ge=1, description="Smallest mask component kept; none: the tuned one."
        )
        location: Literal["edt-max", "centre"] | None = Field(
            None, description="Site: distance-transform maximum or mask-weighted centre."
        )
        score: Literal["sum", "mean", "max"] = Field("sum", description="Score of a site.")
        vector_from: Literal["location", "mean"] | None = Field(
            None, description="Vector at the site, or mask-weighted mean pre point."
        )
        split_by_segment: bool = Field(True, description="Split components at segment borders.")
        rejoin_small_pieces: bool | None = Field(
            None,
            description="A split piece below min_voxels joins the largest piece of its "
            "component; none: the tuned choice (vector head: yes).",
        )
        min_score: float = Field(0.0, ge=0, description="Drop sites scoring below this.")
        group_distance_nm: float = Field(
            150.0, ge=0, description="Rows with the same pre segment this close: one synapse."
        )
        dedup_distance_nm: float = Field(400.0, ge=0)
        direction_distance_nm: float = Field(
            120.0, gt=0, description="Direction head without clefts: fixed distance (nm)."
        )
        cleft_width_nm: float | None = Field(
            None, ge=0, description="Direction head: distance = 2 x site-cleft + this."
        )
        distance: Literal["clefts", "segment", "fixed"] = Field(
            "clefts", description="Direction head: distance from clefts, segments or fixed."
        )
        segment_depth_nm: float = Field(
            40.0, ge=0, description="How far into the partner segment a ray-found pre site goes."
        )
        snap_to_segment: bool = Field(
            False, description="Move a pre site left in the post segment along its ray."
        )
        max_reach_nm: float = Field(400.0, gt=0, description="Longest ray (nm).")
        combine: Literal["none", "emsynconn", "verified"] = Field(
            "none",
            description="Also run emsynconn (+ pruning CNN) on `proximity`: 'emsynconn' keeps "
            "both tables' rows, 'verified' emsynconn's rows plus the synful rows the pruning "
            "CNN keeps (see verify_keep).",
        )
        verify_keep: float = Field(
            0.5, ge=0, lt=1,
            description="combine = 'verified': a synful row is added when the pruning CNN "
            "scores its patch (midway between pre and post, its two segments) above this.",
        )  # fmt: skip
        block_shape: tuple[int, int, int] | None = Field(
            None, description="Block shape (z, y, x voxels); default: the run's block_shape."
        )
        context: tuple[int, int, int] = Field(
            (4, 48, 48),
            description="Voxels read around each block (z, y, x); a mask component reaching "
            "beyond them is re-read whole afterwards.",
        )
        n_workers: int | None = Field(
            None, ge=1, description="Blocks processed at once (default: [execution] n_workers)."
        )
        executor: Literal["processes", "threads"] = Field("processes", description="Worker kind.")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from synapse_toolkit.inference.onnx_model import OnnxModel
        from synapse_toolkit.inference.tiled import TileGrid
        from synapse_toolkit.memory import release_free_memory
        from synapse_toolkit.synapses.pruning import PrunerONNX, row_scores
        from synapse_toolkit.synapses.synful import (
            N_CHANNELS,
            TUNED_DEFAULTS,
            SynfulSettings,
            union,
        )
        from synapse_toolkit.synapses.synful_blockwise import predict_synful, synful_blockwise
        from synapse_toolkit.synapses.targets import Grid
        from syntk_synapses import (
            _coarse_input,
            _deduplicated_by_coarse,
            _partner_outputs,
            _progress,
            _remove_work,
            _resolved_model,
            count_blocks,
        )

        o = self.options
        raw: Volume = inputs["raw"]
        seg: Volume = inputs["segmentation"]
        clefts: Volume | None = inputs.get("clefts")
        coarse = _coarse_input(self.context.stage_name, inputs, raw=raw, segmentation=seg)
        path = _resolved_model(self, o.model, o.model_path, o.sha256, raw=raw)
        model = OnnxModel(path, n_threads=self.context.n_threads)
        if model.out_channels != N_CHANNELS or model.kind != "synful":
            raise DataError(
                f"stage {self.context.stage_name}: {path} is not a synful model "
                f"(kind {model.kind!r}, {model.out_channels} channels)"
            )
        tta = uses_tta(o)
        key = "direction" if o.head == "direction" else (
            f"vector+{o.combine}" if o.combine != "none" else "vector")  # fmt: skip
        if tta and key == "vector":
            key = "vector, tta"
        tuned = {k: getattr(o, k) if getattr(o, k) is not None else v
                 for k, v in TUNED_DEFAULTS[key].items()}  # fmt: skip
        settings = SynfulSettings(
            head=o.head, score=o.score, split_by_segment=o.split_by_segment,
            min_score=o.min_score, group_distance_nm=o.group_distance_nm,
            dedup_distance_nm=o.dedup_distance_nm, direction_distance_nm=o.direction_distance_nm,
            distance=o.distance, segment_depth_nm=o.segment_depth_nm,
            snap_to_segment=o.snap_to_segment, max_reach_nm=o.max_reach_nm, **tuned,
        )  # fmt: skip
        work = self.context.work_dir()
        bs = o.block_shape or self.context.block_shape
        overlap = o.overlap or model.default_overlap()
        n_tiles = len(TileGrid(raw.spatial_shape, model.input_shape, model.output_shape, overlap))
        pred = predict_synful(
            model, raw.data, work, o.head, overlap=overlap, block_shape=bs,
            progress=self.context.progress("tiles", n_tiles).advance,
            intensity_scale=o.intensity_scale, tta=tta,
        )  # fmt: skip
        self.context.record("tta", tta)
        del model  # the session's buffers go before the block workers start
        release_free_memory()
        n = self.context.block_workers(o.n_workers)
        table, res = synful_blockwise(
            pred, seg.data, seg.voxel_size_nm, seg.offset_nm, settings=settings,
            clefts=clefts.data if clefts is not None else None, block_shape=bs,
            context=o.context, work_dir=work, n_workers=n,
            pool=self.context.block_pool(n, o.executor, "synful",
                                         count_blocks(seg.spatial_shape, bs)),
            progress=_progress(self.context),
        )  # fmt: skip
        self.context.record("blockwise", res)
        if o.combine != "none":
            ems, pruner_path = self._emsynconn(inputs, raw, seg, work / "emsynconn")
            if o.combine == "verified":  # the same pruning CNN, its patches scaled alike
                pruner = PrunerONNX(pruner_path, n_threads=self.context.n_threads)
                pruner.patch_settings = replace(pruner.patch_settings,
                                                intensity_scale=o.intensity_scale)  # fmt: skip
                keep = row_scores(table, raw.data, inputs["proximity"].data, seg.data,
                                  Grid.of(seg), pruner)  # fmt: skip
                table = table.select(keep > o.verify_keep)
            table = union(ems, table, o.dedup_distance_nm)
        _remove_work(self.context)
        return _partner_outputs(_deduplicated_by_coarse(table, coarse, o.dedup_distance_nm), seg)

    def _emsynconn(
        self, inputs: Mapping[str, Any], raw: Volume, seg: Volume, work: Path
    ) -> tuple[PartnerTable, Path]:
        """EMSynConn's rows at its stage defaults (candidates + the bundled pruning CNN, its
        patches scaled by ``intensity_scale``), block by block as the ``emsynconn`` stage runs
        them; and that pruning CNN's file."""
        from synapse_toolkit.models import resolve_model
        from synapse_toolkit.synapses.assigners import EMSynConnSettings
        from synapse_toolkit.synapses.blockwise import emsynconn_blockwise
        from syntk_synapses import DEFAULT_MODELS, EMSynConn, _progress, count_blocks

        prox: Volume | None = inputs.get("proximity")
        o = self.options
        if prox is None:
            raise DataError(f"stage {self.context.stage_name}: combine = {o.combine!r} needs the "
                            "`proximity` input")  # fmt: skip
        model = resolve_model(f"stage {self.context.stage_name}", name=DEFAULT_MODELS["emsynconn"])
        bs = o.block_shape or self.context.block_shape
        n = self.context.block_workers(o.n_workers)
        table, _ = emsynconn_blockwise(
            raw.data, prox.data, seg.data, seg.voxel_size_nm, seg.offset_nm,
            settings=EMSynConnSettings(), pruner=str(model.path), n_threads=1, block_shape=bs,
            context=EMSynConn.Options().context, work_dir=work, n_workers=n,
            pool=self.context.block_pool(n, o.executor, "emsynconn",
                                         count_blocks(seg.spatial_shape, bs)),
            progress=_progress(self.context), intensity_scale=o.intensity_scale,
        )  # fmt: skip
        return table, Path(model.path)


def uses_tta(options: Synful.Options) -> bool:
    """Whether the stage averages the 8 mirrorings: ``options.tta``, else on for the vector
    head without ``combine`` (the one setting whose extraction defaults were chosen on TTA
    output)."""
    if options.tta is not None:
        return options.tta
    return options.head == "vector" and options.combine == "none"
