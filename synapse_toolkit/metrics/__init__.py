"""Scoring metrics, equal to the challenges' reference evaluators (pure library functions).

- :mod:`~synapse_toolkit.metrics.cremi_neurons` — VOI split/merge (bits), adapted Rand error,
  CREMI score, optional border mask in nm. Computed from a contingency table, block by block
  for h5py/zarr volumes: blockwise results equal in-memory results bit for bit.
- :mod:`~synapse_toolkit.metrics.cremi_clefts` — FP/FN counts at a distance threshold, FP/FN
  distance statistics, cleft score. Only cleft-voxel coordinates are kept (read block by block);
  every statistic is exact blockwise.
- :mod:`~synapse_toolkit.metrics.cremi_partners` — synaptic-partner F-score by minimum-cost
  assignment at 400 nm with the label check in the truth segmentation.
- :mod:`~synapse_toolkit.metrics.overlap` — synapse detection by voxel overlap (blockwise exact).
- :mod:`~synapse_toolkit.metrics.neurofinder` — neurofinder ROI metrics.
- :mod:`~synapse_toolkit.metrics.clustering` — ARI, NMI, AMI, homogeneity, completeness,
  Hungarian-matched accuracy.
- :mod:`~synapse_toolkit.metrics.contingency` — contingency tables that add up over blocks.

Every module documents the answer it gives where the reference raises (empty inputs, nothing
evaluated).
"""

from synapse_toolkit.metrics.clustering import ClusteringScores, score_clustering
from synapse_toolkit.metrics.contingency import Contingency, ContingencyCounter
from synapse_toolkit.metrics.cremi_clefts import CleftScores, score_clefts
from synapse_toolkit.metrics.cremi_neurons import NeuronScores, score_neuron_ids
from synapse_toolkit.metrics.cremi_partners import PartnerScores, score_partners
from synapse_toolkit.metrics.neurofinder import NeurofinderScores, score_neurofinder
from synapse_toolkit.metrics.overlap import OverlapScores, score_overlap

__all__ = [
    "CleftScores",
    "ClusteringScores",
    "Contingency",
    "ContingencyCounter",
    "NeurofinderScores",
    "NeuronScores",
    "OverlapScores",
    "PartnerScores",
    "score_clefts",
    "score_clustering",
    "score_neurofinder",
    "score_neuron_ids",
    "score_overlap",
    "score_partners",
]
