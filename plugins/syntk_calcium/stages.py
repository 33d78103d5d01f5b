"""Stage classes of syntk_calcium (loader, detector, ROI extractors, overlay writer). No torch.

Summary images travel between stages as volumes ``(C, 1, H, W)`` float32 (channels first, z = 1);
``pixel_size_nm`` places them (nominal: neurofinder does not state a pixel size).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from synapse_toolkit import __version__
from synapse_toolkit.artifacts import atomic_write_text
from synapse_toolkit.data import Regions, Volume, WrittenFile
from synapse_toolkit.errors import DataError
from synapse_toolkit.models import resolve_model
from synapse_toolkit.stages import (
    Detector,
    Loader,
    ModelOptions,
    OptionsT,
    Port,
    Stage,
    StageOptions,
    Writer,
)
from syntk_calcium.io import PROJECTIONS, open_source, summary_images
from syntk_calcium.preprocess import clip_standardise, prepare

DEFAULT_MODEL = "calcium/neurofinder_cnn"
#: Region extraction defaults: the thresholds chosen on validation data for the shipped model
#: (``models/README.md``); other models carry theirs in their ONNX metadata.
REGION_DEFAULTS = {"threshold": 0.4, "core_threshold": 0.7, "min_size": 10}
#: Whether the detector averages over mirrorings by default (chosen on validation, as above).
DETECTOR_TTA = False
#: fewest frames whose projections the loader takes without a warning: on the ROI trainer's
#: validation phantoms the CNN needs this many to reach both the local-maxima bar and 90 % of its
#: 600-frame score (``benchmarks/calcium_frames.py``)
MIN_FRAMES = 20


def cnn_probability(
    image: np.ndarray,
    model: str | Path,
    *,
    clip_sd: float = 3.0,
    flat_field_sigma: float | None = None,
    overlap: int = 32,
    providers: list[str] | None = None,
    n_threads: int | None = None,
    tta: bool = False,
) -> np.ndarray:
    """ROI mask and core probabilities (2, H, W) of a mean image with an exported model file.

    With ``flat_field_sigma`` > 0 (default: the model's ``flat_field_sigma`` metadata, 0 when
    absent) the image is first divided by its smoothed brightness
    (:func:`~syntk_calcium.preprocess.flat_field`); then the seed's preprocessing (clip at mean +
    ``clip_sd`` SD, standardise over the whole image), then the ONNX model tile by tile with
    mirrored borders and blended overlaps; with ``tta`` the probabilities are averaged over the 4
    mirrorings of each tile.
    """
    from synapse_toolkit.inference.tiled import flip_tta, predict_tiled
    from synapse_toolkit.onnx_runtime import create_session, model_metadata, predictor

    session = create_session(model, providers=providers, num_threads=n_threads)
    meta = model_metadata(session)
    if flat_field_sigma is None:
        flat_field_sigma = float(meta.get("flat_field_sigma") or 0.0)
    x = prepare(image, flat_field_sigma, clip_sd)
    try:
        in_shape = tuple(int(s) for s in meta["input_shape"])
        out_shape = tuple(int(s) for s in meta["output_shape"])
        n_out = int(meta["out_channels"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{model}: ONNX model lacks input_shape/output_shape metadata") from None
    prob = np.zeros((n_out, 1, *x.shape), np.float32)
    logits = predictor(session)

    def predict(t: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-logits(t)))

    predict_tiled(
        flip_tta(predict, axes=(1, 2)) if tta else predict, x[None], prob, in_shape, out_shape,
        overlap=(0, overlap, overlap), preprocess=lambda t: t.astype(np.float32),
    )  # fmt: skip
    return prob[:, 0]


def _summary_volume(data: np.ndarray, pixel_size_nm: float, name: str) -> Volume:
    return Volume(
        np.ascontiguousarray(data[:, None], dtype=np.float32),
        (pixel_size_nm, pixel_size_nm, pixel_size_nm),
        name=name,
    )


def _image(vol: Any, stage: str, port: str, channel: int = 0) -> np.ndarray:
    if not isinstance(vol, Volume) or vol.num_channels is None or vol.spatial_shape[0] != 1:
        shape = vol.shape if isinstance(vol, Volume) else type(vol).__name__
        raise DataError(f"stage {stage}: {port} must be a (C, 1, H, W) summary volume, got {shape}")
    if channel >= vol.shape[0]:
        raise DataError(f"stage {stage}: {port} has {vol.shape[0]} channels, no channel {channel}")
    return np.asarray(vol.data[channel, 0], dtype=np.float32)


#: a summary projection of the movie (as in :data:`syntk_calcium.io.PROJECTIONS`)
Projection = Literal["mean", "std", "max", "corr"]


def _mean_projection() -> list[Projection]:
    return ["mean"]


class CalciumLoader(Loader["CalciumLoader.Options"]):
    """A calcium movie or summary image, projected frame by frame (never loaded whole).

    Input (``context.input_path`` or ``options.path``): a neurofinder folder
    (``images/*.tiff``, ``regions/regions.json``), a multi-frame TIFF, a ``.npy`` movie, or a 2D
    ``.npy``/``.tif`` summary image. Outputs ``summary`` (C, 1, H, W) float32 with the requested
    projections as channels, and ``truth`` regions when the source has them (or ``regions``
    names a file).
    """

    name: ClassVar[str] = "calcium"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "calcium movie / summary image, streaming projections"
    outputs: ClassVar[Mapping[str, Port]] = {
        "summary": Port("volume", "(C, 1, H, W) float32 projections (mean first)"),
        "truth": Port("regions", "ground-truth ROIs, when known", required=False),
    }

    class Options(StageOptions):
        path: str | None = Field(None, description="Input path; default: the pipeline input.")
        regions: str | None = Field(
            None, description="Truth regions JSON (default: regions/regions.json of a folder)."
        )
        projections: list[Projection] = Field(
            default_factory=_mean_projection, description=f"Channels, from {PROJECTIONS}."
        )
        max_frames: int | None = Field(None, gt=0, description="Use only the first frames.")
        chunk_frames: int = Field(16, gt=0, description="Frames read per step.")
        pixel_size_nm: float = Field(1000.0, gt=0, description="Nominal pixel size (nm).")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        opts = self.options
        source = opts.path or self.context.input_path
        if source is None:
            raise DataError(f"stage {self.context.stage_name}: no input (set options.path)")
        src = open_source(source, opts.regions)
        self.context.logger.info(
            "calcium: %s %s, %d frames of %s px", src.kind, src.path, src.n_frames, src.shape
        )
        img = summary_images(src, opts.projections, chunk=opts.chunk_frames,
                             max_frames=opts.max_frames)  # fmt: skip
        frames = min(src.n_frames, opts.max_frames or src.n_frames)
        if 0 < frames < MIN_FRAMES:  # a movie (a summary image has no frame count)
            self.context.logger.warning(
                "stage %s: projections of only %d frames are noisy; the ROI CNN needs at least "
                "%d on phantom recordings (benchmarks/calcium_frames.py)",
                self.context.stage_name, frames, MIN_FRAMES,
            )  # fmt: skip
            self.context.record("few_frames", frames)
        out: dict[str, Any] = {"summary": _summary_volume(img, opts.pixel_size_nm, "summary")}
        truth = src.truth()
        if truth is not None:
            h, w = src.shape
            past = sum(
                1 for c in truth.coordinates
                if len(c) and not ((c >= 0).all() and (c[:, 0] < h).all() and (c[:, 1] < w).all())
            )  # fmt: skip
            if past:  # e.g. cropped frames with the whole recording's regions
                self.context.logger.warning(
                    "stage %s: %d of %d truth regions reach past the %d x %d px image; scored "
                    "as they are", self.context.stage_name, past, len(truth), h, w
                )  # fmt: skip
                self.context.record("truth_regions_past_image", past)
            out["truth"] = truth
        return out


class NeurofinderCnnDetector(Detector["NeurofinderCnnDetector.Options"]):
    """ROI probabilities from a summary image with the exported CNN (ONNX Runtime).

    Preprocessing as the seed: the mean image clipped at mean + 3 SD and standardised (over the
    whole image); then the fully convolutional model runs tile by tile
    (:func:`~synapse_toolkit.inference.tiled.predict_tiled`, mirrored borders), so any image size
    works. Output ``probability`` (2, 1, H, W): ROI mask and ROI core probabilities.
    """

    name: ClassVar[str] = "neurofinder-cnn"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "neurofinder CNN (ONNX): ROI mask + core probabilities"
    inputs: ClassVar[Mapping[str, Port]] = {
        "raw": Port("volume", "summary image (C, 1, H, W); channel 0 = mean projection"),
    }
    outputs: ClassVar[Mapping[str, Port]] = {
        "probability": Port("volume", "(2, 1, H, W) float32: ROI mask, ROI core"),
    }

    class Options(ModelOptions):
        model: str = Field(DEFAULT_MODEL, description="Registry model name.")
        clip_sd: float = Field(3.0, gt=0, description="Clip above mean + clip_sd x SD.")
        flat_field_sigma: float | None = Field(
            None, ge=0,
            description="Divide by the image smoothed at this sigma (px) first; 0 = off; "
            "default: the model's (its metadata).",
        )  # fmt: skip
        overlap: int = Field(32, ge=0, description="Tile overlap (px).")
        tta: bool = Field(DETECTOR_TTA, description="Average over the 4 mirrorings.")
        providers: list[str] | None = Field(None, description="ONNX Runtime providers to force.")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        opts = self.options
        raw: Volume = inputs["raw"]
        model = resolve_model(
            f"stage {self.context.stage_name}", name=opts.model, path=opts.model_path,
            sha256=opts.sha256, logger=self.context.logger,
        )  # fmt: skip
        self.context.record("model", model.as_record())
        prob = cnn_probability(
            _image(raw, self.context.stage_name, "raw"), model.path, clip_sd=opts.clip_sd,
            flat_field_sigma=opts.flat_field_sigma, overlap=opts.overlap,
            providers=opts.providers, n_threads=self.context.n_threads, tta=opts.tta,
        )  # fmt: skip
        out = self.context.create_volume("probability", (prob.shape[0], 1, *prob.shape[1:]),
                                         np.float32, like=raw)  # fmt: skip
        out.data[...] = prob[:, None]
        return {"probability": out}


class RoiExtractor(Stage[OptionsT]):
    """Base of the stages that turn maps or images into ``regions``."""

    kind: ClassVar[str] = "roi-extractor"

    def _write_json(self, regions: Regions, filename: str | None) -> None:
        if not filename:
            return
        atomic_write_text(self.context.run_file(filename), json.dumps(regions.to_neurofinder()))


class ThresholdRegions(RoiExtractor["ThresholdRegions.Options"]):
    """Threshold, seeded watershed (split touching cells), size filter → neurofinder ROIs.

    Writes the regions as neurofinder JSON (``filename``) into the run directory too.
    """

    name: ClassVar[str] = "threshold-regions"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "probability map -> connected, split, size-filtered ROIs"
    inputs: ClassVar[Mapping[str, Port]] = {
        "probability": Port("volume", "(C, 1, H, W): channel 0 ROI mask, channel 1 ROI core"),
    }
    outputs: ClassVar[Mapping[str, Port]] = {"regions": Port("regions", "neurofinder ROIs")}

    class Options(StageOptions):
        threshold: float = Field(REGION_DEFAULTS["threshold"], gt=0, lt=1)
        core_threshold: float = Field(REGION_DEFAULTS["core_threshold"], gt=0, lt=1)
        min_size: int = Field(int(REGION_DEFAULTS["min_size"]), ge=1, description="px")
        max_size: int = Field(1000, ge=1, description="px")
        use_core: bool = Field(True, description="Split with the core channel when present.")
        keep_unseeded: bool = Field(True, description="Keep ROI blobs without a core seed.")
        filename: str | None = Field("regions.json", description="JSON in the run directory.")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from syntk_calcium.regions import extract_regions

        opts = self.options
        vol = inputs["probability"]
        mask = _image(vol, self.context.stage_name, "probability", 0)
        core = None
        if opts.use_core and vol.shape[0] > 1:
            core = _image(vol, self.context.stage_name, "probability", 1)
        regions = extract_regions(
            mask, core, threshold=opts.threshold, core_threshold=opts.core_threshold,
            min_size=opts.min_size, max_size=opts.max_size, keep_unseeded=opts.keep_unseeded,
        )  # fmt: skip
        self._write_json(regions, opts.filename)
        return {"regions": regions}


class LocalMaximaRegions(RoiExtractor["LocalMaximaRegions.Options"]):
    """The classical bar: local maxima of a difference of Gaussians of the standardised mean
    image, a disc around each. Defaults: the best grid point on rows 0-255 of the real field of
    view's left half (``benchmarks/eval_calcium.py``)."""

    name: ClassVar[str] = "local-maxima"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "classical baseline: DoG local maxima on the mean image"
    inputs: ClassVar[Mapping[str, Port]] = {
        "raw": Port("volume", "summary image (C, 1, H, W); channel 0 = mean projection"),
    }
    outputs: ClassVar[Mapping[str, Port]] = {"regions": Port("regions", "disc ROIs")}

    class Options(StageOptions):
        sigma: float = Field(1.5, gt=0, description="Smoothing (px).")
        background_sigma: float = Field(6.0, gt=0, description="Background scale (px).")
        threshold: float = Field(0.2, description="DoG threshold (standardised units).")
        min_distance: int = Field(4, ge=1, description="px between maxima.")
        radius: float = Field(4.0, gt=0, description="Disc radius (px).")
        clip_sd: float = Field(3.0, gt=0)
        filename: str | None = Field(None, description="JSON in the run directory.")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from syntk_calcium.regions import local_maxima_regions

        opts = self.options
        img = clip_standardise(_image(inputs["raw"], self.context.stage_name, "raw"), opts.clip_sd)
        regions = local_maxima_regions(
            img, sigma=opts.sigma, background_sigma=opts.background_sigma,
            threshold=opts.threshold, min_distance=opts.min_distance, radius=opts.radius,
        )  # fmt: skip
        self._write_json(regions, opts.filename)
        return {"regions": regions}


class RoiOverlayWriter(Writer["RoiOverlayWriter.Options"]):
    """A PNG of the ROIs outlined on the mean image: found (green), missed (red, truth not
    matched) and false (yellow, predictions not matched); all predictions in green without
    truth."""

    kind: ClassVar[str] = "writer"
    name: ClassVar[str] = "roi-overlay"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "PNG of ROI outlines on the mean image"
    inputs: ClassVar[Mapping[str, Port]] = {
        "raw": Port("volume", "summary image (C, 1, H, W)"),
        "prediction": Port("regions", "detected ROIs"),
        "truth": Port("regions", "ground-truth ROIs", required=False),
    }
    outputs: ClassVar[Mapping[str, Port]] = {"file": Port("file", "the PNG written")}

    class Options(StageOptions):
        filename: str = Field("rois.png", description="PNG in the run directory.")
        threshold_px: float = Field(5.0, gt=0, description="Matching distance (as the scorer).")
        scale: int = Field(2, ge=1, le=8, description="Pixel magnification.")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from syntk_calcium.overlay import overlay_png

        opts = self.options
        img = _image(inputs["raw"], self.context.stage_name, "raw")
        target = self.context.run_file(opts.filename)
        overlay_png(target, img, inputs["prediction"], inputs.get("truth"),
                    threshold_px=opts.threshold_px, scale=opts.scale)  # fmt: skip
        return {"file": WrittenFile(str(target))}
