"""Export: a briefly trained U-Net → ONNX (opset 20, embedded weights) equals torch within 1e-4;
the CLI exports checkpoints; the ONNX session helper picks a provider that really loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

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


def test_invalid_tile_shape_and_missing_model(tmp_path) -> None:
    from synapse_toolkit.errors import SyntkError

    net = _tiny_trained_net()
    with pytest.raises(SyntkError, match="not valid"):
        export_model(net, (15, 21, 21), tmp_path / "x.onnx")
    with pytest.raises(SyntkError, match="not found"):
        create_session(tmp_path / "nope.onnx")
    assert export_checkpoint  # imported API
