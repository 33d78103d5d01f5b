"""Example third-party syntk plugin: a streaming membrane (boundary) detector."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from pydantic import Field
from scipy import ndimage

from synapse_toolkit.blockwise import count_blocks, iter_blocks
from synapse_toolkit.data import Volume
from synapse_toolkit.hookspecs import hookimpl
from synapse_toolkit.stages import Detector, Port, StageOptions


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


@hookimpl
def syntk_register_stages(registry: Any) -> None:
    registry.add_detector(MembraneGradient)
