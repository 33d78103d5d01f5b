"""syntk adapt affinities (synapse_toolkit.nn.adapt): ONNX weights back into the U-Net, a short
adaptation run on an unlabelled volume, metadata of the written model, error lines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from synapse_toolkit.errors import SyntkError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny U-Net exported once for this module's tests, and its path."""
    tmp_path = tmp_path_factory.mktemp("adapt")
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from synapse_toolkit.nn.export import export_model, update_metadata
    from synapse_toolkit.nn.unet import UNet3D, UNetConfig

    cfg = UNetConfig.from_dict(
        {"out_channels": 3, "num_fmaps": 2, "fmap_inc_factor": 2, "downsample_factors": [[1, 2, 2]]}
    )
    torch.manual_seed(0)  # weights (so the boundary fraction below) independent of test order
    net = UNet3D(cfg)
    path = tmp_path / "tiny.onnx"
    meta = {
        "model_config": cfg.to_dict(),
        "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]],
        "iteration": 1,
    }
    export_model(net, (14, 28, 28), path, metadata=meta)
    agg = {"scoring": "mean", "threshold": 0.5, "chosen_on": "test data made up"}
    update_metadata(path, {"agglomeration": agg, "voxel_size_nm": [10.0, 10.0, 10.0]})
    return net, path


def test_onnx_weights_load_back(tiny) -> None:
    torch = pytest.importorskip("torch")
    from synapse_toolkit.nn.adapt import load_onnx_unet

    net, path = tiny
    back, meta = load_onnx_unet(path)
    x = torch.rand(1, 1, 14, 28, 28)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), back.eval()(x), atol=1e-6)
    assert meta["agglomeration"]["threshold"] == 0.5


def test_adapt_writes_model_with_provenance(tiny, tmp_path) -> None:
    h5py = pytest.importorskip("h5py")
    import shutil

    import onnx

    from synapse_toolkit.fsio import sha256_file
    from synapse_toolkit.inference.quality import QUALITY_KEY
    from synapse_toolkit.nn.adapt import THRESHOLD_RULE, adapt_affinities
    from synapse_toolkit.nn.export import update_metadata

    src = tmp_path / "source.onnx"  # the tiny model with a ridge reference in its quality entry
    shutil.copy(tiny[1], src)
    update_metadata(src, {QUALITY_KEY: {"band_factors": [0.8, 1.5],
                                        "ridges": {"threshold": 0.1, "recall": 0.9}}})  # fmt: skip
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "mine.h5", "w") as f:
        f["raw"] = (rng.random((20, 40, 40)) * 255).astype(np.uint8)
    out = tmp_path / "adapted.onnx"
    from synapse_toolkit.evaluation.fib import make_volume
    from tests.tiny_training import small_volume

    raw, lab = small_volume()  # small labelled selection data instead of the gala crops
    sel = make_volume(raw, lab, (10.0, 10.0, 10.0), name="small selection volume")
    res = adapt_affinities(
        str(src), f"{tmp_path / 'mine.h5'}:raw", out, iterations=2, num_threads=1,
        voxel_size_nm=(10.0, 10.0, 10.0), log=lambda _m: None, selection=sel, source_raw=raw,
    )  # fmt: skip
    assert res["iterations"] == 2 and out.is_file()
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    a = meta["adaptation"]
    assert a["source_sha256"] == sha256_file(src)
    assert a["target_sha256"] == sha256_file(tmp_path / "mine.h5")
    assert a["target"] == "mine.h5:raw" and a["minutes"] == 20.0
    agg = meta["agglomeration"]  # chosen without target labels (source validation crop)
    assert agg["scoring"] == "mean" and agg["rule"] == THRESHOLD_RULE
    assert agg["threshold"] == agg["candidates"][THRESHOLD_RULE]
    assert "no target labels" in agg["chosen_on"] and 0 < agg["threshold"] < 1
    q = meta[QUALITY_KEY]
    lo, hi = q["band_factors"]
    bf = q["boundary_fraction"]
    assert 0 <= bf <= 1 and lo < 1 < hi  # the band is stored as factors of the reference
    assert q["warn_below"] == pytest.approx(bf * lo, abs=1e-4)
    assert q["warn_above"] == pytest.approx(bf * hi, abs=1e-4)
    assert lo == 0.8 and hi == 1.5  # the source's band factors carried over
    # the source's ridge filter threshold, the adapted model's own recall on the selection data
    assert q["ridges"]["threshold"] == 0.1 and 0 <= q["ridges"]["recall"] <= 1
    assert q["ridges"]["ridge_fraction"] > 0
    assert 0 <= a["target_signals"]["boundary_fraction"] <= 1
    assert "intensity_reference" in meta
    assert (tmp_path / "adapted.sha256").read_text().split()[0] == sha256_file(out)


def test_target_filtered_slab_by_slab_as_inference_filters_it(tmp_path) -> None:
    h5py = pytest.importorskip("h5py")
    from scipy import ndimage

    from synapse_toolkit.inference import spectrum
    from synapse_toolkit.nn.adapt import filtered_target

    rng = np.random.default_rng(1)
    sharp = ndimage.gaussian_filter(rng.random((10, 64, 64)), (0, 1, 1))
    sharp = 128 + (sharp - sharp.mean()) * (70 / sharp.std())
    blurred = np.clip(ndimage.gaussian_filter(sharp, (0, 1.5, 1.5)), 0, 255).astype(np.uint8)
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f["stack"] = blurred
        f["stack"].attrs["resolution"] = (10, 10, 10)
    ref = {"radial_power": spectrum.radial_spectrum(sharp).tolist()}
    path, key = filtered_target(str(tmp_path / "t.h5"), "stack", ref, tmp_path, slab=3)
    k = spectrum.kernel(spectrum.gain(spectrum.radial_spectrum(blurred), ref["radial_power"]))
    want = spectrum.Filtered(blurred, k)[:]  # what inference quantile-matches
    with h5py.File(path, "r") as f:
        got = f[key][:]
        assert tuple(f[key].attrs["resolution"]) == (10, 10, 10)
    assert got.dtype == np.int16  # the filter's overshoot beyond 0..255 is kept, as inference
    assert got.min() < 0 or got.max() > 255
    np.testing.assert_array_equal(got, want)  # slabs of 3 sections = the whole volume at once
    assert np.abs(got.astype(float) - blurred).mean() > 0.5  # it did filter
    with h5py.File(tmp_path / "small.h5", "w") as f:
        f["stack"] = blurred[:, :20, :40]
    with pytest.raises(SyntkError, match=r"small.h5:stack \(10, 20, 40\).*at least 32 x 32"):
        filtered_target(str(tmp_path / "small.h5"), "stack", ref, tmp_path)


def test_adapt_errors(tiny, tmp_path) -> None:
    h5py = pytest.importorskip("h5py")
    from synapse_toolkit.nn.adapt import adapt_affinities

    _, src = tiny
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = np.zeros((4, 4, 4), np.uint8)
        f["b"] = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(SyntkError, match="name a dataset"):
        adapt_affinities(str(src), str(tmp_path / "two.h5"), tmp_path / "o.onnx")
    with pytest.raises(SyntkError, match="no dataset 'c'"):
        adapt_affinities(str(src), f"{tmp_path / 'two.h5'}:c", tmp_path / "o.onnx")
    with pytest.raises(SyntkError, match="file not found"):
        adapt_affinities(str(src), str(tmp_path / "none.h5"), tmp_path / "o.onnx")
    with pytest.raises(SyntkError, match="differs from the model's"):
        adapt_affinities(
            str(src), f"{tmp_path / 'two.h5'}:a", tmp_path / "o.onnx", voxel_size_nm=(4, 4, 40)
        )


def test_adapt_refuses_models_of_another_domain(tiny, tmp_path) -> None:
    """Adaptation trains on FIB-SEM labels (gala): an ssTEM or phantom model is refused before
    any training, by its registry entry, its metadata or an anisotropic voxel size."""
    import shutil

    from synapse_toolkit.nn.adapt import adapt_affinities, check_adaptable, onnx_metadata
    from synapse_toolkit.nn.export import update_metadata

    _, src = tiny
    check_adaptable(str(src), onnx_metadata(src))  # isotropic, no modality: accepted
    target = tmp_path / "none.h5"  # never read: the model is refused first
    for name in ("neurons/sstem_affinities", "neurons/phantom_affinities"):
        with pytest.raises(SyntkError, match=f"--model {name} is for (ssTEM|phantom) data"):
            adapt_affinities(name, str(target), tmp_path / "o.onnx")
    declared = tmp_path / "declared.onnx"
    shutil.copy(src, declared)
    update_metadata(declared, {"modality": "ssTEM"}, sidecar=False)
    with pytest.raises(SyntkError, match="is for ssTEM data"):
        check_adaptable(str(declared), onnx_metadata(declared))
    update_metadata(declared, {"modality": "FIB-SEM"}, sidecar=False)
    check_adaptable(str(declared), onnx_metadata(declared))
    aniso = tmp_path / "aniso.onnx"
    shutil.copy(src, aniso)
    update_metadata(aniso, {"voxel_size_nm": [40.0, 4.0, 4.0]}, sidecar=False)
    with pytest.raises(SyntkError, match=r"anisotropic \(\[40.0, 4.0, 4.0\] nm\)"):
        check_adaptable(str(aniso), onnx_metadata(aniso))


def test_adapt_model_file_is_checked_against_its_sidecar(tiny, tmp_path) -> None:
    """``--model FILE`` is verified as a stage's model is: a file that no longer matches its
    ``.sha256`` sidecar is refused before anything reads it."""
    import shutil

    from synapse_toolkit.fsio import sha256_file
    from synapse_toolkit.nn.adapt import resolve_model

    _, src = tiny
    model = tmp_path / "mine.onnx"
    shutil.copy(src, model)
    model.with_suffix(".sha256").write_text(f"{sha256_file(model)}  mine.onnx\n")
    assert resolve_model(str(model)) == model
    with model.open("ab") as f:
        f.write(b"tampered")
    with pytest.raises(SyntkError, match=r"--model .*mine.onnx does not match its sha256"):
        resolve_model(str(model))
    with pytest.raises(SyntkError, match="model file .*gone.onnx not found"):
        resolve_model(str(tmp_path / "gone.onnx"))


def test_training_continues_from_an_exported_model(tiny, tmp_path) -> None:
    pytest.importorskip("h5py")
    from synapse_toolkit.nn.training import load_config, train
    from tests.tiny_training import training_toml, write_small_volume

    _, src = tiny
    h5 = write_small_volume(tmp_path / "vol.h5")
    (tmp_path / "t.toml").write_text(training_toml(
        h5, tmp_path / "run",
        {"iterations": 2, "loss": "bce", "validate_every": 2, "validation_thresholds": [0.5],
         "num_threads": 1, "init_from": str(src)},
    ))  # fmt: skip
    lines: list[str] = []
    summary = train(load_config(tmp_path / "t.toml"), log=lines.append)
    assert summary["iterations"] == 3  # the exported model's iteration 1, then two more
    assert any(line.startswith("validation it 1 (start)") for line in lines)
    assert any(line.startswith("validation it 3:") for line in lines)
