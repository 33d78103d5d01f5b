"""The ONNX model shipped with syntk_calcium and its registry entry.

``neurofinder_cnn.onnx`` has a ``neurofinder_cnn.sha256`` sidecar (``sha256sum`` format) written
at export; the registry entry is built from it, so ``synapse_toolkit.datasets.model_path``
re-hashes the file before every use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synapse_toolkit.models import bundled_model_entry

MODELS_DIR = Path(__file__).parent

#: registry name -> (file, description, reproduce command)
SHIPPED: dict[str, tuple[str, str, str]] = {
    "calcium/neurofinder_cnn": (
        "neurofinder_cnn.onnx",
        "Fully convolutional 2D U-Net (valid convs, 20 px context), flat-fielded (sigma 24 px) "
        "and standardised mean image "
        "(1,1,1,256,256) -> ROI mask and ROI core logits (1,2,1,216,216); a refit on all "
        "labelled rows (0-511, left half) of the neurofinder crop's full-view mean image and "
        "calcium phantoms, with the settings, iteration and thresholds chosen on a split run "
        "(train rows 0-199, validation rows 200-255 and phantoms); see models/README.md",
        "python -m syntk_calcium.train --out runs/nf-refit-ff --refit --iterations 1800 "
        "--eval-every 150 --cosine --strong-aug --scale 0.2 --ema 0.995 --keep-all "
        "--time-limit 2640 --flat-field 24 && python -m syntk_calcium.train --out "
        "runs/nf-refit-ff --refit --export-checkpoint runs/nf-refit-ff/it01050.pt "
        "--export plugins/syntk_calcium/models/neurofinder_cnn.onnx --overwrite "
        '--region-params \'{"threshold": 0.4, "core_threshold": 0.7, "min_size": 10}\'',
    ),
}


def registry_entries() -> list[dict[str, Any]]:
    """Registry entries for the shipped models that are present (with their sidecar hash)."""
    entries = (
        bundled_model_entry(
            name,
            "syntk_calcium",
            MODELS_DIR,
            file,
            description=description,
            reproduce=reproduce,
            axis_order="cyx",
        )
        for name, (file, description, reproduce) in SHIPPED.items()
    )
    return [e for e in entries if e is not None]
