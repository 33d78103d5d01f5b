"""Intensity matching: exact quantiles, monotone grey-value changes undone, and the affinity
stage giving the same prediction for the same tissue under another contrast."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from synapse_toolkit.inference import intensity
from synapse_toolkit.inference.intensity import LEVELS, match, model_preprocess, quantiles


def _tissue(seed: int = 0, shape=(6, 24, 28)) -> np.ndarray:
    """Smooth uint8 'EM-like' grey values spanning most of the range."""
    x = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 1.5)
    x = (x - x.min()) / (x.max() - x.min())
    return np.round(20 + 220 * x).astype(np.uint8)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_quantiles_equal_numpy(dtype) -> None:
    x = (_tissue().astype(np.float64) * 37 - 3000).astype(dtype)
    ref = np.quantile(x.astype(np.float64), LEVELS)
    np.testing.assert_allclose(quantiles([x]), ref, rtol=0, atol=1e-6 * max(1, abs(ref).max()))
    pooled = quantiles([x[:3], x[3:]])  # several volumes pool their voxels
    np.testing.assert_allclose(pooled, ref, atol=1e-6 * max(1, abs(ref).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_large_volumes_are_sampled_by_blocks(monkeypatch, dtype) -> None:
    x = np.random.default_rng(1).normal(size=(40, 30, 30)) * 30 + 120
    x = np.clip(x, 0, 255).astype(dtype)
    monkeypatch.setattr(intensity, "BLOCK", (5, 30, 30))
    monkeypatch.setattr(intensity, "MAX_SAMPLE_VOXELS", 10 * 30 * 30)
    sampled = quantiles([x])
    every_fourth_block = np.concatenate([x[z : z + 5] for z in range(0, 40, 20)])
    expected = np.quantile(every_fourth_block.astype(np.float64), LEVELS)
    np.testing.assert_allclose(sampled, expected, atol=1e-4)
    assert np.abs(sampled[16:-16] - np.quantile(x, LEVELS[16:-16])).max() < 3  # grey levels


@pytest.mark.parametrize(
    "change",
    [
        lambda r: np.clip(128 + (r - 128) * 0.5, 0, 255).astype(np.uint8),  # low contrast
        lambda r: (255 * (r / 255) ** 1.6).astype(np.float32),  # gamma, float
        lambda r: (r * 200.0 + 1000).astype(np.uint16),  # 16-bit detector counts
    ],
)
def test_matching_undoes_monotone_grey_value_changes(change) -> None:
    reference = _tissue(0)
    other = _tissue(1)  # the same kind of tissue, another volume
    ref_q = quantiles([reference])
    changed = change(other.astype(np.float64))
    restored = match(changed, quantiles([changed]), ref_q)
    direct = match(other, quantiles([other]), ref_q)  # what the unchanged volume maps to
    assert np.abs(restored - direct).mean() < 1.0  # grey levels (quantisation only)
    assert np.abs(changed.astype(np.float64) - direct).mean() > 10  # without matching: far off


def test_constant_volume_and_identity() -> None:
    x = _tissue(2)
    np.testing.assert_allclose(match(x, quantiles([x]), quantiles([x])), x, atol=0.5)
    flat = np.full((2, 3, 4), 7, np.uint8)
    assert np.unique(match(flat, quantiles([flat]), quantiles([x]))).size == 1


def test_preprocess_without_reference_keeps_the_old_scaling() -> None:
    u8 = _tissue(3)
    np.testing.assert_allclose(model_preprocess({}, u8)(u8), u8 / 255.0, rtol=1e-6)
    f = u8.astype(np.float32) / 255
    np.testing.assert_allclose(model_preprocess({}, f)(f), f)
    np.testing.assert_allclose(model_preprocess({}, u8, intensity_scale=0.5)(u8), u8 * 0.5)
    ref = {"intensity_reference": {"quantiles": list(quantiles([u8])), "scale": 1 / 255}}
    plain = model_preprocess(ref, u8, match_intensity=False)(u8)
    np.testing.assert_allclose(plain, u8 / 255.0, rtol=1e-6)


def test_affinity_stage_sees_the_same_tissue_under_another_contrast(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    from syntk_neurons.stages import AffinityDetector

    from synapse_toolkit.data import Volume
    from synapse_toolkit.nn.export import sha256_of
    from synapse_toolkit.stages import StageContext
    from tests.test_tiled_inference import _tiny_onnx

    model = tmp_path / "tiny.onnx"
    _tiny_onnx(model)
    training = _tissue(0)
    proto = onnx.load(str(model))
    entry = proto.metadata_props.add()
    entry.key = "intensity_reference"
    entry.value = json.dumps({"quantiles": quantiles([training]).tolist(), "scale": 1 / 255})
    onnx.save(proto, str(model))
    model.with_suffix(".sha256").write_text(f"{sha256_of(model)}  tiny.onnx\n")
    raw = _tissue(1, (9, 23, 17))
    dim = (np.float64(raw) * 0.4 + 30).astype(np.uint8)  # another acquisition's contrast

    def affinities(volume: np.ndarray, name: str, match_intensity: bool = True) -> np.ndarray:
        opts = AffinityDetector.Options(
            model_path=model, overlap=(1, 2, 2), match_intensity=match_intensity
        )
        stage = AffinityDetector(opts, StageContext(name, tmp_path / name, block_shape=(4, 8, 8)))
        return stage.run({"raw": Volume(volume, (10, 4, 4))})["affinities"].read()

    original, dimmed = affinities(raw, "a"), affinities(dim, "b")
    unmatched = affinities(dim, "c", match_intensity=False)
    assert np.abs(dimmed - original).mean() < 0.01
    assert np.abs(unmatched - original).mean() > 5 * np.abs(dimmed - original).mean()


def test_a_grey_value_spanning_many_levels_maps_to_their_mean() -> None:
    """Half the voxels dark, half bright, matched onto a uniform reference: each grey value
    takes the mean of the reference quantiles it spans (0.25 and 0.75), so the mean is kept."""
    two = np.zeros((4, 10, 10), np.uint8)
    two[2:] = 255
    uniform = np.linspace(0, 1, 4001).astype(np.float32).reshape(1, 1, -1)
    out = match(two, quantiles([two]), quantiles([uniform]))
    np.testing.assert_allclose(np.unique(out), [0.25, 0.75], atol=0.01)


def test_16_bit_raw_reaches_the_networks_as_8_bit_raw_does() -> None:
    """A uint16 volume (the same image x 257) gives every model input the uint8 volume gives:
    without this the synapse and phantom models saw values up to 65535 and found nothing."""
    from synapse_toolkit.inference.intensity import unit_scale
    from synapse_toolkit.inference.tiled import _default_preprocess
    from synapse_toolkit.nn.augment import AugmentConfig, sample_augmented
    from synapse_toolkit.synapses.pruning import extract_patch

    assert unit_scale(np.uint8) == 1 / 255 and unit_scale(np.uint16) == 1 / 65535
    assert unit_scale(np.float32) == 1.0
    raw8 = np.random.default_rng(0).integers(0, 256, (6, 40, 40)).astype(np.uint8)
    raw16 = raw8.astype(np.uint16) * 257
    plain = AugmentConfig.from_table({
        "flip": False, "transpose_axes": [], "intensity_scale": 0.0, "intensity_shift": 0.0,
        "elastic_sigma": 0.0, "misalign_prob": 0.0, "missing_prob": 0.0, "margin": [0, 0, 0],
    })  # fmt: skip

    def matched(r: np.ndarray) -> np.ndarray:
        return model_preprocess({}, r)(r)

    def pruner_patch(r: np.ndarray) -> np.ndarray:
        prox, seg = np.zeros(r.shape, np.float32), np.ones(r.shape, np.uint64)
        return extract_patch(r, prox, seg, (3, 20, 20), 1, 2)[0]

    def crop(r: np.ndarray) -> np.ndarray:
        labels = np.zeros(r.shape, np.uint64)
        return sample_augmented(r, labels, (1, 5, 5), (4, 30, 30), plain, np.random.default_rng(1))[
            0
        ]

    same = [matched, _default_preprocess, pruner_patch, crop]
    for k, transform in enumerate(same):
        a, b = transform(raw8), transform(raw16)
        assert float(np.max(a)) > 0.5, k
        np.testing.assert_allclose(a, b, atol=1e-6, err_msg=str(k))


def test_raw_far_from_the_models_input_range_is_one_warning(caplog) -> None:
    import logging

    raw8 = np.random.default_rng(0).integers(0, 256, (6, 40, 40)).astype(np.uint8)
    cases = {
        "uint8": (raw8, False),
        "float in [0, 1]": (raw8.astype(np.float32) / 255, False),
        "float stored as 0-255": (raw8.astype(np.float32), True),
        "12-bit values in uint16": ((raw8.astype(np.uint16) * 16), True),
    }
    for name, (raw, warns) in cases.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="syntk"):
            model_preprocess({}, raw)
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == int(warns), (name, lines)
        if warns:
            assert "intensity_scale" in lines[0] and str(raw.dtype) in lines[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="syntk"):  # the user's own scale: no warning
        model_preprocess({}, raw8.astype(np.float32), intensity_scale=1 / 255)
    assert not caplog.records


def test_the_pruners_patches_take_an_intensity_scale() -> None:
    """12-bit values in uint16 with ``intensity_scale`` 1/4080 give the 8-bit patch (EMSynConn's
    ``intensity_scale`` option reaches the patches through PatchSettings)."""
    from synapse_toolkit.synapses.pruning import PatchSettings, extract_patch

    raw8 = np.random.default_rng(2).integers(0, 256, (6, 40, 40)).astype(np.uint8)
    raw12 = raw8.astype(np.uint16) * 16
    prox, seg = np.zeros(raw8.shape, np.float32), np.ones(raw8.shape, np.uint64)
    plain = PatchSettings(shape=(3, 20, 20), downsample=1)
    scaled = PatchSettings(shape=(3, 20, 20), downsample=1, intensity_scale=1 / 4080)
    want = extract_patch(raw8, prox, seg, (3, 20, 20), 1, 2, plain)
    np.testing.assert_allclose(extract_patch(raw12, prox, seg, (3, 20, 20), 1, 2, scaled), want,
                               atol=1e-6)  # fmt: skip
    assert extract_patch(raw12, prox, seg, (3, 20, 20), 1, 2, plain)[0].max() < 0.1
