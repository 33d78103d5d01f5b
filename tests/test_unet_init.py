"""He initialisation keeps the coarse U-Net levels alive (the default shrinks them)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from synapse_toolkit.nn.unet import UNet3D, UNetConfig, kaiming_init  # noqa: E402


def _bottom_std(init: bool) -> float:
    torch.manual_seed(0)
    net = UNet3D(UNetConfig(in_channels=1, out_channels=1, num_fmaps=8, fmap_inc_factor=2,
                            downsample_factors=((1, 2, 2), (1, 2, 2), (2, 2, 2)),
                            padding="same"))  # fmt: skip
    if init:
        kaiming_init(net)
    seen = {}
    net.bottom.register_forward_hook(lambda m, i, o: seen.update(std=float(o.detach().std())))
    with torch.no_grad():
        net(torch.rand(1, 1, 8, 64, 64))
    return seen["std"]


def test_kaiming_init_keeps_bottom_activations() -> None:
    default, he = _bottom_std(False), _bottom_std(True)
    assert he > 10 * default
    assert 0.05 < he < 20


def test_unknown_init_is_a_config_error() -> None:
    from synapse_toolkit.errors import ConfigError
    from synapse_toolkit.nn.unet import apply_init

    net = UNet3D(UNetConfig(in_channels=1, out_channels=1, num_fmaps=2,
                            downsample_factors=((1, 2, 2),), padding="same"))  # fmt: skip
    with pytest.raises(ConfigError, match="model.init"):
        apply_init(net, "xavier")
