"""Synaptic partner detection: training targets, alignment, EMSynConn candidates and pruning,
and the common partner-table API (numpy only; torch lives in the ``train_*`` modules)."""

#: cleft probability above which a synapse patch row counts as crossing the cleft (clustering's
#: alignment, :func:`synapse_toolkit.synapses.patches.centre_rows_on_map`; chosen among 0.3, 0.5,
#: 0.7, 0.9 by the main job's clustering ARI on development phantoms; the cleft-labels stage's
#: threshold too). Here, not in ``patches``, so the clusterer plugin can name it as its default
#: without importing scipy when plugins load.
CLEFT_THRESHOLD = 0.9

#: tile overlap (z, y, x voxels) of the synapse detectors' tiled inference: the detector stages'
#: default, and what training-side predictions (e.g. the cluster encoder's cleft maps) use.
DETECTOR_OVERLAP = (2, 8, 8)
