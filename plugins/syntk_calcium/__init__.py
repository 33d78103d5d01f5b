"""syntk_calcium: ROI detection in two-photon calcium imaging (neurofinder).

- ``calcium`` (loader): neurofinder folders, multi-frame TIFF or .npy movies (streamed frame by
  frame into mean / std / max projections) and 2D summary images; truth regions when known.
- ``neurofinder-cnn`` (detector): the seed's preprocessing (clip at mean + 3 SD, standardise) and
  a fully convolutional CNN (ONNX Runtime, tiled) giving ROI mask and ROI core probabilities.
- ``threshold-regions`` (roi-extractor): threshold, seeded watershed, size filter → neurofinder
  ROIs (also written as ``regions.json`` in the run directory).
- ``local-maxima`` (roi-extractor): the classical bar (DoG local maxima on the mean image).
- ``roi-overlay`` (writer): a PNG of found / missed / false ROIs on the mean image.

Shipped model: ``models/neurofinder_cnn.onnx`` (registry name ``calcium/neurofinder_cnn``); see
``models/README.md`` for training data, held-out scores and the command that reproduces it.
"""

from __future__ import annotations

from typing import Any

from synapse_toolkit.hookspecs import hookimpl
from syntk_calcium.stages import (
    CalciumLoader,
    LocalMaximaRegions,
    NeurofinderCnnDetector,
    RoiOverlayWriter,
    ThresholdRegions,
)

__all__ = [
    "CalciumLoader",
    "LocalMaximaRegions",
    "NeurofinderCnnDetector",
    "RoiOverlayWriter",
    "ThresholdRegions",
]


@hookimpl
def syntk_register_stages(registry: Any) -> None:
    registry.add_loader(CalciumLoader)
    registry.add_detector(NeurofinderCnnDetector)
    registry.add_stage("roi-extractor", ThresholdRegions)
    registry.add_stage("roi-extractor", LocalMaximaRegions)
    registry.add_stage("writer", RoiOverlayWriter)


@hookimpl
def syntk_register_datasets(registry: Any) -> None:
    from syntk_calcium.models import registry_entries

    for entry in registry_entries():
        registry.add(entry)
