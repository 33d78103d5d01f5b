"""syntk_neurons: MALA-style neuron segmentation stages.

- ``affinity-unet`` (detector): an exported affinity U-Net run with ONNX Runtime, tiled over
  volumes of any size (:mod:`synapse_toolkit.inference.tiled`), streamed into zarr.
- ``waterz`` (agglomerator): watershed fragments + waterz agglomeration at a list of thresholds,
  one segmentation per threshold, with threshold selection against ground truth when given.
- ``blockwise-waterz`` (agglomerator): the same, block by block with bounded memory and per-block
  resume (:mod:`syntk_neurons.blockwise_stage`).
- ``hdf5-volumes`` (loader): plain HDF5 files with one dataset per volume (e.g. the gala FIB-SEM
  example data), placed with an explicit voxel size.

Shipped model: ``models/fib_affinities.onnx`` (registry name ``neurons/fib_affinities``), see
``models/README.md`` for its training data, scores and the command that reproduces it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from synapse_toolkit.hookspecs import hookimpl
from syntk_neurons.blockwise_stage import BlockwiseWaterzAgglomerator
from syntk_neurons.stages import AffinityDetector, Hdf5VolumesLoader, WaterzAgglomerator

if TYPE_CHECKING:
    from synapse_toolkit.datasets import DatasetRegistry
    from synapse_toolkit.stage_registry import StageRegistry

__all__ = [
    "AffinityDetector",
    "BlockwiseWaterzAgglomerator",
    "Hdf5VolumesLoader",
    "WaterzAgglomerator",
]


@hookimpl
def syntk_register_stages(registry: StageRegistry) -> None:
    registry.add_detector(AffinityDetector)
    registry.add_agglomerator(WaterzAgglomerator)
    registry.add_agglomerator(BlockwiseWaterzAgglomerator)
    registry.add_loader(Hdf5VolumesLoader)


@hookimpl
def syntk_register_datasets(registry: DatasetRegistry) -> None:
    from syntk_neurons.models import registry_entries

    for entry in registry_entries():
        registry.add(entry)
