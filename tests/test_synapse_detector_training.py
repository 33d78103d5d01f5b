"""Cleft / polarity U-Net training: loss weights, a few steps end to end, ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from synapse_toolkit.io.cremi import write_cremi  # noqa: E402
from synapse_toolkit.nn.augment import AugmentConfig  # noqa: E402
from synapse_toolkit.synapses.train_detectors import (  # noqa: E402
    NO_AUGMENTATION,
    DetectorTrainConfig,
    SynapseCropSampler,
    _split_weights,
    _synapse_centres,
    train_detector,
)
from tests.conftest import make_cremi_data  # noqa: E402


def test_split_weights_give_each_side_and_background_a_third() -> None:
    t = np.zeros((4, 10, 10), np.float32)
    t[0, :2] = 0.5  # pre side: 20 voxels
    t[1, :3] = -0.7  # post side: 30 voxels
    mask = np.ones_like(t, bool)
    mask[3] = False
    w = _split_weights(t, mask)
    assert w.shape == (2, *t.shape)
    for channel, own, other in ((0, t > 0, t < 0), (1, t < 0, t > 0)):
        parts = [w[channel][own].sum(), w[channel][other].sum(), w[channel][(t == 0) & mask].sum()]
        np.testing.assert_allclose(parts, [parts[0]] * 3, rtol=1e-5)
    assert not w[:, 3].any()  # masked voxels carry no weight


def test_crop_sampler_returns_target_and_mask_of_the_same_voxels() -> None:
    """Target and mask travel packed in one array; each crop unpacks to the source's values (a
    generator of volumes is accepted, so the caller need not keep unpadded copies)."""
    shape = (8, 40, 40)
    index = np.arange(np.prod(shape)).reshape(shape)
    target = (index / index.size * 2.0 - 1.0).astype(np.float32)  # every voxel its own value
    mask = (index % 3) != 0
    raw = (index % 251).astype(np.uint8)
    volumes = ((raw, target, mask, np.zeros((0, 3), np.int64), None) for _ in range(1))
    plain = AugmentConfig.from_table(NO_AUGMENTATION)
    before = target.copy()
    sampler = SynapseCropSampler(volumes, (4, 16, 16), (2, 8, 8), plain, 0.0, seed=3)
    np.testing.assert_array_equal(target, before)  # the caller's array is not packed in place
    inside = 0
    for _ in range(20):
        _, t, m = sampler.sample()
        assert t.shape == m.shape == (2, 8, 8) and t.dtype == np.float32 and m.dtype == bool
        voxel = np.rint((t + 1.0) / 2.0 * index.size).astype(np.int64)  # which source voxel
        assert np.all((voxel >= 0) & (voxel < index.size))
        np.testing.assert_allclose(t, target.reshape(-1)[voxel], atol=1e-6)
        np.testing.assert_array_equal(m, mask.reshape(-1)[voxel])
        inside += int(m.any() and (~m).any())
    assert inside > 0  # crops mixed masked and unmasked voxels


def test_site_types_and_type_weighted_crop_centres(tmp_path: Path) -> None:
    """Each annotation site gets its synapse's phantom type (posts through the partner rows);
    with a weight of 0 for every type but one, synapse-centred crops sit on that type's sites."""
    from synapse_toolkit.io.cremi import read_cremi
    from synapse_toolkit.phantom.em import EMPhantom
    from synapse_toolkit.phantom.params import EMPhantomParams
    from synapse_toolkit.phantom.store import read_phantom_truth, site_types, write_phantom

    params = EMPhantomParams(shape=(8, 96, 96), seed=5, n_synapses=9, n_types=3,
                             polyadic_fraction=0.5)  # fmt: skip
    path = write_phantom(EMPhantom(params), tmp_path / "p.h5")
    data = read_cremi(path)
    assert data.annotations is not None and data.raw is not None
    ann = data.annotations
    types = site_types(path, ann.ids)
    truth = read_phantom_truth(path)
    expected = {}
    for sid, pre, post, _, _ in truth.partners.tolist():
        t = int(truth.synapses["type"][truth.synapses["synapse_id"] == sid][0])
        expected[pre], expected[post] = t, t
    assert types.tolist() == [expected[i] for i in ann.ids.tolist()]
    assert len(set(types.tolist())) > 1
    plain_file = tmp_path / "plain.hdf"
    write_cremi(plain_file, make_cremi_data(shape=(8, 64, 64)))
    assert (site_types(plain_file, ann.ids) == -1).all()  # no phantom truth: no types

    shape = data.raw.spatial_shape
    keep = int(types[0])
    centres, chance = _synapse_centres(data, shape, path, {t: 0.0 for t in range(3) if t != keep})
    assert chance is not None and np.isclose(chance.sum(), 1.0)
    inside = np.all((np.asarray(centres) >= 0), axis=1)
    assert inside.all() and (chance > 0).sum() == (types == keep).sum()
    uniform, none = _synapse_centres(data, shape, path, {})
    assert none is None and np.array_equal(uniform, centres)

    raw = data.raw.read()
    target = np.zeros(shape, np.float32)
    target[tuple(centres[chance > 0].T)] = 1.0  # marks the kept type's sites
    plain = AugmentConfig.from_table(NO_AUGMENTATION)
    sampler = SynapseCropSampler([(raw, target, np.ones(shape, bool), centres, chance)],
                                 (3, 9, 9), (3, 9, 9), plain, 1.0, seed=0)  # fmt: skip
    hits = [sampler.sample()[1].max() for _ in range(40)]
    assert min(hits) == 1.0  # every crop holds a site of the kept type (within +-output/3)


@pytest.mark.parametrize(
    ("kind", "loss", "pool"),
    [
        ("polarity", "bce-split", "space-to-depth"),
        ("polarity", "bce-side", "space-to-depth"),
        ("clefts", "mse", "avg"),
    ],
)
def test_detector_trains_and_exports(tmp_path: Path, kind: str, loss: str, pool: str) -> None:
    import onnxruntime as ort

    path = write_cremi(tmp_path / "s.hdf", make_cremi_data(shape=(8, 64, 64)))
    cfg = DetectorTrainConfig.model_validate({
        "kind": kind,
        "data": {"files": [str(path)]},
        "model": {"scale": 2, "pool": pool, "init": "kaiming", "padding": "same", "num_fmaps": 2,
                  "downsample_factors": [[1, 2, 2]]},
        "augment": {"elastic_sigma": 0.0, "margin": [0, 0, 0]},
        "training": {"iterations": 4, "input_shape": [4, 32, 32], "num_threads": 1,
                     "checkpoint_every": 2, "out_dir": str(tmp_path / "run"), "loss": loss,
                     "log_every": 1},
    })  # fmt: skip
    summary = train_detector(cfg, log=lambda _: None)
    assert summary["iterations"] == 4
    assert (tmp_path / "run" / "latest.pt").exists()
    assert (tmp_path / "run" / "final.pt").exists()
    sess = ort.InferenceSession(summary["path"], providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 1, 4, 32, 32), dtype=np.float32)
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    assert y.shape == (1, 1, 4, 32, 32)
    low = -1.0 if kind == "polarity" else 0.0
    assert y.min() >= low - 1e-6 and y.max() <= 1.0 + 1e-6


def test_side_loss_rewards_the_right_side_only_near_sites() -> None:
    from synapse_toolkit.synapses.train_detectors import _side_loss

    target = torch.zeros(1, 1, 2, 8, 8)
    target[..., :2, :] = 0.6  # pre side
    target[..., 2:4, :] = -0.6  # post side
    mask = torch.ones_like(target)

    def loss(near: float, pre_side: float, post_side: float, far_side: float) -> float:
        side = torch.full_like(target, far_side)
        side[..., :2, :], side[..., 2:4, :] = pre_side, post_side
        vic = torch.where(target != 0, torch.tensor(near), torch.tensor(0.05))
        return float(_side_loss(torch.cat([vic, side], dim=1), target, mask))

    right, wrong = loss(0.6, 0.9, 0.1, 0.5), loss(0.6, 0.1, 0.9, 0.5)
    assert right < wrong
    # the side channel is not trained away from the sites
    assert loss(0.6, 0.9, 0.1, 0.01) == pytest.approx(loss(0.6, 0.9, 0.1, 0.99))


def test_training_continues_from_an_exported_model(tmp_path: Path) -> None:
    """`training.init_from_model` loads every weight of an exported polarity model: with no
    training step the re-exported model predicts what the first one does; a model of another
    architecture is refused naming the option."""
    import onnxruntime as ort

    from synapse_toolkit.errors import ConfigError

    path = write_cremi(tmp_path / "s.hdf", make_cremi_data(shape=(8, 64, 64)))

    def config(run: str, iterations: int, **training: object) -> DetectorTrainConfig:
        return DetectorTrainConfig.model_validate({
            "kind": "polarity",
            "data": {"files": [str(path)]},
            "model": {"scale": 2, "pool": "space-to-depth", "init": "kaiming",
                      "padding": "same", "num_fmaps": training.pop("fmaps", 2),
                      "downsample_factors": [[1, 2, 2]]},
            "augment": {"elastic_sigma": 0.0, "margin": [0, 0, 0]},
            "training": {"iterations": iterations, "input_shape": [4, 32, 32],
                         "num_threads": 1, "out_dir": str(tmp_path / run), "loss": "bce-side",
                         "onnx": str(tmp_path / f"{run}.onnx"), "seed": 3, **training},
        })  # fmt: skip

    first = train_detector(config("a", 3), log=lambda _: None)
    again = train_detector(
        config("b", 0, init_from_model=first["path"], seed=9), log=lambda _: None
    )
    x = np.random.default_rng(1).random((1, 1, 4, 32, 32), dtype=np.float32)
    outs = []
    for p in (first["path"], again["path"]):
        sess = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
    assert np.abs(outs[0]).max() > 0
    with pytest.raises(ConfigError, match="training.init_from_model"):
        train_detector(config("c", 0, init_from_model=first["path"], fmaps=3), log=lambda _: None)


def test_training_config_takes_one_starting_point(tmp_path: Path) -> None:
    """Two ``init_*`` keys in one `[training]` section are refused by name (each would silently
    overwrite the other's weights); one is accepted."""
    from synapse_toolkit.config import load_training_config
    from synapse_toolkit.errors import ConfigError
    from synapse_toolkit.synapses.train_synful import SynfulTrainConfig

    for model, keys in (
        (DetectorTrainConfig, ("init_checkpoint", "init_from_model")),
        (SynfulTrainConfig, ("init_from_model", "init_trunk_from")),
    ):
        both = tmp_path / f"{model.__name__}.toml"
        both.write_text(
            'kind = "polarity"\n' * (model is DetectorTrainConfig)
            + "[data]\nphantom_seeds = [1]\n[training]\n"
            + "".join(f'{k} = "{k}.onnx"\n' for k in keys)
        )
        with pytest.raises(ConfigError, match=f"training.{keys[0]} and training.{keys[1]}") as e:
            load_training_config(both, model)
        assert str(e.value).startswith(f"{both}: training: give one starting point")
        assert "\n" not in str(e.value)
        both.write_text(both.read_text().rsplit("\n", 2)[0] + "\n")
        assert getattr(load_training_config(both, model).training, keys[0])


@pytest.mark.parametrize(("kind", "drop", "says"), [
    ("polarity", "annotations", "no annotations"),
    ("clefts", "clefts", "needs files with volumes/labels/clefts"),
])  # fmt: skip
def test_a_training_file_without_what_its_targets_need_is_named(
    tmp_path: Path, kind: str, drop: str, says: str
) -> None:
    import dataclasses

    from synapse_toolkit.errors import DataError

    data = dataclasses.replace(make_cremi_data(shape=(8, 64, 64)), **{drop: None})
    path = write_cremi(tmp_path / "lacking.hdf", data)
    cfg = DetectorTrainConfig.model_validate({
        "kind": kind, "data": {"files": [str(path)]},
        "model": {"scale": 2, "padding": "same", "num_fmaps": 2, "downsample_factors": [[1, 2, 2]]},
        "training": {"iterations": 1, "input_shape": [4, 32, 32], "out_dir": str(tmp_path / "r")},
    })  # fmt: skip
    with pytest.raises(DataError, match=f"lacking.hdf: .*{says}"):
        train_detector(cfg, log=lambda _: None)


def test_an_interrupted_run_resumes_exactly(tmp_path: Path) -> None:
    """3 iterations, then ``resume`` up to 6: the same weights as 6 iterations in one go (the
    optimizer, the crop sampler's random state and torch's are in latest.pt)."""
    from synapse_toolkit.nn.checkpoint import load_state

    path = write_cremi(tmp_path / "s.hdf", make_cremi_data(shape=(8, 64, 64)))

    def config(out: str, iterations: int) -> DetectorTrainConfig:
        return DetectorTrainConfig.model_validate({
            "kind": "polarity", "data": {"files": [str(path)]},
            "model": {"scale": 2, "pool": "space-to-depth", "init": "kaiming",
                      "padding": "same", "num_fmaps": 2, "downsample_factors": [[1, 2, 2]]},
            "augment": {"elastic_sigma": 1.0, "margin": [1, 2, 2]},
            "training": {"iterations": iterations, "input_shape": [4, 32, 32], "batch_size": 2,
                         "num_threads": 1, "checkpoint_every": 0, "log_every": 1,
                         "out_dir": str(tmp_path / out)},
        })  # fmt: skip

    train_detector(config("straight", 6), log=lambda _: None)
    train_detector(config("stopped", 3), log=lambda _: None)
    lines: list[str] = []
    train_detector(config("stopped", 6), log=lines.append, resume=True)
    assert any(line.startswith("resuming from") and "iteration 3" in line for line in lines)
    a = load_state(tmp_path / "straight" / "final.pt")["state_dict"]
    b = load_state(tmp_path / "stopped" / "final.pt")["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    fresh = load_state(tmp_path / "stopped" / "latest.pt")
    assert fresh["iteration"] == 6 and "resume" in fresh
    lines.clear()  # nothing to resume: starts anew
    train_detector(config("new", 1), log=lines.append, resume=True)
    assert any("to resume from: starting" in line for line in lines)
