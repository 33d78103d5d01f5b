"""Stage classes of syntk_neurons (detector, agglomerator, loader). No torch here."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import zarr
from pydantic import Field, NonNegativeInt

from synapse_toolkit import __version__
from synapse_toolkit.cremi_ids import NEURON_IGNORE
from synapse_toolkit.data import ScoreRecord, Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.evaluation.fib import DEFAULT_MODEL  # the default FIB-SEM model
from synapse_toolkit.inference.fragments import BOUNDARY_THRESHOLD, DT_SIGMA, MIN_DISTANCE
from synapse_toolkit.inference.intensity import INTENSITY_SCALE_HELP
from synapse_toolkit.models import resolve_model
from synapse_toolkit.stages import (
    Agglomerator,
    Detector,
    Loader,
    ModelOptions,
    Placement,
    Port,
    StageOptions,
)


def zarr_array(vol: Volume) -> zarr.Array:
    """The zarr array behind a volume made by ``StageContext.create_volume``."""
    assert isinstance(vol.data, zarr.Array), type(vol.data)
    return vol.data


class AffinityDetector(Detector["AffinityDetector.Options"]):
    """Affinities from raw EM with an exported U-Net (ONNX Runtime, CUDA if it loads).

    Tiles the volume (``overlap`` voxels between output tiles, blended linearly), mirrors the
    volume at its borders for context, and writes ``affinities`` (C, z, y, x) float32 into zarr
    block by block; the raw volume is read tile by tile, never whole. Raw grey values are matched
    to the model's training data when the model carries an intensity reference, and raw at
    another voxel size than the model's is resampled to it (and the affinities back).
    """

    name: ClassVar[str] = "affinity-unet"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "MALA affinity U-Net (ONNX), tiled with overlap and blending"
    inputs: ClassVar[Mapping[str, Port]] = {"raw": Port("intensity", "EM intensities (z, y, x)")}
    outputs: ClassVar[Mapping[str, Port]] = {
        "affinities": Port("affinities", "(C, z, y, x) float32 affinities, channel c = offset c"),
    }

    class Options(ModelOptions):
        model: str = Field(
            DEFAULT_MODEL,
            description="Registry model name, or 'auto': the registry's affinity model for the "
            "input's domain (phantom, ssTEM if z is >= 2x the in-plane voxel, else FIB-SEM; "
            "synapse_toolkit.domain); a name ending in .onnx is a file (as `model_path`), e.g. "
            "the output of `syntk adapt affinities`.",
        )
        overlap: tuple[NonNegativeInt, NonNegativeInt, NonNegativeInt] = Field(
            (4, 8, 8), description="Tile overlap (z, y, x)."
        )
        match_intensity: bool = Field(
            True,
            description="Match raw grey values to the model's training data (quantile map) when "
            "the model carries an intensity reference: undoes contrast/brightness/gamma changes.",
        )
        match_spectrum: bool = Field(
            True,
            description="Filter each section to the model's training spectrum first when the "
            "model carries a spectrum reference: undoes a blurrier or noisier acquisition.",
        )
        intensity_scale: float | None = Field(
            None, description="Without intensity matching: " + INTENSITY_SCALE_HELP
        )
        pad_mode: Literal["reflect", "symmetric", "edge"] = "reflect"
        providers: list[str] | None = Field(None, description="ONNX Runtime providers to force.")
        tta: bool = Field(False, description="Average over the 8 mirrorings (8x slower).")
        resample: Literal["always", "finer", "never"] = Field(
            "always",
            description="Run the model at its own voxel size: 'always' resamples every axis "
            "that differs by > 5%, 'finer' only the axes where raw is finer than the model, "
            "'never' keeps raw's grid. Affinities are resampled back to raw's grid (linear).",
        )
        model_voxel_size_nm: tuple[float, float, float] | None = Field(
            None,
            description="Voxel size (z, y, x nm) the model was trained at (default: the "
            "model's metadata, else its registry entry).",
        )

    _model_name: str = DEFAULT_MODEL  # the registry name run (``model`` after 'auto')

    def _model_voxel_size(self, meta: Mapping[str, Any]) -> tuple[float, ...] | None:
        opts: AffinityDetector.Options = self.options
        if opts.model_voxel_size_nm is not None:
            return tuple(opts.model_voxel_size_nm)
        if meta.get("voxel_size_nm"):
            return tuple(float(v) for v in meta["voxel_size_nm"])
        if opts.model_path is None:
            from synapse_toolkit.datasets import get_registry

            entry = get_registry().get(self._model_name)
            return None if entry.voxel_size_nm is None else tuple(entry.voxel_size_nm)
        return None

    def _choose_model(self, raw: Volume) -> Any:
        """The registry name to run (``model``, or the choice for ``'auto'``) and the input's
        domain, both recorded in the manifest."""
        from synapse_toolkit.domain import choose_model, input_domain

        opts: AffinityDetector.Options = self.options
        domain = input_domain(raw)
        self.context.record("input_domain", domain.to_dict())
        self._model_name = opts.model
        if opts.model_path is None and opts.model == "auto":
            entry, why = choose_model("affinities", domain)
            self._model_name = entry.name
            self.context.logger.info("affinity-unet: model = auto -> %s (%s)", entry.name, why)
            self.context.record("model_choice", {"model": entry.name, "reason": why})
        return domain

    def _check_domain(self, domain: Any, meta: Mapping[str, Any], resolved: Any) -> None:
        """Record the model's domain; one warning line for a phantom-trained model on real data."""
        from synapse_toolkit.domain import domain_warning, model_domain

        opts: AffinityDetector.Options = self.options
        entry = None
        if opts.model_path is None:
            from synapse_toolkit.datasets import get_registry

            entry = get_registry().get(self._model_name)
        mdom = model_domain(meta, entry)
        if mdom.to_dict():  # what the model was trained on, in the manifest
            self.context.record("model_domain", mdom.to_dict())
        name = self._model_name if opts.model_path is None else str(resolved.path)
        warning = domain_warning("affinity-unet", name, mdom, domain)
        if warning:
            self.context.logger.warning(warning)
            self.context.record("domain_warning", warning)

    def _model_grid(
        self, raw: Volume, meta: Mapping[str, Any], n_out: int, result: Volume
    ) -> tuple[Any, Any]:
        """The arrays the tiler reads and writes: ``raw`` and ``result`` themselves, or scratch
        volumes at the model's voxel size (raw resampled into the first here; the caller
        resamples the second back into ``result``)."""
        from synapse_toolkit.inference.resample import (
            model_grid_voxel_size,
            resample_into,
            resampled_shape,
        )

        opts: AffinityDetector.Options = self.options
        model_vs = self._model_voxel_size(meta) if opts.resample != "never" else None
        grid_vs = model_grid_voxel_size(raw.voxel_size_nm, model_vs, opts.resample)
        if grid_vs is None:
            return raw.data, result.data
        grid_shape = resampled_shape(raw.spatial_shape, raw.voxel_size_nm, grid_vs)
        self.context.logger.info(
            "affinity-unet: raw at %s nm resampled to %s nm for a model trained at %s nm "
            "(%s -> %s voxels)", raw.voxel_size_nm, grid_vs, model_vs, raw.spatial_shape,
            grid_shape,
        )  # fmt: skip
        source = self.context.create_volume(
            "raw_at_model_voxel_size", grid_shape, np.float32, voxel_size_nm=grid_vs, dense=True
        ).data
        resample_into(raw.data, source)
        target = self.context.create_volume(
            "affinities_at_model_voxel_size", (n_out, *grid_shape), np.float32,
            voxel_size_nm=grid_vs, dense=True,
        ).data  # fmt: skip
        return source, target

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from synapse_toolkit.affinities import NEAREST_NEIGHBOURS
        from synapse_toolkit.inference.onnx_model import OnnxModel
        from synapse_toolkit.inference.resample import resample_into

        opts: AffinityDetector.Options = self.options
        raw: Volume = inputs["raw"]
        if len(raw.shape) != 3:
            raise DataError(f"affinity-unet: raw must be 3D (z, y, x), got shape {raw.shape}")
        domain = self._choose_model(raw)
        resolved = resolve_model(
            "affinity-unet", name=self._model_name, path=opts.model_path, sha256=opts.sha256,
            logger=self.context.logger,
        )  # fmt: skip
        self.context.record("model", resolved.as_record())
        model = OnnxModel(resolved.path, self.context.n_threads, providers=opts.providers)
        meta, n_out = model.metadata, model.out_channels
        self.context.logger.info(
            "affinity-unet: %s on %s, tile %s -> %s", resolved.path.name,
            "CUDA" if model.uses_cuda else "CPU", model.input_shape, model.output_shape,
        )  # fmt: skip
        result = self.context.create_volume(
            "affinities",
            (n_out, *raw.spatial_shape),
            np.float32,
            like=raw,
            chunks=(
                n_out,
                *[
                    min(s, 2 * o)
                    for s, o in zip(raw.spatial_shape, model.output_shape, strict=True)
                ],
            ),
            dense=True,  # affinities are never all zero: skip zarr's empty-chunk test
        )
        if meta.get("agglomeration"):  # the model's waterz settings, for `waterz` without truth
            zarr_array(result).attrs["agglomeration"] = meta["agglomeration"]
        self._check_domain(domain, meta, resolved)
        source, target = self._model_grid(raw, meta, n_out, result)
        from synapse_toolkit.inference.tiled import TileGrid

        n_tiles = len(TileGrid(source.shape[-3:], model.input_shape, model.output_shape,
                               opts.overlap))  # fmt: skip
        task = self.context.progress("tiles", n_tiles)
        offsets = (meta.get("offsets") or NEAREST_NEIGHBOURS[:n_out]) if opts.tta else None
        model.predict(
            source, target, opts.overlap, progress=task.advance, tta_offsets=offsets,
            match_intensity=opts.match_intensity, match_spectrum=opts.match_spectrum,
            intensity_scale=opts.intensity_scale, pad_mode=opts.pad_mode,
            intensity_source=raw.data,
        )  # fmt: skip
        if target is not result.data:
            resample_into(target, result.data)
        from synapse_toolkit.inference.quality import check

        # label-free fit signal beside the model's reference; one warning line when far off
        check(result.data, meta, self.context.record, self.context.logger,
              ridge_inputs=(source, target))  # fmt: skip
        return {"affinities": result}


class WaterzAgglomerator(Agglomerator["WaterzAgglomerator.Options"]):
    """waterz: watershed fragments (from the affinities, or given) merged by a scoring function.

    One segmentation per threshold goes to ``segmentations`` (T, z, y, x); ``segmentation`` is the
    one chosen: the best against ``truth`` (by ``select_by``) when truth is given, else
    ``threshold``, else the scoring and threshold stored with the affinities by the model that
    made them (chosen on its validation data; see :func:`model_agglomeration`), else the median
    threshold. With truth, ``scores`` holds VOI/ARAND/CREMI score per threshold.

    Fragments: the ``fragments`` input if wired, else ``fragments_from``: waterz's own watershed
    of the affinities, or seeds from the distance transform of each section's boundary map
    (:mod:`synapse_toolkit.inference.fragments`); ``auto`` takes the model's stored choice.
    """

    name: ClassVar[str] = "waterz"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "waterz agglomeration (mean/quantile scoring), threshold sweep"
    inputs: ClassVar[Mapping[str, Port]] = {
        "affinities": Port("affinities", "(>=3, z, y, x) nearest-neighbour affinities", grid="in"),
        "fragments": Port(
            "labels", "an over-segmentation to start from", required=False, grid="in"
        ),
        "truth": Port("labels", "ground truth for threshold selection", required=False, grid="in"),
    }
    outputs: ClassVar[Mapping[str, Port]] = {
        "segmentation": Port("labels", "the selected segmentation (uint64)"),
        "segmentations": Port("volume", "(T, z, y, x) uint64, one per threshold (ascending)"),
        "scores": Port("scores", "per-threshold VOI/ARAND/CREMI (only with truth)", required=False),
    }

    class Options(StageOptions):
        thresholds: list[float] = Field(
            default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
            min_length=1,
            description="Merge thresholds (scores below are merged).",
        )
        scoring: str = Field("quantile50", description="'mean' or 'quantile<q>' (q = 10..95 by 5).")
        threshold: float | None = Field(
            None, description="Threshold of `segmentation` without truth (default: the median)."
        )
        select_by: Literal["cremi_score", "voi", "arand"] = "cremi_score"
        ignore_label: int | None = Field(0, description="Truth label left out of scoring.")
        aff_threshold_low: float = 0.0001
        aff_threshold_high: float = 0.9999
        discretize_queue: int = Field(256, description="0 (exact) or 256 bins (faster).")
        fragments_from: Literal["auto", "affinities", "distance_2d"] = Field(
            "auto",
            description="Without a `fragments` input: 'affinities' (waterz's watershed), "
            "'distance_2d' (seeds at maxima of the distance transform of each section's "
            "boundary map < `boundary_threshold`), 'auto' (the model's metadata, else "
            "'affinities').",
        )
        boundary_threshold: float = Field(
            BOUNDARY_THRESHOLD, gt=0, le=1, description="distance_2d: interior."
        )
        dt_sigma: float = Field(DT_SIGMA, ge=0, description="distance_2d: smoothing (px).")
        min_distance: int = Field(MIN_DISTANCE, ge=1, description="distance_2d: seed spacing (px).")

    def _fragments(self, affs: np.ndarray, affs_vol: Volume) -> np.ndarray | None:
        """Fragments per ``fragments_from`` (``None``: waterz's own watershed)."""
        from synapse_toolkit.inference.fragments import make_fragments

        setting = fragment_setting(affs_vol, self.options)
        if setting["method"] != "affinities":
            self.context.logger.info("%s: fragments %s", self.name, setting)
        self.context.record("fragments", setting)
        return make_fragments(affs, setting)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from synapse_toolkit.inference.agglomeration import agglomerate, scoring_function
        from synapse_toolkit.io.zarr_io import copy_slab

        opts: WaterzAgglomerator.Options = self.options
        scoring_function(opts.scoring)  # validate early
        affs_vol: Volume = inputs["affinities"]
        if affs_vol.num_channels is None or affs_vol.num_channels < 3:
            raise DataError(
                f"waterz: affinities must be (>=3, z, y, x), got shape {affs_vol.shape}"
            )
        affs = np.asarray(affs_vol.data[:3], dtype=np.float32)
        frag: np.ndarray | None
        if inputs.get("fragments") is not None:
            frag = np.asarray(inputs["fragments"].read(), dtype=np.uint64)
        else:
            frag = self._fragments(affs, affs_vol)
        truth = inputs.get("truth")
        truth_np = None if truth is None else truth.read()
        if truth_np is not None and truth_np.shape != affs.shape[1:]:
            raise DataError(f"waterz: truth shape {truth_np.shape} != affinities {affs.shape[1:]}")
        ths = sorted(opts.thresholds)
        scoring = opts.scoring
        target = opts.threshold if opts.threshold is not None else ths[len(ths) // 2]
        source = "option" if opts.threshold is not None else "median of thresholds"
        model_agg = None
        if truth_np is None and opts.threshold is None:
            model_agg = model_agglomeration(affs_vol, opts)
        if model_agg is not None:
            scoring, target = str(model_agg["scoring"]), float(model_agg["threshold"])
            scoring_function(scoring)
            ths = sorted({*ths, target})
            source = "model metadata"
            self.context.logger.info(
                "waterz: %s @ %s from the affinity model's metadata (chosen on %s)",
                scoring, target, model_agg.get("chosen_on", "its validation data"),
            )  # fmt: skip
        spatial = affs.shape[1:]
        segs = self.context.create_volume(
            "segmentations",
            (len(ths), *spatial),
            np.uint64,
            like=affs_vol,
            chunks=(
                1,
                *[min(s, b) for s, b in zip(spatial, self.context.block_shape, strict=True)],
            ),
            dense=True,
        )
        rows: list[dict[str, float]] = []
        task = self.context.progress("thresholds", len(ths))
        index = {th: i for i, th in enumerate(ths)}
        best: dict[str, float] = {}  # with truth: the best row so far
        if truth_np is not None:  # the metrics pull in numba: import only when scoring
            from synapse_toolkit.inference.segmetrics import segmentation_scores

        def keep(th: float, seg: np.ndarray) -> None:
            # written and scored before waterz resumes, since it reuses this buffer. Writing in
            # the background would need a copy per threshold and overlap nothing: waterz holds
            # the GIL and yields every threshold at the end of its run.
            segs.data[index[th]] = seg
            if truth_np is not None:
                s = segmentation_scores(seg, truth_np, ignore_label=opts.ignore_label)
                row = {"threshold": th, **s.to_dict()}
                rows.append(row)
                if not best or row[opts.select_by] < best[opts.select_by]:
                    best.clear()
                    best.update(row)
            task.advance()

        agglomerate(
            affs,
            ths,
            fragments=frag,
            scoring=scoring,
            aff_threshold_low=opts.aff_threshold_low,
            aff_threshold_high=opts.aff_threshold_high,
            discretize_queue=opts.discretize_queue,
            on_segmentation=keep,
        )
        seg_out = self.context.create_volume(
            "segmentation", spatial, np.uint64, like=affs_vol,
            chunks=zarr_array(segs).chunks[1:], dense=True,
        )  # fmt: skip
        chosen = best["threshold"] if best else min(ths, key=lambda t: abs(t - target))
        # encoded chunks, not re-encoded
        copy_slab(zarr_array(segs), index[chosen], zarr_array(seg_out))
        zarr_array(segs).attrs.update({"thresholds": ths, "scoring": scoring})
        zarr_array(seg_out).attrs.update({"threshold": chosen, "scoring": scoring})
        self.context.record(
            "agglomeration",
            {"scoring": scoring, "threshold": chosen, "chosen_by": "truth" if best else source},
        )
        return agglomeration_outputs(seg_out, segs, rows, best, scoring, opts.select_by)


def agglomeration_outputs(
    seg_out: Volume, segs: Volume, rows: list[dict[str, Any]], best: dict[str, Any],
    scoring: str, select_by: str,
) -> dict[str, Any]:  # fmt: skip
    """A waterz stage's outputs: the chosen segmentation, every threshold's, and (when truth was
    wired and ``rows`` holds the sweep) the sweep's best figures as a score record."""
    out: dict[str, Any] = {"segmentation": seg_out, "segmentations": segs}
    if rows:
        out["scores"] = ScoreRecord(
            metric="waterz-threshold-sweep",
            values={f"best_{k}": v for k, v in best.items()},
            details={"sweep": rows, "scoring": scoring, "select_by": select_by},
        )
    return out


def fragment_setting(affinities: Volume, opts: WaterzAgglomerator.Options) -> dict[str, Any]:
    """The fragments ``opts.fragments_from`` asks for, as ``{"method": ..., **parameters}``
    (:func:`synapse_toolkit.inference.fragments.make_fragments`); ``auto``: the ``fragments``
    the affinity model stored with ``affinities`` (``agglomeration`` attribute), else
    ``affinities`` (waterz's own watershed)."""
    if opts.fragments_from == "distance_2d":
        return {"method": "distance_2d", "boundary_threshold": opts.boundary_threshold,
                "dt_sigma": opts.dt_sigma, "min_distance": opts.min_distance}  # fmt: skip
    if opts.fragments_from == "auto":
        attrs = getattr(affinities.data, "attrs", None)
        agg = dict(attrs).get("agglomeration") if attrs is not None else None
        stored = agg.get("fragments") if isinstance(agg, dict) else None
        if isinstance(stored, dict) and stored.get("method"):
            return dict(stored)
    return {"method": "affinities"}


def model_agglomeration(affinities: Volume, opts: WaterzAgglomerator.Options) -> dict | None:
    """The waterz settings the affinity model stored with ``affinities`` (zarr attribute
    ``agglomeration``: ``scoring``, ``threshold``, ``chosen_on``), or ``None``.

    ``None`` as well when the stage's ``scoring`` option was set to another scoring function (a
    threshold is only meaningful for the scoring it was chosen with).
    """
    attrs = getattr(affinities.data, "attrs", None)
    agg = dict(attrs).get("agglomeration") if attrs is not None else None
    if not isinstance(agg, dict) or agg.get("threshold") is None or not agg.get("scoring"):
        return None
    if "scoring" in opts.model_fields_set and opts.scoring != agg["scoring"]:
        return None
    return agg


class _Dataset(StageOptions):
    path: Path | None = Field(
        None, description="HDF5 file (relative: to the input file's folder); none: the input file."
    )
    dataset: str = "stack"

    def file(self, input_path: Path | None) -> Path:
        """The file to read: ``path`` against the input file's folder, or the input file."""
        if self.path is None:
            if input_path is None:
                raise DataError("hdf5-volumes: a volume without a path needs input.path")
            return input_path
        return (input_path.parent if input_path else Path.cwd()) / self.path  # absolute stays


def _open_volume_file(path: Path, port: str) -> Any:
    """The HDF5 file of volume ``port``, opened read-only; one DataError naming loader, volume
    and file when it is missing, a directory or not HDF5."""
    from synapse_toolkit.io.cremi import open_hdf5_file

    try:
        return open_hdf5_file(path, 'a zarr store needs plugin = "zarr"')
    except DataError as exc:
        raise DataError(f"volume {port!r}: {exc}") from None


def _volume_dataset(f: Any, path: Path, dataset: str, port: str) -> Any:
    """Dataset ``dataset`` of the open file ``f``; a DataError naming it when absent or a group."""
    import h5py

    from synapse_toolkit.io.cremi import hdf5_dataset_names

    if not isinstance(f.get(dataset), h5py.Dataset):
        names = hdf5_dataset_names(f)[:8]
        raise DataError(f"volume {port!r}: {path} has no dataset {dataset!r} (has {names})")
    return f[dataset]


class Hdf5VolumesLoader(Loader["Hdf5VolumesLoader.Options"]):
    """Volumes from plain HDF5 files (one dataset each), e.g. the gala FIB-SEM example data.

    ``volumes`` maps an output port (``raw``, ``neuron_ids``, ``boundaries``, ``fragments``) to a
    file + dataset; relative paths are resolved against the directory of the pipeline's input
    file, and a volume without a path is read from the input file itself. With
    ``zero_is_unlabelled``, label 0 of ``neuron_ids`` becomes 0xffffffffffffffff (CREMI's
    "ignore" label) so scorers skip it.
    """

    name: ClassVar[str] = "hdf5-volumes"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "plain HDF5 datasets as volumes (explicit voxel size)"
    outputs: ClassVar[Mapping[str, Port]] = {
        "raw": Port("intensity", "EM intensities", required=False),
        "neuron_ids": Port("labels", "neuron ground truth", required=False),
        "boundaries": Port("map", "a boundary probability map", required=False, channels=1),
        "fragments": Port("labels", "an over-segmentation", required=False),
    }

    class Options(StageOptions):
        volumes: dict[Literal["raw", "neuron_ids", "boundaries", "fragments"], _Dataset]
        voxel_size_nm: tuple[float, float, float]
        offset_nm: tuple[float, float, float] = (0.0, 0.0, 0.0)
        zero_is_unlabelled: bool = False
        nonfinite: Literal["error", "replace"] = Field(
            "error", description="NaN/inf in float raw: 'error', or 'replace' by the mean."
        )

    _files: list[Any]

    @classmethod
    def probe(cls, options: Any, input_path: Path | None) -> Mapping[str, Placement]:
        out = {}
        for port, spec in options.volumes.items():
            path = spec.file(input_path)
            with _open_volume_file(path, port) as f:
                shape = tuple(_volume_dataset(f, path, spec.dataset, port).shape)
            out[port] = Placement(options.voxel_size_nm, options.offset_nm, shape[-3:])
        return out

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        opts: Hdf5VolumesLoader.Options = self.options
        self._files = []
        out: dict[str, Any] = {}
        for port, spec in opts.volumes.items():
            path = spec.file(self.context.input_path)
            f = _open_volume_file(path, port)
            self._files.append(f)
            data: Any = _volume_dataset(f, path, spec.dataset, port)
            if port in ("neuron_ids", "fragments"):
                data = np.asarray(data[...]).astype(np.uint64)
                if port == "neuron_ids" and opts.zero_is_unlabelled:
                    data[data == 0] = NEURON_IGNORE
            out[port] = Volume(data, opts.voxel_size_nm, opts.offset_nm, name=port)
        from synapse_toolkit.io.checks import check_loaded

        return check_loaded(out, f"hdf5-volumes ({self.context.stage_name})",
                            nonfinite=opts.nonfinite, context=self.context)  # fmt: skip

    def close(self) -> None:
        for f in getattr(self, "_files", []):
            f.close()
