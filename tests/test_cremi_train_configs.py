"""examples/train/cremi_affinities.toml runs: its `registry:` volumes replaced by small
CREMI-layout stand-ins made here (same dataset keys, 40 x 4 x 4 nm), a few iterations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synapse_toolkit.io.cremi import write_cremi
from synapse_toolkit.nn.volume_file import DatasetFile, volume_path

from .conftest import REPO, make_cremi_data

CONFIG = REPO / "examples" / "train" / "cremi_affinities.toml"


def test_registry_volumes_resolve_through_the_registry() -> None:
    path = volume_path("registry:demo/cremi")  # bundled: no download
    assert path.is_file()
    with DatasetFile("registry:demo/cremi", "volumes/raw") as f:
        assert len(f.shape) == 3
    assert volume_path("runs/x.h5") == Path("runs/x.h5")


def test_cremi_affinities_config_trains_on_stand_ins(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from synapse_toolkit.nn.training import load_config, train

    text = CONFIG.read_text()
    for sample in "ABC":
        assert f'"registry:cremi/sample_{sample}"' in text
        path = write_cremi(tmp_path / f"{sample}.hdf", make_cremi_data(ord(sample), (4, 90, 90)))
        text = text.replace(f"registry:cremi/sample_{sample}", str(path))
    cfg = load_config(CONFIG)  # the shipped file itself is valid
    assert cfg.domain["voxel_size_nm"] == [40.0, 4.0, 4.0] and cfg.training.device == "auto"
    from synapse_toolkit.nn.unet import UNet3D, UNetConfig

    model = {k: v for k, v in cfg.model.items() if k != "init"}
    assert UNet3D(UNetConfig.from_dict(model)).is_valid_input_shape(cfg.training.input_shape)
    path = tmp_path / "cremi.toml"
    path.write_text(
        text.replace("roi = [[100, 125], [0, 625], [0, 625]]", "roi = [[0, 4], [0, 54], [0, 54]]")
    )
    cfg = load_config(path)
    updates = {
        "iterations": 2,
        "validate_every": 2,
        "checkpoint_every": 2,
        "log_every": 1,
        "out_dir": str(tmp_path / "run"),
        "validation_thresholds": [0.5],
        "num_threads": 1,
        "input_shape": [2, 54, 54],  # small for speed; the shipped shape is checked above
    }
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update=updates)})
    summary = train(cfg, log=lambda _: None)
    assert summary["iterations"] == 2 and Path(summary["best"]).is_file()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert any("validation" in json.loads(x) for x in lines)
