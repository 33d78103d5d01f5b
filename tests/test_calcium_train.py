"""syntk_calcium.train: scale and intensity augmentation, the validation band prediction, and the
refit mode (all labelled rows, per-evaluation checkpoints of the moving-average weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from syntk_calcium.preprocess import clip_standardise

from synapse_toolkit.phantom.calcium import generate_calcium
from tests.conftest import calcium_trainer_setup


@pytest.fixture(scope="module")
def sample():
    from syntk_calcium import train as tr

    ph = generate_calcium(seed=31, shape=(160, 150), n_cells=25, frames=30)
    mask = np.ones((160, 150), bool)
    mask[:, 140:] = False
    return tr.Sample(ph.movie.mean(axis=0).astype(np.float32), ph.regions, mask)


def test_crop_scale_one_is_the_plain_aligned_crop(sample) -> None:
    """At scale 1 the tile, targets and mask are the padded arrays' aligned windows."""
    from syntk_calcium import train as tr

    a = sample.crop(np.random.default_rng(4))
    rng = np.random.default_rng(4)
    h, w = sample.x.shape
    y0 = int(rng.integers(0, h - tr.TILE_IN + 1))
    x0 = int(rng.integers(0, w - tr.TILE_IN + 1))
    o = tr.TILE_IN - 2 * tr.CONTEXT
    c0y, c0x = y0 + tr.CONTEXT, x0 + tr.CONTEXT
    np.testing.assert_array_equal(a[0], sample.x[y0 : y0 + tr.TILE_IN, x0 : x0 + tr.TILE_IN])
    np.testing.assert_array_equal(a[1], sample.y[:, c0y : c0y + o, c0x : c0x + o])
    np.testing.assert_array_equal(a[2], sample.m[c0y : c0y + o, c0x : c0x + o])


@pytest.mark.parametrize("scale", [0.8, 1.2])
def test_crop_scaled_keeps_shapes_binary_targets_and_cell_size(sample, scale: float) -> None:
    """A zoomed crop has the tile shapes, binary targets and mask, and its ROI-mask fraction
    follows the window it came from (zoom keeps area fractions up to resampling error)."""
    from syntk_calcium import train as tr

    o = tr.TILE_IN - 2 * tr.CONTEXT
    fr_scaled, fr_plain = [], []
    for seed in range(12):
        x, y, m = sample.crop(np.random.default_rng(seed), scale)
        assert x.shape == (tr.TILE_IN, tr.TILE_IN) and y.shape == (2, o, o) and m.shape == (o, o)
        assert set(np.unique(y)) <= {0.0, 1.0} and set(np.unique(m)) <= {0.0, 1.0}
        assert np.isfinite(x).all()
        fr_scaled.append(y[0].mean())
        fr_plain.append(sample.crop(np.random.default_rng(seed))[1][0].mean())
    # phantom cells cover ~10-30 % of a window: the scaled crops stay in that range
    assert 0.3 * np.mean(fr_plain) < np.mean(fr_scaled) < 3.0 * np.mean(fr_plain)


def test_strong_augment_changes_intensity_only(sample) -> None:
    """Strong augmentation rotates/flips tile, targets and mask together and changes only the
    tile's intensities otherwise: the targets stay a rotation/flip of the input targets."""
    from syntk_calcium import train as tr

    x, y, m = sample.crop(np.random.default_rng(0))
    for seed in range(8):
        xa, ya, _ma = tr.augment(x, y, m, np.random.default_rng(seed), strong=True)
        assert xa.shape == x.shape and xa.dtype == np.float32 and np.isfinite(xa).all()
        variants = [np.rot90(y, k, axes=(1, 2)) for k in range(4)]
        variants += [v[:, :, ::-1] for v in variants]
        assert any(np.array_equal(ya, v) for v in variants)
        assert not np.allclose(xa, x)


def test_validation_band_equals_the_whole_image_prediction() -> None:
    """The real validation band is predicted on a crop on the same 4-px grid: inside the
    validation rows it equals the whole-image prediction."""
    torch = pytest.importorskip("torch")
    from syntk_calcium import train as tr
    from syntk_calcium.net import RoiNet

    torch.manual_seed(0)
    net = RoiNet(width=4).eval()
    image = clip_standardise(np.random.default_rng(2).gamma(2.0, 50.0, (150, 290)))
    rows = (62, 98)
    band = tr._val_map(net, "real", image, rows)
    full = tr.predict_full(net, image)
    r0, r1 = rows
    c0, c1 = tr.LABELLED_COLS
    np.testing.assert_allclose(band[:, r0:r1, c0:c1], full[:, r0:r1, c0:c1], atol=1e-5)


def test_refit_trains_on_all_labelled_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--refit uses every labelled row (the phantom field of view's 256 rows, not 200), drops
    the real validation set, and --keep-all writes one moving-average checkpoint per
    evaluation."""
    torch = pytest.importorskip("torch")
    from syntk_calcium import train as tr

    data, cache_phantom = calcium_trainer_setup(tmp_path, monkeypatch, frames=30)

    def run(out: Path, *extra: str) -> list[str]:
        cache_phantom(out)
        args = ["--data", str(data), "--out", str(out), "--iterations", "2", "--eval-every", "1",
                "--batch", "2", "--width", "4", "--seed", "5", "--device", "cpu",
                "--ema", "0.9", "--keep-all", "--strong-aug", "--scale", "0.2", *extra]  # fmt: skip
        tr.main(args)
        return (out / "train.log").read_text().splitlines()

    split = run(tmp_path / "split")
    refit = run(tmp_path / "refit", "--refit")
    assert "real train (200, 256)" in split[0] and "real train (256, 256)" in refit[0]
    assert all("(real nan," in line for line in refit if "validation combined" in line)
    assert not any("(real nan," in line for line in split if "validation combined" in line)
    for it in (1, 2):
        ckpt = torch.load(tmp_path / "refit" / f"it{it:05d}.pt", weights_only=True)
        assert ckpt["iteration"] == it
        assert "n_averaged" not in " ".join(ckpt["state_dict"])  # the averaged net itself
    # the refit's kept checkpoint is exported with the split run's region parameters
    pytest.importorskip("onnxscript")
    from synapse_toolkit.onnx_runtime import create_session, model_metadata

    chosen = {"threshold": 0.55, "core_threshold": 0.45, "min_size": 12}
    onnx_path = tmp_path / "refit.onnx"
    tr.main(["--data", str(data), "--out", str(tmp_path / "refit"), "--refit",
             "--export-checkpoint", str(tmp_path / "refit" / "it00002.pt"),
             "--export", str(onnx_path), "--region-params", json.dumps(chosen)])  # fmt: skip
    meta = model_metadata(create_session(onnx_path, num_threads=1))
    assert meta["region_params"] == chosen and meta["iteration"] == 2
    assert "refit" in meta["note"]
    assert onnx_path.with_suffix(".sha256").read_text().split()[1] == "refit.onnx"


def test_an_existing_export_is_refused_before_training(tmp_path: Path) -> None:
    """`--export` onto an existing file (e.g. the shipped model) without `--overwrite` stops at
    once with exit code 1, before any run folder is made, and leaves the file as it was."""
    import syntk_calcium.train as tr

    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"a model the user keeps")
    with pytest.raises(SystemExit) as stop:
        tr.main(["--out", str(tmp_path / "run"), "--export", str(mine)])
    assert stop.value.code == 1
    assert mine.read_bytes() == b"a model the user keeps" and not (tmp_path / "run").exists()
