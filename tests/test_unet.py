"""The configurable 3D U-Net: shapes, validity, padding modes, activations, a few training steps."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from synapse_toolkit.nn.unet import UNet3D, UNetConfig  # noqa: E402


@pytest.mark.parametrize(
    ("factors", "shape"),
    [
        (((1, 3, 3), (1, 3, 3)), (13, 58, 58)),
        (((2, 2, 2),), (20, 20, 20)),
        (((1, 2, 2), (2, 2, 2)), (24, 36, 36)),
    ],
)
def test_valid_output_shape_matches_forward(factors, shape) -> None:
    net = UNet3D(
        UNetConfig(num_fmaps=2, fmap_inc_factor=2, downsample_factors=factors, out_channels=3)
    )
    shape = net.valid_input_shape(shape)
    assert net.is_valid_input_shape(shape)
    out = net(torch.zeros(1, 1, *shape))
    assert tuple(out.shape) == (1, 3, *net.output_shape(shape))
    ctx = net.context(shape)
    assert all(c > 0 for c in ctx)


def test_invalid_input_shape_is_reported() -> None:
    net = UNet3D(num_fmaps=2, downsample_factors=((2, 2, 2),))
    assert not net.is_valid_input_shape((21, 21, 21))
    with pytest.raises(ValueError, match="not valid"):
        net.output_shape((21, 21, 21))


def test_same_padding_keeps_shape_and_activations() -> None:
    for act, lo, hi in [("sigmoid", 0, 1), ("tanh", -1, 1)]:
        net = UNet3D(
            num_fmaps=2,
            downsample_factors=((1, 2, 2), (2, 2, 2)),
            padding="same",
            output_activation=act,
            out_channels=2,
        )
        x = torch.randn(1, 1, 8, 16, 16)
        with torch.no_grad():
            y = net(x)
        assert y.shape == (1, 2, 8, 16, 16)
        assert lo <= float(y.min()) and float(y.max()) <= hi
    with pytest.raises(ValueError):
        UNetConfig(padding="reflect")


def test_valid_unet_is_translation_equivariant() -> None:
    """Output tiles of shifted inputs fit together exactly (the reason for valid shapes)."""
    torch.manual_seed(0)
    net = UNet3D(num_fmaps=2, fmap_inc_factor=2, downsample_factors=((1, 2, 2),)).eval()
    shape = net.valid_input_shape((9, 20, 20))
    out = net.output_shape(shape)
    big = torch.randn(1, 1, shape[0], shape[1] + out[1], shape[2])
    with torch.no_grad():
        whole = net(big)
        a = net(big[..., : shape[1], :])
        b = net(big[..., out[1] : out[1] + shape[1], :])
    np.testing.assert_allclose(torch.cat([a, b], dim=3).numpy(), whole.numpy(), atol=1e-5)


def test_config_round_trip() -> None:
    cfg = UNetConfig(num_fmaps=4, downsample_factors=((1, 3, 3),), padding="same")
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg


def test_leaky_activation_is_configurable_and_kept_in_the_config() -> None:
    """``activation = "leaky_relu"`` puts LeakyReLU in every conv pass, survives the config round
    trip (checkpoints, ONNX metadata); older configs without the key stay plain ReLU; a typo is
    an error naming the choices."""
    cfg = UNetConfig(num_fmaps=2, downsample_factors=((1, 2, 2),), activation="leaky_relu")
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    mods = [type(m).__name__ for m in UNet3D(cfg).modules()]
    assert "LeakyReLU" in mods and "ReLU" not in mods
    old = {k: v for k, v in cfg.to_dict().items() if k != "activation"}
    assert UNetConfig.from_dict(old).activation == "relu"
    with pytest.raises(ValueError, match="leaky_relu"):
        UNetConfig(activation="gelu")
