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
    assert cfg.training.mixed_precision
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


# -- the synapse detectors and the pruning CNN on CREMI-layout phantoms standing in for A, B, C --

STAND_IN_SHAPE = (12, 160, 160)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small phantom volumes (CREMI layout, 40 x 4 x 4 nm, with clefts and partners) for the
    registry's samples A, B and C."""
    from synapse_toolkit.phantom.em import EMPhantom
    from synapse_toolkit.phantom.store import write_phantom

    folder = tmp_path_factory.mktemp("cremi-stand-ins")
    out = {}
    for k, sample in enumerate("ABC"):
        path = folder / f"sample_{sample}.hdf"
        write_phantom(EMPhantom(seed=31 + k, shape=STAND_IN_SHAPE), path)
        out[f"registry:cremi/sample_{sample}"] = path
    return out


def _config_text(name: str, stand_ins: dict[str, Path]) -> str:
    text = (REPO / "examples" / "train" / name).read_text()
    for key, path in stand_ins.items():
        if key != "registry:cremi/sample_C":
            assert f'"{key}"' in text
        text = text.replace(f'"{key}"', f'"{path}"')
    # the last 25 sections of C: a region of the stand-in instead (cropping is exercised)
    assert "roi = [[100, 125], [0, 1250], [0, 1250]]" in text
    return text.replace(
        "roi = [[100, 125], [0, 1250], [0, 1250]]", "roi = [[0, 12], [16, 160], [0, 144]]"
    )


def test_cremi_synapse_configs_train_on_stand_ins(
    stand_ins: dict[str, Path], tmp_path: Path
) -> None:
    """cremi_clefts, cremi_polarity and cremi_pruner run as shipped, but for a few iterations on
    the stand-ins; each exports the checkpoint chosen on the validation region. (The pruner's
    candidates come from the shipped phantom polarity model here: a few iterations of
    cremi_polarity give no candidates to validate on.)"""
    pytest.importorskip("torch")
    from synapse_toolkit.synapses.train_detectors import load_detector_config, train_detector
    from synapse_toolkit.synapses.train_pruner import load_pruner_config, train_pruner

    onnx: dict[str, Path] = {}
    for kind in ("clefts", "polarity"):
        shipped = load_detector_config(REPO / "examples" / "train" / f"cremi_{kind}.toml")
        assert shipped.kind == kind and shipped.training.device == "auto"
        assert shipped.training.mixed_precision and shipped.data.validation
        path = tmp_path / f"{kind}.toml"
        path.write_text(_config_text(f"cremi_{kind}.toml", stand_ins))
        cfg = load_detector_config(path)
        updates = {"iterations": 3, "validate_every": 1, "checkpoint_every": 3, "log_every": 1,
                   "validation_crops": 2, "batch_size": 1, "num_threads": 1,
                   "input_shape": [4, 64, 64], "out_dir": str(tmp_path / kind)}  # fmt: skip
        cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update=updates)})
        summary = train_detector(cfg, log=lambda _: None)
        assert summary["iterations"] == 3 and summary["validation_crops"] == 2
        assert summary["best_iteration"] in (1, 2, 3)
        lines = [
            json.loads(x) for x in (tmp_path / kind / "metrics.jsonl").read_text().splitlines()
        ]
        val = [x["validation_loss"] for x in lines if "validation_loss" in x]
        assert len(val) == 3 and summary["best_validation_loss"] == pytest.approx(min(val))
        onnx[kind] = tmp_path / kind / "model.onnx"
        assert onnx[kind].is_file()
        if kind == "clefts":  # continued into the same folder: the earlier metrics stay
            again = {"iterations": 1, "init_checkpoint": str(tmp_path / kind / "final.pt")}
            cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update=again)})
            train_detector(cfg, log=lambda _: None)
            more = (tmp_path / kind / "metrics.jsonl").read_text().splitlines()
            assert more[: len(lines)] == [json.dumps(x) for x in lines] and len(more) > len(lines)

    shipped_p = load_pruner_config(REPO / "examples" / "train" / "cremi_pruner.toml")
    assert shipped_p.data.polarity_model == "runs/cremi_polarity/model.onnx"
    assert shipped_p.training.mixed_precision and shipped_p.data.validation
    text = _config_text("cremi_pruner.toml", stand_ins)
    polarity = REPO / "plugins" / "syntk_synapses" / "models" / "polarity.onnx"
    text = text.replace('"runs/cremi_polarity/model.onnx"', f'"{polarity}"')
    text = text.replace('"runs/cremi_pruner-cache"', f'"{tmp_path / "cache"}"')
    path = tmp_path / "pruner.toml"
    path.write_text(text)
    cfg_p = load_pruner_config(path)
    updates_p = {"iterations": 3, "validate_every": 1, "log_every": 1, "batch_size": 4,
                 "num_threads": 1, "out_dir": str(tmp_path / "pruner")}  # fmt: skip
    cfg_p = cfg_p.model_copy(update={"training": cfg_p.training.model_copy(update=updates_p)})
    summary_p = train_pruner(cfg_p, log=lambda _: None)
    assert summary_p["n_validation"] > 0 and (tmp_path / "pruner" / "pruner.onnx").is_file()
    # resumed from latest.pt up to 5 iterations: the weights of 5 iterations in one go
    import torch

    from synapse_toolkit.nn.checkpoint import load_state

    five = {"iterations": 5}
    logged: list[str] = []
    train_pruner(cfg_p.model_copy(update={"training": cfg_p.training.model_copy(update=five)}),
                 log=logged.append, resume=True)  # fmt: skip
    assert any(x.startswith("resuming from") and "iteration 3" in x for x in logged)
    straight = {**five, "out_dir": str(tmp_path / "pruner5")}
    train_pruner(cfg_p.model_copy(update={"training": cfg_p.training.model_copy(update=straight)}),
                 log=lambda _: None)  # fmt: skip
    a = load_state(tmp_path / "pruner" / "latest.pt")
    b = load_state(tmp_path / "pruner5" / "latest.pt")
    assert a["iteration"] == b["iteration"] == 5
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(value, b["state_dict"][key], rtol=0, atol=0, msg=key)


def test_synful_refuses_a_validation_set_it_would_ignore(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from synapse_toolkit.errors import ConfigError
    from synapse_toolkit.synapses.train_synful import load_synful_config, train_synful

    path = tmp_path / "synful.toml"
    path.write_text(
        (REPO / "examples" / "train" / "synful.toml").read_text()
        + '\n[[data.validation]]\nfile = "registry:cremi/sample_C"\n'
    )
    with pytest.raises(ConfigError, match="data.validation: the synful trainer"):
        train_synful(load_synful_config(path), log=lambda _: None)


def test_a_missing_validation_file_is_named(stand_ins: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from synapse_toolkit.errors import DataError
    from synapse_toolkit.synapses.train_detectors import load_detector_config, train_detector

    text = _config_text("cremi_clefts.toml", stand_ins)
    path = tmp_path / "clefts.toml"
    path.write_text(text.replace(str(stand_ins["registry:cremi/sample_C"]), "/nowhere/C.hdf"))
    cfg = load_detector_config(path)
    with pytest.raises(
        DataError, match=r"/nowhere/C\.hdf: file not found \(data\.validation\[0\]\)"
    ):
        train_detector(cfg, log=lambda _: None)
