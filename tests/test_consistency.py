"""Mean-teacher consistency (synapse_toolkit.nn.consistency): geometry inversion of affinities,
ramp-up, EMA teacher, config errors, perturbed validation copies and a tiny semi-supervised run."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from synapse_toolkit.affinities import NEAREST_NEIGHBOURS, labels_to_affinities
from synapse_toolkit.errors import ConfigError
from synapse_toolkit.nn.consistency import apply_geometry, invert_geometry, perturb_volume, rampup
from tests.tiny_training import training_toml


def test_invert_geometry_recovers_affinities_of_every_flip_and_transpose() -> None:
    rng = np.random.default_rng(0)
    lab = rng.integers(1, 4, (5, 6, 7)).astype(np.uint64)
    lab[:, :, :3] = 9  # not symmetric under any transform
    want = labels_to_affinities(lab, NEAREST_NEIGHBOURS).astype(np.float32)
    cube = rng.integers(1, 4, (5, 5, 5)).astype(np.uint64)
    want_cube = labels_to_affinities(cube, NEAREST_NEIGHBOURS).astype(np.float32)
    for flips in itertools.product([False, True], repeat=3):
        seen = np.asarray(apply_geometry(lab, flips, (0, 1, 2)))
        affs = labels_to_affinities(np.ascontiguousarray(seen), NEAREST_NEIGHBOURS)
        back, valid = invert_geometry(affs.astype(np.float32)[None], flips, (0, 1, 2))
        assert np.array_equal(back[0][valid > 0], want[valid > 0])
        assert valid.sum() == valid.size - sum(
            int(f) * int(np.prod(lab.shape)) // lab.shape[a] for a, f in enumerate(flips)
        )
        for perm in itertools.permutations(range(3)):
            seen = np.ascontiguousarray(apply_geometry(cube, flips, perm))
            affs = labels_to_affinities(seen, NEAREST_NEIGHBOURS).astype(np.float32)
            back, valid = invert_geometry(affs[None], flips, perm)
            assert np.array_equal(back[0][valid > 0], want_cube[valid > 0]), (flips, perm)
    # without inverting, a flip would not match: the test can fail
    seen = np.ascontiguousarray(apply_geometry(lab, (False, False, True), (0, 1, 2)))
    affs = labels_to_affinities(seen, NEAREST_NEIGHBOURS).astype(np.float32)
    assert not np.array_equal(affs, want)


def test_invert_geometry_on_torch_keeps_gradients() -> None:
    torch = pytest.importorskip("torch")
    x = torch.rand(1, 3, 4, 4, 4, requires_grad=True)
    back, valid = invert_geometry(x, (True, False, True), (2, 0, 1))
    (back * torch.from_numpy(valid)).sum().backward()
    assert x.grad is not None and float(x.grad.sum()) == float(valid.sum())


def test_rampup() -> None:
    assert rampup(5, 10, 100) == 0.0
    assert rampup(10, 10, 100) == pytest.approx(np.exp(-5))
    assert rampup(60, 10, 100) == pytest.approx(np.exp(-5 * 0.25))
    assert rampup(500, 10, 100) == 1.0
    assert rampup(10, 10, 0) == 1.0


def test_perturbed_copy_is_blurred_but_matched_back() -> None:
    rng = np.random.default_rng(1)
    raw = (rng.random((10, 20, 20)) * 200 + 20).astype(np.uint8)
    low = perturb_volume(raw, {"blur_sigma": 1.0, "contrast": 0.5, "noise_std": 3}, "v")
    assert low.dtype == np.uint8 and low.shape == raw.shape
    # matched back: same grey-value range as the original, but smoother
    assert abs(float(low.mean()) - float(raw.mean())) < 5
    assert (
        np.abs(np.diff(low.astype(float), axis=2)).mean()
        < np.abs(np.diff(raw.astype(float), axis=2)).mean()
    )
    unmatched = perturb_volume(raw, {"contrast": 0.5, "match": False}, "v")
    assert unmatched.std() < 0.6 * raw.std()
    with pytest.raises(ConfigError, match="perturb keys"):
        perturb_volume(raw, {"sharpen": 1}, "v.h5")


def test_darkened_validation_copy_needs_labels_and_darkens_whole_objects() -> None:
    """perturb.darken (a validation copy with dark neurites): whole objects move to the grey
    level before any matching; without labels it is one ConfigError."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 6, size=(4, 12, 12)).astype(np.int32)  # 0: boundary
    raw = np.full(labels.shape, 180, np.uint8)
    dark = perturb_volume(raw, {"darken": [0.4, 60], "seed": 1, "match": False}, "v", labels)
    changed = dark != raw
    chosen = np.unique(labels[changed])
    assert len(chosen) == 2 and 0 not in chosen  # round(0.4 x 5) objects
    assert changed[np.isin(labels, chosen)].all() and (dark[changed] == 60).all()
    with pytest.raises(ConfigError, match="darken needs labels"):
        perturb_volume(raw, {"darken": [0.4, 60]}, "v.h5")


def _files(tmp_path):
    h5py = pytest.importorskip("h5py")
    from tests.tiny_training import small_volume, write_small_volume

    unl, _ = small_volume(shape=(16, 40, 40), seed=3)
    unl = (unl.astype(np.float32) * 0.5 + 40).astype(np.uint8)  # another contrast
    with h5py.File(tmp_path / "unl.h5", "w") as f:
        f["raw"] = unl
    return write_small_volume(tmp_path / "vol.h5"), tmp_path / "unl.h5"


def _config(tmp_path, semi: str) -> object:
    h5, unl = _files(tmp_path)
    volumes = f'volumes = [{{ raw = "{unl}", raw_dataset = "raw" }}]'
    text = training_toml(
        h5, tmp_path / "run",
        {"iterations": 6, "loss": "bce", "checkpoint_every": 3, "validate_every": 6,
         "validation_thresholds": [0.3, 0.6], "log_every": 1, "num_threads": 1},
        augment={"transpose_axes": [1, 2]},
        extra_validation=["perturb = { blur_sigma = 1.0 }"],
        tail=f"[semi_supervised]\n{semi}\n{volumes}\n",
    )  # fmt: skip
    path = tmp_path / "train.toml"
    path.write_text(text)
    return path


def test_semi_supervised_training_runs_and_teacher_follows(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    from synapse_toolkit.nn.training import load_config, train

    cfg = load_config(_config(tmp_path, "start = 2\nrampup_iterations = 2\nema_decay = 0.5"))
    lines: list[str] = []
    summary = train(cfg, log=lines.append)
    assert summary["iterations"] == 6
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "consistency" in r]
    assert [r["iteration"] for r in steps] == [2, 3, 4, 5, 6]
    assert steps[-1]["ramp"] == 1.0 and 0 <= steps[-1]["confident"] <= 1
    assert np.isfinite(steps[-1]["consistency"])
    val = [r["validation"] for r in records if "validation" in r]
    assert len(val) == 1  # mean over the clean and the blurred copy
    ckpt = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)
    assert ckpt["train_config"]["semi_supervised"]["start"] == 2


def test_a_continued_run_says_when_start_skips_the_rampup(tmp_path) -> None:
    """`start` counts absolute iterations; a run continued with init_from from iteration 6 with
    start = 2 begins at the full consistency weight and says so; start = 6 ramps up from 0."""
    pytest.importorskip("torch")
    from synapse_toolkit.nn.training import load_config, train

    cfg = load_config(_config(tmp_path, "start = 2\nrampup_iterations = 2\nema_decay = 0.5"))
    first = train(cfg, log=lambda _: None)
    notes = {}
    for start in (2, 6):
        semi = {**(cfg.semi_supervised or {}), "start": start}
        more = cfg.training.model_copy(update={
            "init_from": first["latest"], "iterations": 1, "out_dir": str(tmp_path / f"s{start}")
        })  # fmt: skip
        lines: list[str] = []
        train(cfg.model_copy(update={"training": more, "semi_supervised": semi}), log=lines.append)
        notes[start] = [x for x in lines if "semi_supervised.start" in x]
    assert len(notes[2]) == 1 and "100%" in notes[2][0] and "start >= 6" in notes[2][0]
    assert notes[6] == []


def test_teacher_is_an_ema_of_the_student(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    from synapse_toolkit.nn.consistency import make_consistency
    from synapse_toolkit.nn.unet import UNet3D, UNetConfig

    _, unl = _files(tmp_path)
    net = UNet3D(UNetConfig.from_dict({"num_fmaps": 2, "downsample_factors": [[1, 2, 2]]}))
    section = {"volumes": [{"raw": str(unl), "raw_dataset": "raw"}], "ema_decay": 0.75}
    c = make_consistency(section, net, (14, 28, 28), (10, 12, 12), [], 0)
    assert c is not None
    before = [p.detach().clone() for p in c.teacher.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    c.update_teacher(net)
    for b, t, s in zip(before, c.teacher.parameters(), net.parameters(), strict=True):
        assert torch.allclose(t, 0.75 * b + 0.25 * s)
    x = c.sample()
    assert x.shape == (14, 28, 28) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1


@pytest.mark.parametrize("dtype, gain", [(np.uint8, 1), (np.uint16, 200), (np.float32, 0.01)])
def test_unlabelled_crops_reach_the_labelled_input_range_whatever_their_dtype(
    tmp_path, dtype, gain
) -> None:
    """Matched to 8-bit labelled volumes, a 16-bit or float target is scaled as they are."""
    torch = pytest.importorskip("torch")
    h5py = pytest.importorskip("h5py")
    from synapse_toolkit.nn.consistency import make_consistency

    rng = np.random.default_rng(3)
    labelled = rng.integers(0, 256, (8, 40, 40)).astype(np.uint8)
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f["raw"] = (rng.integers(0, 256, (8, 40, 40)) * gain).astype(dtype)
    section = {"volumes": [{"raw": str(tmp_path / "t.h5"), "raw_dataset": "raw"}]}
    c = make_consistency(section, torch.nn.Conv3d(1, 3, 1), (8, 32, 32), (8, 32, 32),
                         [labelled], 0)  # fmt: skip
    assert c is not None
    x = c.sample()
    assert x.min() >= 0 and 0.9 < x.max() <= 1.0


def test_config_errors(tmp_path) -> None:
    pytest.importorskip("torch")
    from synapse_toolkit.nn.consistency import make_consistency
    from synapse_toolkit.nn.unet import UNet3D, UNetConfig

    _, unl = _files(tmp_path)
    net = UNet3D(UNetConfig.from_dict({"num_fmaps": 2, "downsample_factors": [[1, 2, 2]]}))
    vol = {"raw": str(unl), "raw_dataset": "raw"}
    with pytest.raises(ConfigError, match="semi_supervised.confidence"):
        make_consistency({"volumes": [vol], "confidence": 0.3}, net, (14, 28, 28), (1,), [], 0)
    with pytest.raises(ConfigError, match="geometric fields"):
        make_consistency(
            {"volumes": [vol], "strong": {"flip": True}}, net, (14, 28, 28), (1,), [], 0
        )
    with pytest.raises(ConfigError, match="semi_supervised.volumes"):
        make_consistency({"volumes": []}, net, (14, 28, 28), (1,), [], 0)


def test_an_interrupted_semi_supervised_run_resumes_exactly(tmp_path) -> None:
    """3 iterations, then ``resume`` up to 6, with consistency and a weight average: the weights,
    the average and the teacher of 6 iterations in one go (the crop samplers', torch's and the
    teacher's states travel in latest.pt)."""
    torch = pytest.importorskip("torch")
    from synapse_toolkit.nn.checkpoint import load_state
    from synapse_toolkit.nn.training import load_config, train

    cfg = load_config(_config(tmp_path, "start = 1\nrampup_iterations = 2\nema_decay = 0.5"))

    def run(out: str, iterations: int, resume: bool = False) -> list[str]:
        t = cfg.training.model_copy(update={"iterations": iterations, "ema_decay": 0.9,
                                            "out_dir": str(tmp_path / out)})  # fmt: skip
        lines: list[str] = []
        train(cfg.model_copy(update={"training": t}), log=lines.append, resume=resume)
        return lines

    run("straight", 6)
    run("stopped", 3)
    lines = run("stopped", 6, resume=True)
    assert any(x.startswith("resuming from") and "iteration 3" in x for x in lines)
    a = load_state(tmp_path / "straight" / "latest.pt")
    b = load_state(tmp_path / "stopped" / "latest.pt")
    assert a["iteration"] == b["iteration"] == 6
    for part in ("state_dict", "ema_state_dict"):
        for key, value in a[part].items():
            torch.testing.assert_close(value, b[part][key], rtol=0, atol=0, msg=f"{part} {key}")
    teacher_a, teacher_b = (
        a["resume"]["consistency"]["teacher"],
        b["resume"]["consistency"]["teacher"],
    )
    for key, value in teacher_a.items():
        torch.testing.assert_close(value, teacher_b[key], rtol=0, atol=0, msg=f"teacher {key}")
