"""CREMI's reserved label ids, in one place (see ``cremi-reference/README.md``).

In CREMI files the largest uint64 marks "no label": ignored truth voxels in ``neuron_ids`` and
background in ``clefts``; the one below it marks the invalid region of a truth cleft volume.
"""

from __future__ import annotations

import numpy as np

#: 2**64 - 1: ignored truth in neuron_ids, background in clefts
NO_LABEL = 0xFFFFFFFFFFFFFFFF
#: 2**64 - 2: the invalid region of a truth cleft volume
CLEFT_INVALID_ID = 0xFFFFFFFFFFFFFFFE

NEURON_IGNORE = np.uint64(NO_LABEL)
CLEFT_BACKGROUND = np.uint64(NO_LABEL)
CLEFT_INVALID = np.uint64(CLEFT_INVALID_ID)
