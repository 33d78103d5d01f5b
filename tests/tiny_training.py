"""The small labelled volume and the tiny affinity-training config shared by the training tests
(training, adapt, scarce labels, consistency): one place, so a new config key is added once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

#: the training ROI and the validation ROI of :func:`training_toml` (z, y, x voxels)
TRAIN_ROI = "[[0, 12], [0, 40], [0, 30]]"
VALIDATION_ROI = "[[0, 12], [0, 40], [30, 40]]"


def small_volume(shape=(12, 40, 40), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi-ish cells with one-voxel boundaries (label 0); raw dark on boundaries."""
    rng = np.random.default_rng(seed)
    seeds = rng.random((12, 3)) * np.array(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    d = ((grid[..., None, :] - seeds) ** 2).sum(-1)
    lab = d.argmin(-1) + 1
    edge = np.zeros(shape, bool)
    for ax in range(3):
        diff = np.diff(lab, axis=ax) != 0
        sl = [slice(None)] * 3
        sl[ax] = slice(1, None)
        edge[tuple(sl)] |= diff
    lab[edge] = 0
    raw = np.where(lab == 0, 60, 180).astype(np.uint8)
    return raw, lab.astype(np.int32)


def write_small_volume(path: Path) -> Path:
    """:func:`small_volume` as datasets ``raw`` and ``gt`` of an HDF5 file at ``path``."""
    import h5py

    raw, lab = small_volume()
    with h5py.File(path, "w") as f:
        f["raw"], f["gt"] = raw, lab
    return path


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return repr(v)


def training_toml(
    h5: Path,
    out_dir: Path,
    training: Mapping[str, object],
    augment: Mapping[str, object] | None = None,
    volume_keys: str = "",
    extra_validation: Sequence[str] = (),
    tail: str = "",
) -> str:
    """A training config for a 2-feature-map U-Net on the volume written by
    :func:`write_small_volume`: ``training`` keys (input shape and out_dir set here),
    ``augment`` keys (default: no elastic warp, no margin), ``volume_keys`` appended to both
    volume entries (e.g. ``labelled_sections = [5, 6]``), further validation entries' extra
    keys, and ``tail`` (more sections) at the end."""
    v = f'{{ raw = "{h5}", raw_dataset = "raw", labels = "{h5}", labels_dataset = "gt"'
    more = f", {volume_keys}" if volume_keys else ""
    validation = [f"{v}, roi = {VALIDATION_ROI}{more} }}"]
    validation += [f"{v}, roi = {VALIDATION_ROI}, {keys} }}" for keys in extra_validation]
    aug = {"elastic_sigma": 0.0, "margin": [0, 0, 0], **(augment or {})}
    train = {"input_shape": [14, 28, 28], "out_dir": str(out_dir), **training}
    lines = [
        "[model]",
        "num_fmaps = 2",
        "fmap_inc_factor = 2",
        "downsample_factors = [[1, 2, 2]]",
        "[data]",
        f"volumes = [{v}, roi = {TRAIN_ROI}{more} }}]",
        "validation = [" + ",\n  ".join(validation) + "]",
        "[augment]",
        *(f"{k} = {_value(x)}" for k, x in aug.items()),
        "[training]",
        *(f"{k} = {_value(x)}" for k, x in train.items()),
    ]
    return "\n".join(lines) + "\n" + tail
