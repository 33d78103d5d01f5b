"""Scarce labels (``labelled_sections``): unknown sections get no loss, crops are drawn where the
labels are, validation scores only labelled voxels; unlabelled regions thinner than the input
are mirrored (semi_supervised volumes)."""

from __future__ import annotations

import numpy as np
import pytest

from synapse_toolkit.errors import ConfigError
from synapse_toolkit.nn.augment import AugmentConfig
from synapse_toolkit.nn.training import (
    UNKNOWN,
    CropSampler,
    TargetSpec,
    VolumeSpec,
    affinity_target,
    load_volume,
)
from tests.tiny_training import small_volume, training_toml


def _h5(tmp_path):
    h5py = pytest.importorskip("h5py")
    raw, lab = small_volume()
    with h5py.File(tmp_path / "vol.h5", "w") as f:
        f["raw"], f["gt"] = raw, lab
    return tmp_path / "vol.h5", raw, lab


def test_labelled_sections_mark_the_rest_unknown(tmp_path) -> None:
    h5, _raw, lab = _h5(tmp_path)
    spec = VolumeSpec(raw=str(h5), raw_dataset="raw", labels=str(h5), labels_dataset="gt",
                      roi=[[0, 12], [0, 40], [0, 30]], labelled_sections=[4, 5, 6])  # fmt: skip
    r, got = load_volume(spec)
    assert got.dtype == np.uint64 and r.shape == got.shape == (12, 40, 30)
    assert np.array_equal(got[4:7], lab[4:7, :, :30].astype(np.uint64))
    assert (got[:4] == UNKNOWN).all() and (got[7:] == UNKNOWN).all()
    with pytest.raises(ConfigError, match="labelled_sections"):
        load_volume(spec.model_copy(update={"labelled_sections": [12]}))


def test_no_loss_on_edges_touching_unknown_voxels() -> None:
    _, lab = small_volume()
    lab = lab.astype(np.uint64)
    full_t, full_m = affinity_target(lab, TargetSpec())
    lab[:4] = UNKNOWN
    lab[7:] = UNKNOWN
    t, m = affinity_target(lab, TargetSpec())
    assert m[:, :4].sum() == 0 and m[:, 7:].sum() == 0
    # z-edges (channel 0: voxel z with z-1): section 4's edge reaches the unknown section 3
    assert m[0, 4].sum() == 0 and m[0, 5:7].all()
    assert m[1:, 4:7].sum() == full_m[1:, 4:7].sum()
    assert np.array_equal(t[:, 5:7][m[:, 5:7] > 0], full_t[:, 5:7][m[:, 5:7] > 0])


def test_crops_always_overlap_the_labelled_sections() -> None:
    raw, lab = small_volume(shape=(40, 30, 30))
    lab = lab.astype(np.uint64)
    lab[:20] = UNKNOWN
    lab[23:] = UNKNOWN
    aug = AugmentConfig(flip=False, transpose_axes=(), elastic_sigma=0.0, margin=(0, 0, 0))
    s = CropSampler([(raw, lab)], (14, 20, 20), (6, 12, 12), aug, seed=0)
    for _ in range(30):
        _, crop = s.sample()
        out = crop[4:10, 4:16, 4:16]
        assert (out != UNKNOWN).any()
    # elastic warping keeps the unknown label exactly
    warped = CropSampler([(raw, lab)], (14, 20, 20), (6, 12, 12), AugmentConfig(), seed=0)
    for _ in range(10):
        _, crop = warped.sample()
        assert set(np.unique(crop)) <= set(np.unique(lab))
        assert (crop[4:10, 4:16, 4:16] != UNKNOWN).any()


def test_warped_labels_keep_every_uint64_id() -> None:
    from synapse_toolkit.nn.augment import sample_augmented

    rng = np.random.default_rng(0)
    lab = np.full((12, 24, 24), UNKNOWN, np.uint64)
    lab[:, :12] = 2**60 + 1  # above 2**53: float64 cannot hold it
    lab[:, 12:, :12] = 7
    raw = rng.integers(0, 255, lab.shape, dtype=np.uint8)
    aug = AugmentConfig(elastic_sigma=2.0, margin=(2, 4, 4), misalign_prob=1.0)
    for _ in range(5):
        _, crop = sample_augmented(raw, lab, (2, 4, 4), (8, 16, 16), aug, rng)
        assert set(np.unique(crop)) == {np.uint64(7), np.uint64(2**60 + 1), UNKNOWN}


def test_scarce_label_training_validates_on_labelled_voxels_only(tmp_path) -> None:
    pytest.importorskip("torch")
    from synapse_toolkit.nn.training import load_config, train

    h5, _, _ = _h5(tmp_path)
    (tmp_path / "t.toml").write_text(training_toml(
        h5, tmp_path / "run",
        {"iterations": 3, "loss": "bce+malis", "malis_start": 1, "validate_every": 3,
         "validation_thresholds": [0.5], "num_threads": 1},
        volume_keys="labelled_sections = [5, 6]",
    ))  # fmt: skip
    lines: list[str] = []
    summary = train(load_config(tmp_path / "t.toml"), log=lines.append)
    assert summary["iterations"] == 3 and np.isfinite(summary["best_cremi_score"])


def test_unlabelled_region_thinner_than_the_input_is_mirrored(tmp_path) -> None:
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("torch")
    from synapse_toolkit.nn.consistency import make_consistency
    from synapse_toolkit.nn.unet import UNet3D, UNetConfig

    thin = np.arange(6 * 40 * 40, dtype=np.uint32).reshape(6, 40, 40) % 251
    with h5py.File(tmp_path / "thin.h5", "w") as f:
        f["raw"] = thin.astype(np.uint8)
    net = UNet3D(UNetConfig.from_dict({"num_fmaps": 2, "downsample_factors": [[1, 2, 2]]}))
    section = {"volumes": [{"raw": str(tmp_path / "thin.h5"), "raw_dataset": "raw"}],
               "match_intensity": False}  # fmt: skip
    c = make_consistency(section, net, (14, 28, 28), (10, 12, 12), [], 0)
    assert c is not None
    x = c.sample()
    assert x.shape == (14, 28, 28)
    # the 6 real sections sit in the middle, mirrored (symmetric) on both sides
    z0 = (14 - 6) // 2
    assert np.array_equal(x[z0 + 5], x[z0 + 6]) and np.array_equal(x[z0], x[z0 - 1])
