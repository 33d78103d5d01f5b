"""Synaptic partner detection: training targets, alignment, EMSynConn candidates and pruning,
and the common partner-table API (numpy only; torch lives in the ``train_*`` modules)."""
