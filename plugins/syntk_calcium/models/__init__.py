"""The ONNX model shipped with syntk_calcium and its registry entry.

``neurofinder_cnn.onnx`` has a ``neurofinder_cnn.sha256`` sidecar (``sha256sum`` format) written
at export; the registry entry is built from it, so ``synapse_toolkit.datasets.model_path``
re-hashes the file before every use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).parent

#: registry name -> (file, description, reproduce command)
SHIPPED: dict[str, tuple[str, str, str]] = {
    "calcium/neurofinder_cnn": (
        "neurofinder_cnn.onnx",
        "Fully convolutional 2D U-Net (valid convs, 20 px context), standardised mean image "
        "(1,1,1,256,256) -> ROI mask and ROI core logits (1,2,1,216,216); trained on the "
        "neurofinder crop's full-view mean image (left half, rows 0-199) and calcium phantoms; "
        "thresholds chosen on validation (rows 200-255 and phantoms); see models/README.md",
        "python -m syntk_calcium.train --out runs/neurofinder-cnn --iterations 3000 "
        "--time-limit 2400 --eval-every 250 "
        "--export plugins/syntk_calcium/models/neurofinder_cnn.onnx",
    ),
}


def sidecar_sha256(onnx_file: Path) -> str | None:
    side = onnx_file.with_suffix(".sha256")
    if not side.exists():
        return None
    return side.read_text().split()[0].strip().lower()


def registry_entries() -> list[dict[str, Any]]:
    """Registry entries for the shipped models that are present (with their sidecar hash)."""
    out = []
    for name, (file, description, reproduce) in SHIPPED.items():
        path = MODELS_DIR / file
        sha = sidecar_sha256(path)
        if not path.exists() or sha is None:
            continue
        out.append(
            {
                "name": name,
                "kind": "model",
                "package": "syntk_calcium",
                "path": f"models/{file}",
                "sha256": sha,
                "size": path.stat().st_size,
                "licence": "BSD-3-Clause",
                "description": description,
                "reproduce": reproduce,
                "axis_order": "cyx",
            }
        )
    return out
