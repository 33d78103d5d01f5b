"""Export: a briefly trained U-Net → ONNX (opset 20, embedded weights) equals torch within 1e-4;
the CLI exports checkpoints; the ONNX session helper picks a provider that really loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from synapse_toolkit.errors import SyntkError  # noqa: E402
from synapse_toolkit.nn.export import export_checkpoint, export_model  # noqa: E402
from synapse_toolkit.nn.unet import UNet3D, UNetConfig  # noqa: E402
from synapse_toolkit.onnx_runtime import create_session, model_metadata, predictor, uses_cuda  # noqa: E402


def _tiny_trained_net(activation: str = "relu") -> UNet3D:
    torch.manual_seed(0)
    net = UNet3D(
        UNetConfig(
            num_fmaps=3, fmap_inc_factor=2, downsample_factors=((1, 2, 2),), activation=activation
        )
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.rand(1, 1, 14, 20, 20)
    y = (torch.rand(1, 3, *net.output_shape((14, 20, 20))) > 0.5).float()
    for _ in range(3):
        loss = torch.nn.functional.binary_cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_export_matches_torch(tmp_path, activation: str) -> None:
    net = _tiny_trained_net(activation)
    out = tmp_path / "m.onnx"
    report = export_model(net, (14, 20, 20), out, metadata={"offsets": [[-1, 0, 0]]})
    assert report["max_abs_diff"] < 1e-4 and report["opset"] == 20
    assert not list(tmp_path.glob("*.data")), "weights must be embedded (external_data=False)"
    session = create_session(out)
    assert not uses_cuda(session)  # no GPU on the test machine: CPU fallback, no crash
    meta = model_metadata(session)
    assert meta["input_shape"] == [14, 20, 20] and meta["offsets"] == [[-1, 0, 0]]
    x = np.random.default_rng(3).random((1, 1, 14, 20, 20), dtype=np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predictor(session)(x), ref, atol=1e-4)


def test_cli_exports_a_checkpoint(tmp_path) -> None:
    from typer.testing import CliRunner

    from synapse_toolkit.cli.main import app

    net = _tiny_trained_net()
    ckpt = tmp_path / "c.pt"
    torch.save(
        {
            "model_config": net.config.to_dict(),
            "state_dict": net.state_dict(),
            "input_shape": [14, 20, 20],
            "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]],
        },
        ckpt,
    )
    result = CliRunner().invoke(app, ["export", "onnx", str(ckpt), str(tmp_path / "o.onnx")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["max_abs_diff"] < 1e-4 and (tmp_path / "o.onnx").exists()
    bad = CliRunner().invoke(app, ["export", "onnx", str(tmp_path / "missing.pt"), "x.onnx"])
    assert bad.exit_code == 1 and "checkpoint not found" in bad.stderr


def test_export_stores_the_training_volumes_intensity_reference(tmp_path, monkeypatch) -> None:
    """The checkpoint's training config names the training volumes (paths from the working
    directory, as in training); their ROI's grey-value quantiles go into the ONNX metadata."""
    import h5py

    from synapse_toolkit.inference.intensity import LEVELS

    monkeypatch.chdir(tmp_path)
    raw = np.random.default_rng(4).integers(30, 220, (8, 16, 16)).astype(np.uint8)
    raw[:, :, 8:] //= 2  # outside the ROI: darker, must not count
    with h5py.File("train.h5", "w") as f:
        f["raw"] = raw
    net = _tiny_trained_net()
    volume = {"raw": "train.h5", "raw_dataset": "raw", "roi": [[0, 8], [0, 16], [0, 8]]}
    ckpt = {
        "model_config": net.config.to_dict(),
        "state_dict": net.state_dict(),
        "input_shape": [14, 20, 20],
        "train_config": {"data": {"volumes": [volume]}},
    }
    torch.save(ckpt, "c.pt")
    export_checkpoint("c.pt", "m.onnx")
    ref = model_metadata(create_session(tmp_path / "m.onnx"))["intensity_reference"]
    expected = np.quantile(raw[:, :, :8].astype(np.float64), LEVELS)
    np.testing.assert_allclose(ref["quantiles"], expected, atol=1e-6)
    assert ref["scale"] == pytest.approx(1 / 255) and ref["volumes"] == ["train.h5"]
    export_checkpoint("c.pt", "plain.onnx", intensity_reference=False)
    assert "intensity_reference" not in model_metadata(create_session(tmp_path / "plain.onnx"))
    volume["raw"] = "moved.h5"
    torch.save(ckpt, "c.pt")
    with pytest.raises(SyntkError, match="moved.h5: file not found"):
        export_checkpoint("c.pt", "m2.onnx")


def test_invalid_tile_shape_and_missing_model(tmp_path) -> None:
    net = _tiny_trained_net()
    with pytest.raises(SyntkError, match="not valid"):
        export_model(net, (15, 21, 21), tmp_path / "x.onnx")
    with pytest.raises(SyntkError, match="not found"):
        create_session(tmp_path / "nope.onnx")
    assert export_checkpoint  # imported API
