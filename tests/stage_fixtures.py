"""In-process test plugin: small stages used to exercise the pipeline runner."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from synapse_toolkit.data import ScoreRecord, SectionTransform, Volume
from synapse_toolkit.hookspecs import hookimpl
from synapse_toolkit.stages import Aligner, Detector, Port, Scorer, StageOptions

CALLS: list[str] = []


class ShiftAligner(Aligner):
    """Rolls each section by given integer pixel shifts; with a transform input, undoes it."""

    name: ClassVar[str] = "test-shift"
    inputs: ClassVar[Mapping[str, Port]] = {
        "raw": Port("volume"),
        "transform": Port("transform", required=False),
    }
    outputs: ClassVar[Mapping[str, Port]] = {"raw": Port("volume"), "transform": Port("transform")}

    class Options(StageOptions):
        shifts_px: list[tuple[int, int]] = Field(default_factory=list)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        CALLS.append(self.context.stage_name)
        raw: Volume = inputs["raw"]
        data = raw.read()
        vy, vx = raw.voxel_size_nm[1:]
        if "transform" in inputs:
            t = inputs["transform"].inverse()
        else:
            shifts = np.zeros((raw.spatial_shape[0], 2))
            for z, (dy, dx) in enumerate(self.options.shifts_px):  # type: ignore[attr-defined]
                shifts[z] = (dy * vy, dx * vx)
            t = SectionTransform(shifts)
        out = np.empty_like(data)
        for z in range(data.shape[-3]):
            dy, dx = (int(round(t.shifts_nm[z, 0] / vy)), int(round(t.shifts_nm[z, 1] / vx)))
            out[..., z, :, :] = np.roll(data[..., z, :, :], (dy, dx), axis=(-2, -1))
        return {"raw": raw.with_data(out), "transform": t}


class ScaleDetector(Detector):
    """Multiplies the raw data by a factor (channels-first output)."""

    name: ClassVar[str] = "test-scale"
    inputs: ClassVar[Mapping[str, Port]] = {"raw": Port("volume")}
    outputs: ClassVar[Mapping[str, Port]] = {"prediction": Port("volume")}

    class Options(StageOptions):
        factor: float = 2.0

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        CALLS.append(self.context.stage_name)
        raw: Volume = inputs["raw"]
        out = self.context.create_volume(
            "prediction", (1, *raw.spatial_shape), np.float32, like=raw
        )
        out.data[0] = raw.read().astype(np.float32) * self.options.factor  # type: ignore[attr-defined]
        return {"prediction": out}


class MaxDiffScorer(Scorer):
    """Maximum absolute difference of two volumes (after squeezing channels)."""

    name: ClassVar[str] = "test-maxdiff"
    inputs: ClassVar[Mapping[str, Port]] = {"prediction": Port("volume"), "truth": Port("volume")}
    outputs: ClassVar[Mapping[str, Port]] = {"scores": Port("scores")}

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        CALLS.append(self.context.stage_name)
        a = np.squeeze(inputs["prediction"].read()).astype(np.float64)
        b = np.squeeze(inputs["truth"].read()).astype(np.float64)
        return {"scores": ScoreRecord("maxdiff", {"max_abs_diff": float(np.abs(a - b).max())})}


@hookimpl
def syntk_register_stages(registry: Any) -> None:
    registry.add_aligner(ShiftAligner)
    registry.add_detector(ScaleDetector)
    registry.add_scorer(MaxDiffScorer)
