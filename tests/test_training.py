"""Training loop (a tiny net, a few steps), CLI, and augmentation consistency raw <-> labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from synapse_toolkit.nn.augment import AugmentConfig, sample_augmented
from tests.tiny_training import small_volume, training_toml, write_small_volume


@pytest.mark.parametrize("elastic", [0.0, 1.0])
def test_augmentation_keeps_raw_and_labels_aligned(elastic: float) -> None:
    raw, lab = small_volume()
    raw = (lab % 7 * 30).astype(np.uint8)  # raw is a function of the label
    cfg = AugmentConfig(
        transpose_axes=(0, 1, 2),
        intensity_scale=0,
        intensity_shift=0,
        elastic_sigma=elastic,
        margin=(2, 3, 3),
        misalign_prob=1.0,
        misalign_max=2,
    )
    rng = np.random.default_rng(0)
    for _ in range(5):
        r, lb = sample_augmented(raw, lab, (2, 3, 3), (8, 8, 8), cfg, rng)
        match = np.isclose(r * 255, lb % 7 * 30, atol=1e-3)
        if elastic == 0:  # integer shifts only: exact
            assert match.all()
        else:  # linear interpolation of raw differs from nearest labels only at label edges
            assert match.mean() > 0.6


def test_missing_sections_and_intensity() -> None:
    raw, lab = small_volume()
    cfg = AugmentConfig(missing_prob=1.0, elastic_sigma=0, margin=(0, 0, 0))
    r, _ = sample_augmented(raw, lab, (0, 0, 0), (4, 8, 8), cfg, np.random.default_rng(1))
    assert r.max() == 0
    with pytest.raises(ValueError, match="exceeds volume"):
        sample_augmented(
            raw,
            lab,
            (10, 0, 0),
            (4, 8, 8),
            AugmentConfig(margin=(0, 0, 0)),
            np.random.default_rng(1),
        )


def test_blur_softens_raw_and_leaves_labels() -> None:
    raw, lab = small_volume()
    plain_cfg = AugmentConfig(elastic_sigma=0, margin=(0, 0, 0), flip=False, transpose_axes=(),
                              intensity_scale=0, intensity_shift=0)  # fmt: skip
    blur_cfg = AugmentConfig(**{**plain_cfg.__dict__, "blur_prob": 1.0, "blur_sigma": 2.0})
    r0, l0 = sample_augmented(raw, lab, (0, 0, 0), (6, 12, 12), plain_cfg, np.random.default_rng(2))
    r1, l1 = sample_augmented(raw, lab, (0, 0, 0), (6, 12, 12), blur_cfg, np.random.default_rng(2))
    np.testing.assert_array_equal(l0, l1)
    assert np.abs(np.diff(r1, axis=2)).mean() < 0.8 * np.abs(np.diff(r0, axis=2)).mean()
    assert r1.mean() == pytest.approx(r0.mean(), abs=0.02)  # blur moves no intensity around


def test_dark_objects_darken_whole_objects_only_and_leave_the_stream_alone_when_off() -> None:
    """`dark_objects_prob`: darkened voxels are whole labelled objects (never boundary 0 or
    unknown voxels), moved to the drawn grey; switched off, the crop and random stream are as
    before the option existed."""
    raw, lab = small_volume()
    lab = lab.astype(np.uint64)
    lab[:, :2] = 0  # boundary
    lab[:, -2:] = np.uint64(0xFFFFFFFFFFFFFFFF)  # unknown
    raw = np.full(lab.shape, 200, np.uint8)
    plain = AugmentConfig(elastic_sigma=0, margin=(0, 0, 0), flip=False, transpose_axes=(),
                          intensity_scale=0, intensity_shift=0)  # fmt: skip
    dark = AugmentConfig(**{**plain.__dict__, "dark_objects_prob": 1.0,
                            "dark_objects_fraction": 1.0,
                            "dark_objects_level": (0.25, 0.25)})  # fmt: skip
    shape = lab.shape
    seen_dark = 0
    rng = np.random.default_rng(4)
    for _ in range(6):
        r, lb = sample_augmented(raw, lab, (0, 0, 0), shape, dark, rng)
        darkened = ~np.isclose(r, 200 / 255)
        assert np.isclose(r[darkened], 0.25).all()
        assert not darkened[(lb == 0) | (lb == np.uint64(0xFFFFFFFFFFFFFFFF))].any()
        for i in np.unique(lb[darkened]):  # a darkened object is darkened whole
            assert darkened[lb == i].all()
        seen_dark += int(darkened.any())
    assert seen_dark >= 4
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    off = AugmentConfig(**{**plain.__dict__, "dark_objects_prob": 0.0})
    r0, _ = sample_augmented(raw, lab, (0, 0, 0), shape, plain, a)
    r1, _ = sample_augmented(raw, lab, (0, 0, 0), shape, off, b)
    np.testing.assert_array_equal(r0, r1)
    assert a.random() == b.random()
    from synapse_toolkit.errors import ConfigError

    with pytest.raises(ConfigError, match="dark_objects_fraction must be in"):
        AugmentConfig.from_table({"dark_objects_fraction": 1.5})


def _config(tmp_path, loss="bce+malis") -> object:
    pytest.importorskip("h5py")
    h5 = write_small_volume(tmp_path / "vol.h5")
    text = training_toml(
        h5, tmp_path / "run",
        {"iterations": 4, "loss": loss, "malis_start": 2, "checkpoint_every": 2,
         "validate_every": 4, "validation_thresholds": [0.3, 0.6], "log_every": 1},
        augment={"elastic_sigma": 1.0, "margin": [1, 2, 2]},
    )  # fmt: skip
    path = tmp_path / "train.toml"
    path.write_text(text)
    return path


def test_training_runs_checkpoints_and_validates(tmp_path) -> None:
    pytest.importorskip("torch")
    from synapse_toolkit.nn.training import load_config, train

    cfg = load_config(_config(tmp_path))
    lines: list[str] = []
    summary = train(cfg, log=lines.append)
    assert summary["iterations"] == 4
    assert (tmp_path / "run" / "latest.pt").exists() and (tmp_path / "run" / "best.pt").exists()
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["validation"] for r in records if "validation" in r]
    assert val and {"voi", "arand", "cremi_score"} <= set(val[-1]["best"])
    assert any(line.startswith("validation it 4") for line in lines)


def test_weight_average_is_validated_kept_and_resumed(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    from synapse_toolkit.nn.checkpoint import load_state
    from synapse_toolkit.nn.training import load_config, train

    cfg = load_config(_config(tmp_path, loss="bce"))
    avg = cfg.model_copy(update={"training": cfg.training.model_copy(
        update={"ema_decay": 0.5, "keep_checkpoints": True, "lr": 0.05})})  # fmt: skip
    train(avg)
    run = tmp_path / "run"
    latest, ema = load_state(run / "latest.pt"), load_state(run / "ema.pt")
    kept = load_state(run / "it000002.pt")
    assert kept["iteration"] == 2 and ema["iteration"] == 4
    assert "validation" not in kept  # validated every 4 iterations
    assert load_state(run / "it000004.pt")["validation"]["iteration"] == 4  # exportable
    key = next(k for k in latest["state_dict"] if k.endswith("weight"))
    # latest.pt: raw weights + the average; ema.pt / best.pt: the average (what is exported)
    assert torch.equal(latest["ema_state_dict"][key], ema["state_dict"][key])
    assert not torch.equal(latest["state_dict"][key], ema["state_dict"][key])
    best = load_state(run / "best.pt")
    assert best["iteration"] == 4 and torch.equal(best["state_dict"][key], ema["state_dict"][key])
    # continuing: the average carries on from latest.pt's, not from its raw weights
    cont = avg.model_copy(update={"training": avg.training.model_copy(
        update={"init_from": str(run / "latest.pt"), "iterations": 1, "ema_decay": 0.999999,
                "out_dir": str(tmp_path / "cont")})})  # fmt: skip
    train(cont)
    resumed = load_state(tmp_path / "cont" / "ema.pt")["state_dict"][key]
    torch.testing.assert_close(resumed, ema["state_dict"][key], atol=1e-4, rtol=0)


def test_cli_train_and_config_errors(tmp_path) -> None:
    pytest.importorskip("torch")
    from typer.testing import CliRunner

    from synapse_toolkit.cli.main import app

    path = _config(tmp_path, loss="mse")
    res = CliRunner().invoke(app, ["train", "affinities", str(path), "--iterations", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["iterations"] == 2
    bad = tmp_path / "bad.toml"
    bad.write_text(path.read_text().replace("[training]", "[training]\nlearning_rate = 1"))
    res = CliRunner().invoke(app, ["train", "affinities", str(bad)])
    assert res.exit_code == 1 and "learning_rate" in res.stderr
    shape = tmp_path / "shape.toml"
    shape.write_text(
        path.read_text().replace("input_shape = [14, 28, 28]", "input_shape = [13, 27, 27]")
    )
    res = CliRunner().invoke(app, ["train", "affinities", str(shape)])
    assert res.exit_code == 1 and "input_shape" in res.stderr
    aug = tmp_path / "aug.toml"
    aug.write_text(path.read_text().replace("[augment]", "[augment]\nblur_sigmas = 2"))
    res = CliRunner().invoke(app, ["train", "affinities", str(aug)])
    assert res.exit_code == 1 and "augment.blur_sigmas: unknown key" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("roi", [[[100, 125], [0, 8], [0, 8]], [[2, 2], [0, 8], [0, 8]], [[0, 4]]])
def test_a_region_outside_its_volume_is_one_error_naming_the_file(tmp_path, roi) -> None:
    """An roi past the volume's end once gave an empty volume and a tiling error much later."""
    from synapse_toolkit.errors import DataError
    from synapse_toolkit.nn.training import VolumeSpec, load_volume

    path = write_small_volume(tmp_path / "vol.h5")
    spec = VolumeSpec(raw=str(path), raw_dataset="raw", labels=str(path), labels_dataset="gt",
                      roi=roi)  # fmt: skip
    with pytest.raises(DataError, match=r"vol\.h5:raw: roi .* not a non-empty region inside"):
        load_volume(spec)
    inside = VolumeSpec(raw=str(path), raw_dataset="raw", labels=str(path), labels_dataset="gt",
                        roi=[[1, 3], [0, 8], [2, 6]])  # fmt: skip
    raw, labels = load_volume(inside)
    assert raw.shape == (2, 8, 4) and labels is not None and labels.shape == raw.shape


def test_validation_can_agglomerate_distance_seeded_fragments(tmp_path) -> None:
    """``validation_fragments`` gives the validation the waterz stage's fragment setting (seeded
    fragments: bounded memory on noisy early predictions); an unknown method is a config error."""
    from synapse_toolkit.affinities import NEAREST_NEIGHBOURS, labels_to_affinities
    from synapse_toolkit.errors import ConfigError
    from synapse_toolkit.inference.agglomeration import sweep
    from synapse_toolkit.inference.fragments import make_fragments
    from synapse_toolkit.nn.training import TrainingSpec, load_config, validation_sweep

    _, labels = small_volume()
    rng = np.random.default_rng(0)
    affs = labels_to_affinities(labels, NEAREST_NEIGHBOURS).astype(np.float32)
    affs = np.clip(affs * 0.8 + rng.uniform(0, 0.2, affs.shape), 0, 1).astype(np.float32)
    setting = {"method": "distance_2d", "min_distance": 2}
    spec = TrainingSpec(validation_thresholds=[0.3, 0.6], validation_fragments=setting)
    rows = validation_sweep(affs, labels, spec)
    expected = sweep(affs, labels, [0.3, 0.6], fragments=make_fragments(affs, setting))
    assert rows == expected and len(rows) == 2
    assert rows != validation_sweep(affs, labels, TrainingSpec(validation_thresholds=[0.3, 0.6]))
    text = (
        _config(tmp_path)
        .read_text()
        .replace("[training]", '[training]\nvalidation_fragments = { method = "watershed" }')
    )
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(ConfigError, match="validation_fragments"):
        load_config(tmp_path / "bad.toml")


def test_a_region_is_read_alone_and_keeps_its_labelled_sections(tmp_path) -> None:
    """``labelled_sections`` are file indices; with a ``roi`` only the region is read and the
    sections inside it stay labelled."""
    from synapse_toolkit.errors import ConfigError
    from synapse_toolkit.nn.training import UNKNOWN, VolumeSpec, load_volume

    path = write_small_volume(tmp_path / "vol.h5")
    raw_all, lab_all = small_volume()
    keys = {"raw": str(path), "raw_dataset": "raw", "labels": str(path), "labels_dataset": "gt"}
    raw, lab = load_volume(
        VolumeSpec(**keys, roi=[[2, 6], [1, 7], [0, 8]], labelled_sections=[1, 4])
    )
    np.testing.assert_array_equal(raw, raw_all[2:6, 1:7, 0:8])
    np.testing.assert_array_equal(lab[2], lab_all[4, 1:7, 0:8])  # file section 4
    assert (lab[[0, 1, 3]] == UNKNOWN).all()
    with pytest.raises(ConfigError, match="labelled_sections"):
        load_volume(VolumeSpec(**keys, roi=[[2, 6], [0, 8], [0, 8]], labelled_sections=[99]))
