"""The ONNX models shipped with syntk_neurons and their registry entries.

Each ``<name>.onnx`` has a ``<name>.sha256`` sidecar (``sha256sum`` format) written at export;
the registry entry is built from it, so ``synapse_toolkit.datasets.model_path`` re-hashes the
file before every use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synapse_toolkit.models import bundled_model_entry

MODELS_DIR = Path(__file__).parent

#: registry name -> (file, description, reproduce command, voxel size (z, y, x) nm trained on);
#: the first of a modality is the one `model = "auto"` picks (v2 is the default FIB-SEM model)
SHIPPED: dict[str, tuple[str, str, str, tuple[float, float, float]]] = {
    "neurons/fib_affinities_v2": (
        "fib_affinities_v2.onnx",
        "neurons/fib_affinities fine-tuned for less sharp FIB-SEM: same U-Net and input "
        "(1,1,72,72,72) -> 3 nearest-neighbour affinities (1,3,32,32,32); 194 more iterations "
        "with heavy photometric augmentation (blur sigma up to 2 voxels, contrast, gamma, noise) "
        "and mean-teacher consistency on fib-medulla-unlabelled (still ramping up), picked on "
        "the validation crop plus a blurred and a blurred/low-contrast/noisy copy; waterz "
        "mean @ 0.75 chosen on the same three volumes with TTA off and on, and the label-free "
        "quality reference (boundary fraction, warning band) and the training data's in-plane "
        "spectrum (the stage filters each section to it first) in the model's metadata; the "
        "default FIB-SEM model",
        "syntk train affinities examples/train/fib_affinities_v2.toml --iterations 194 "
        "--time-limit 100000 && syntk export onnx runs/fib_affinities_v2/best.pt "
        "plugins/syntk_neurons/models/fib_affinities_v2.onnx && syntk evaluate fib-select "
        "--copies --fragments --model plugins/syntk_neurons/models/fib_affinities_v2.onnx "
        "--write && "
        "python benchmarks/select_spectrum_matching.py select --model "
        "plugins/syntk_neurons/models/fib_affinities_v2.onnx --write && "
        "python benchmarks/fib_quality.py store --model "
        "plugins/syntk_neurons/models/fib_affinities_v2.onnx --band 0.87 1.5",
        (10.0, 10.0, 10.0),
    ),
    "neurons/fib_affinities": (
        "fib_affinities.onnx",
        "3D U-Net (valid convs, 2x(2,2,2) downsampling), raw matched to the training volume's "
        "grey-value quantiles (stored in the model), /255 (1,1,72,72,72) -> 3 "
        "nearest-neighbour affinities (1,3,32,32,32); trained on the gala FIB-SEM medulla train "
        "volume (~10 nm isotropic) with BCE + constrained MALIS, He init; iteration 2000 of a "
        "6001-iteration / 44 wall-min run, picked on the validation crop; waterz scoring and "
        "threshold (quantile50 @ 0.9, in the model's metadata, used by `waterz` when no truth is "
        "wired) chosen on the same crop",
        "syntk train affinities examples/train/fib_affinities.toml --iterations 2000 "
        "--time-limit 100000 && syntk export onnx "
        "runs/fib_affinities/best.pt plugins/syntk_neurons/models/fib_affinities.onnx && "
        "syntk evaluate fib-select --model plugins/syntk_neurons/models/fib_affinities.onnx "
        "--write",
        (10.0, 10.0, 10.0),
    ),
    "neurons/phantom_affinities": (
        "phantom_affinities.onnx",
        "3D U-Net (same convs, 2x(1,3,3) downsampling, leaky ReLU), raw uint8/255 "
        "(1,1,16,144,144) -> 3 nearest-neighbour affinities; trained on phantom volumes "
        "(defaults v1, 40x4x4 nm, seeds 2001-2003, validation 2004) with BCE + constrained "
        "MALIS, He init; iteration 2400 of a 2966-iteration / 44 wall-min run, picked on "
        "validation",
        "for s in 2001 2002 2003 2004; do syntk phantom em runs/phantom-train/seed$s.h5 "
        "--shape 32 320 320 --seed $s; done && "
        "syntk train affinities examples/train/phantom_affinities.toml --iterations 2400 "
        "--time-limit 100000 && syntk export onnx runs/phantom_affinities_v3/best.pt "
        "plugins/syntk_neurons/models/phantom_affinities.onnx",
        (40.0, 4.0, 4.0),
    ),
    "neurons/sstem_affinities": (
        "sstem_affinities.onnx",
        "Anisotropic U-Net for real serial-section TEM (ssTEM, 50 x 4 x 4 nm; trained on real "
        "data): 4 levels, downsampling 3x(1,3,3), (1,3,3) convolutions at full resolution and 3D "
        "below, same padding, leaky ReLU; raw matched to the training sections' grey-value "
        "quantiles, /255 (1,1,6,162,162) -> 3 nearest-neighbour affinities of the same shape. "
        "Trained on ISBI 2012 sections 0-15 (2D labels: in-plane affinities learned, z-affinity "
        "trained to 0, so waterz segments each section on its own) with BCE and heavy "
        "augmentation, 1677 iterations in three runs (the last at lr 1e-4), then 1323 with "
        "BCE + constrained MALIS at lr 1e-4; waterz from fragments seeded at distance-transform "
        "maxima of each section's boundary map, quantile50 @ 0.2 (in the model's metadata, "
        "used by `waterz` when no truth is wired); checkpoint and agglomeration chosen on "
        "sections 16-19; held-out sections 20-23 2D CREMI 0.391 "
        "against 0.699 for the raw-intensity bar",
        "python -m synapse_toolkit.nn.sections ../shared/data/em/isbi2012 "
        "runs/isbi/train_0-19_unlinked.h5 --sections 0-19 --unlinked && "
        "syntk train affinities examples/train/sstem_affinities.toml --time-limit 58 && "
        "syntk train affinities examples/train/sstem_affinities.toml --init-from "
        "runs/sstem_affinities/latest.pt --out-dir runs/sstem_affinities_cont --time-limit 24 && "
        "syntk train affinities examples/train/sstem_affinities.toml --init-from "
        "runs/sstem_affinities_cont/best.pt --out-dir runs/sstem_affinities_ft --lr 1e-4 "
        "--time-limit 27 && syntk evaluate isbi-export runs/sstem_affinities_ft/best.pt "
        "runs/sstem_affinities_it1677.onnx && syntk train affinities "
        "examples/train/sstem_malis.toml --iterations 1323 --time-limit 100000 && "
        "syntk evaluate isbi-export runs/sstem_malis/it003000.pt "
        "plugins/syntk_neurons/models/sstem_affinities.onnx && syntk evaluate isbi-select "
        "--model plugins/syntk_neurons/models/sstem_affinities.onnx --sections 16-19 --write",
        (50.0, 4.0, 4.0),
    ),
}


#: registry name -> the model's domain (what `model = "auto"` in `affinity-unet` chooses by:
#: :mod:`synapse_toolkit.domain`); listed in order of preference within a modality
DOMAINS: dict[str, dict[str, str]] = {
    "neurons/fib_affinities": {"modality": "FIB-SEM", "training_data": "real"},
    "neurons/fib_affinities_v2": {"modality": "FIB-SEM", "training_data": "real"},
    "neurons/phantom_affinities": {"modality": "phantom", "training_data": "synthetic"},
    "neurons/sstem_affinities": {"modality": "ssTEM", "training_data": "real"},
}


def registry_entries() -> list[dict[str, Any]]:
    """Registry entries for the shipped models that are present (with their sidecar hash)."""
    out = []
    for name, (file, description, reproduce, voxel_size_nm) in SHIPPED.items():
        entry = bundled_model_entry(
            name, "syntk_neurons", MODELS_DIR, file, description=description,
            reproduce=reproduce, voxel_size_nm=voxel_size_nm, axis_order="zyx",
            task="affinities", **DOMAINS[name],
        )  # fmt: skip
        if entry is not None:
            out.append(entry)
    return out
