"""Spectral matching: radial spectra, the matching filter, and the preprocessing that uses it
(a blurred copy of the same tissue is brought back towards the sharp one)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from synapse_toolkit.inference import spectrum
from synapse_toolkit.inference.intensity import model_preprocess, quantiles


def _membranes(seed: int = 0, shape=(8, 96, 96)) -> np.ndarray:
    """uint8 sections with thin dark 'membranes' (cell borders of random seeds) on grey cells."""
    rng = np.random.default_rng(seed)
    out = np.empty(shape, np.uint8)
    for z in range(shape[0]):
        seeds = np.zeros(shape[1:], np.int32)
        pts = rng.integers(0, shape[1], size=(40, 2))
        seeds[pts[:, 0], pts[:, 1]] = np.arange(1, 41)
        _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
        cells = seeds[iy, ix]
        border = ndimage.morphological_gradient(cells, size=2) > 0
        img = 170 + rng.normal(0, 8, shape[1:]) - 110 * border
        out[z] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def test_radial_spectrum_is_normalised_and_sees_blur() -> None:
    sharp = _membranes(0)
    blurred = ndimage.gaussian_filter(sharp.astype(np.float32), (0, 2, 2))
    s, b = spectrum.radial_spectrum(sharp), spectrum.radial_spectrum(blurred)
    assert s.shape == (spectrum.WINDOW // 2 + 1,)
    assert s[0] == 0 and abs(s.sum() - 1) < 1e-9 and abs(b.sum() - 1) < 1e-9
    high = slice(spectrum.WINDOW // 4, None)
    assert b[high].sum() < 0.2 * s[high].sum()  # blur removes high frequencies
    # the shape only: a contrast change does not change it
    np.testing.assert_allclose(spectrum.radial_spectrum(sharp * 0.3 + 50), s, rtol=1e-6)


def test_gain_is_clipped_and_keeps_the_mean() -> None:
    ref = np.array([0.0, 0.5, 0.3, 0.2])
    src = np.array([0.0, 0.5, 0.3 / 4, 0.2 * 100])
    g = spectrum.gain(src, ref)
    assert g[0] == 1 and g[1] == pytest.approx(1) and g[2] == pytest.approx(2)
    assert g[3] == pytest.approx(spectrum.GAIN_RANGE[0])
    with pytest.raises(ValueError, match="different lengths"):
        spectrum.gain(src, ref[:3])


def test_unit_gain_filter_is_the_identity_and_kernels_keep_the_mean() -> None:
    x = _membranes(1).astype(np.float32)
    k = spectrum.kernel(np.ones(spectrum.WINDOW // 2 + 1))
    assert k.shape == (spectrum.KERNEL_SIZE,) * 2
    np.testing.assert_allclose(spectrum.apply(x, k), x, atol=1e-3)
    boost = spectrum.kernel(np.linspace(1, 3, spectrum.WINDOW // 2 + 1))
    assert boost.sum() == pytest.approx(1, abs=1e-5)
    assert spectrum.apply(x[0], boost).shape == x[0].shape


@pytest.mark.parametrize("shape", [(3, 40, 57), (2, 7, 4), (40, 57)])
def test_fft_filter_equals_direct_convolution(shape) -> None:
    x = (np.random.default_rng(6).random(shape) * 255).astype(np.float32)
    k = spectrum.kernel(np.linspace(0.5, 2.5, spectrum.WINDOW // 2 + 1))
    if len(shape) == 2:
        want = ndimage.convolve(x, k, mode="reflect")
    else:
        want = np.stack([ndimage.convolve(s, k, mode="reflect") for s in x])
    np.testing.assert_allclose(spectrum.apply(x, k), want, atol=2e-3)


def test_matching_brings_a_blurred_copy_back_towards_the_sharp_spectrum() -> None:
    sharp = _membranes(2)
    ref = spectrum.radial_spectrum(sharp)
    blurred = ndimage.gaussian_filter(sharp.astype(np.float32), (0, 1.2, 1.2))
    k = spectrum.kernel(spectrum.gain(spectrum.radial_spectrum(blurred), ref))
    restored = spectrum.apply(blurred, k)

    def distance(v: np.ndarray) -> float:
        s = spectrum.radial_spectrum(v)
        return float(np.abs(np.log(s[1:]) - np.log(ref[1:])).mean())

    assert distance(restored) < 0.75 * distance(blurred)  # gains are clipped at 3
    # and in grey values, closer to the sharp tissue than the blurred copy was
    assert np.abs(restored - sharp).mean() < np.abs(blurred - sharp).mean()


def test_filtered_view_is_integer_for_integer_volumes() -> None:
    v = _membranes(3)
    k = spectrum.kernel(np.full(spectrum.WINDOW // 2 + 1, 1.5))
    view = spectrum.Filtered(v, k)
    assert view.dtype == np.int16 and view.shape == v.shape
    np.testing.assert_array_equal(view[2:4], np.rint(spectrum.apply(v[2:4], k)).astype(np.int16))
    q = quantiles([view])  # exact histogram path
    assert q[0] <= q[-1]
    # 16-bit grey values: float32, not clipped to int16 (bright uint16 data overshoots it)
    bright = (v.astype(np.uint16) * 250).astype(np.uint16)
    view16 = spectrum.Filtered(bright, k)
    assert view16.dtype == np.float32
    np.testing.assert_allclose(view16[2:4], spectrum.apply(bright[2:4], k), rtol=1e-6)
    assert view16[:].max() > 40000


def test_preprocess_uses_the_spectrum_reference() -> None:
    sharp = _membranes(4)
    blurred = np.clip(ndimage.gaussian_filter(sharp.astype(np.float32), (0, 1.2, 1.2)), 0, 255)
    blurred = blurred.astype(np.uint8)
    meta = {
        "intensity_reference": {"quantiles": list(quantiles([sharp])), "scale": 1 / 255},
        "spectrum_reference": {"radial_power": list(spectrum.radial_spectrum(sharp))},
    }
    on = model_preprocess(meta, blurred)(blurred)
    off = model_preprocess(meta, blurred, match_spectrum=False)(blurred)
    target = sharp / 255.0
    assert np.abs(on - target).mean() < 0.9 * np.abs(off - target).mean()
    # without an intensity reference the uint8 scaling is kept
    only = {"spectrum_reference": meta["spectrum_reference"]}
    plain = model_preprocess(only, sharp)(sharp)
    assert 0.5 < plain.mean() / (sharp.mean() / 255.0) < 1.5


def test_affinity_stage_undoes_blur_with_a_spectrum_reference(tmp_path) -> None:
    """The same tissue blurred: with the model's spectrum reference the stage's affinities come
    closer to those of the sharp tissue than with ``match_spectrum = false``."""
    onnx = pytest.importorskip("onnx")
    import json

    from syntk_neurons.stages import AffinityDetector

    from synapse_toolkit.data import Volume
    from synapse_toolkit.nn.export import sha256_of
    from synapse_toolkit.stages import StageContext
    from tests.test_tiled_inference import _tiny_onnx

    model = tmp_path / "tiny.onnx"
    _tiny_onnx(model)
    sharp = _membranes(5, (6, 64, 64))
    proto = onnx.load(str(model))
    for key, value in {
        "intensity_reference": {"quantiles": quantiles([sharp]).tolist(), "scale": 1 / 255},
        "spectrum_reference": {"radial_power": spectrum.radial_spectrum(sharp).tolist()},
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(proto, str(model))
    model.with_suffix(".sha256").write_text(f"{sha256_of(model)}  tiny.onnx\n")
    blurred = ndimage.gaussian_filter(sharp.astype(np.float32), (0, 1.2, 1.2))
    blurred = np.clip(np.rint(blurred), 0, 255).astype(np.uint8)

    def affinities(volume: np.ndarray, name: str, match_spectrum: bool = True) -> np.ndarray:
        opts = AffinityDetector.Options(
            model_path=model, overlap=(1, 2, 2), match_spectrum=match_spectrum
        )
        stage = AffinityDetector(opts, StageContext(name, tmp_path / name, block_shape=(4, 16, 16)))
        return stage.run({"raw": Volume(volume, (10, 4, 4))})["affinities"].read()

    original = affinities(sharp, "a")
    matched, unmatched = affinities(blurred, "b"), affinities(blurred, "c", match_spectrum=False)
    assert np.abs(matched - original).mean() < 0.9 * np.abs(unmatched - original).mean()


def test_a_volume_too_small_for_the_spectrum_is_one_clear_error() -> None:
    """Sections narrower than the spectrum window: the preprocessing names the shape and the
    option that skips the matching (it raised a bare ValueError from deep inside)."""
    from synapse_toolkit.errors import DataError

    meta = {"spectrum_reference": {"radial_power": list(spectrum.radial_spectrum(_membranes()))}}
    small = _membranes(1, (6, 24, 40))
    with pytest.raises(DataError, match=r"raw \(6, 24, 40\).*32 x 32 px.*match_spectrum = false"):
        model_preprocess(meta, small)
    model_preprocess(meta, small, match_spectrum=False)  # skipping it works
    assert spectrum.too_small((6, 32, 32)) is None and spectrum.too_small((32, 32)) is not None
