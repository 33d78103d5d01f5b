"""Example third-party syntk plugin: a streaming membrane (boundary) detector and a scorer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from pydantic import Field
from scipy import ndimage

from synapse_toolkit.blockwise import count_blocks, iter_blocks
from synapse_toolkit.data import ScoreRecord, Volume
from synapse_toolkit.hookspecs import hookimpl
from synapse_toolkit.stages import Detector, Port, Scorer, StageOptions


class MembraneGradient(Detector["MembraneGradient.Options"]):
    """Boundary probability in [0, 1] from the Gaussian gradient magnitude of the raw data.

    Dark, sharp membranes give strong gradients. ``sigma_nm`` is the smoothing scale in nm, so
    anisotropic voxels are handled: the per-axis sigma is sigma_nm / voxel size.
    """

    name: ClassVar[str] = "membrane-gradient"
    version: ClassVar[str] = "0.1.0"
    description: ClassVar[str] = "boundary map from Gaussian gradient magnitude (example plugin)"
    inputs: ClassVar[Mapping[str, Port]] = {"raw": Port("intensity", "EM intensities")}
    outputs: ClassVar[Mapping[str, Port]] = {
        "boundaries": Port("map", "boundary probability, shape (1, z, y, x)", channels=1)
    }

    class Options(StageOptions):
        sigma_nm: float = Field(8.0, gt=0, description="Gaussian scale in nm.")
        scale: float = Field(0.1, gt=0, description="Gradient magnitude that maps to ~0.63.")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        raw: Volume = inputs["raw"]
        opts = self.options
        sigma = [opts.sigma_nm / v for v in raw.voxel_size_nm]
        context = [int(np.ceil(4 * s)) for s in sigma]
        out = self.context.create_volume(
            "boundaries", (1, *raw.spatial_shape), np.float32, like=raw
        )
        block = self.context.block_shape
        task = self.context.progress("membrane blocks", count_blocks(raw.spatial_shape, block))
        for b in iter_blocks(raw.spatial_shape, block, context):
            data = raw.read(b.read).astype(np.float32) / 255.0
            grad = ndimage.gaussian_gradient_magnitude(data, sigma=sigma, mode="reflect")
            prob = 1.0 - np.exp(-grad / opts.scale)
            out.data[(slice(None), *b.write)] = prob[b.inner][None]
            task.advance()
        return {"boundaries": out}


class SegmentCount(Scorer["SegmentCount.Options"]):
    """How many segments a segmentation has against the truth: a quick over/under-segmentation
    check. Reachable as ``syntk score segment-count TRUTH PRED`` once the plugin is installed."""

    name: ClassVar[str] = "segment-count"
    version: ClassVar[str] = "0.1.0"
    description: ClassVar[str] = "segments in prediction vs truth (example plugin)"
    inputs: ClassVar[Mapping[str, Port]] = {
        "prediction": Port("labels", "a segmentation", grid="in"),
        "truth": Port("labels", "ground-truth ids", grid="in"),
    }
    outputs: ClassVar[Mapping[str, Port]] = {"scores": Port("scores", "counts")}
    file_inputs: ClassVar[Mapping[str, tuple[str, str]]] = {
        "prediction": ("prediction", "neuron_ids"),
        "truth": ("truth", "neuron_ids"),
    }

    class Options(StageOptions):
        ignore: int = Field(0xFFFFFFFFFFFFFFFF, ge=0, description="Id not counted (CREMI ignore).")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        counts = {}
        for port in ("truth", "prediction"):
            ids: set[int] = set()
            vol: Volume = inputs[port]
            for b in iter_blocks(vol.spatial_shape, self.context.block_shape):
                ids.update(int(i) for i in np.unique(vol.read(b.read)))
            ids.discard(self.options.ignore)
            counts[port] = len(ids)
        values = {"n_truth": counts["truth"], "n_prediction": counts["prediction"],
                  "ratio": counts["prediction"] / max(1, counts["truth"])}  # fmt: skip
        return {"scores": ScoreRecord(self.name, values)}


@hookimpl
def syntk_register_stages(registry: Any) -> None:
    registry.add_detector(MembraneGradient)
    registry.add_scorer(SegmentCount)
