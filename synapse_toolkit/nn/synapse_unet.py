"""A U-Net that works at reduced in-plane resolution inside a full-resolution interface.

Synaptic structures (vesicles 35-50 nm, clefts ~20 nm wide, sites 100+ nm) are resolved at
8 nm in-plane, so the synapse detectors average-pool the 4 nm input by ``scale`` in y and x, run a
``same``-padded :class:`~synapse_toolkit.nn.unet.UNet3D` there and upsample the output back
(trilinear). The exported ONNX model therefore takes and returns full-resolution tiles, and costs
about ``scale**2`` times less than a full-resolution U-Net.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from synapse_toolkit.nn.unet import UNet3D, UNetConfig


class ScaledUNet(nn.Module):
    """``AvgPool(1, s, s) → UNet3D (same padding) → trilinear upsampling (1, s, s)``."""

    def __init__(self, config: UNetConfig, scale: int = 2) -> None:
        super().__init__()
        if config.padding != "same":
            raise ValueError("ScaledUNet needs a U-Net with padding='same'")
        self.scale = int(scale)
        self.unet = UNet3D(config)
        self.pool = nn.AvgPool3d((1, self.scale, self.scale)) if self.scale > 1 else nn.Identity()

    @property
    def config(self) -> UNetConfig:
        return self.unet.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1:
            return self.unet(x)
        y = self.unet.head(self._features(self.pool(x)))
        y = nn.functional.interpolate(
            y, scale_factor=(1.0, float(self.scale), float(self.scale)), mode="trilinear",
            align_corners=False,
        )  # fmt: skip
        return self.unet.activation(y)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        u = self.unet
        skips = []
        for conv, pool in zip(u.down, u.pools, strict=True):
            x = conv(x)
            skips.append(x)
            x = pool(x)
        x = u.bottom(x)
        for up, conv, skip in zip(u.ups, u.up_convs, reversed(skips), strict=True):
            x = up(x)
            x = torch.cat([skip, x], dim=1)
            x = conv(x)
        return x

    def is_valid_input_shape(self, shape: Sequence[int]) -> bool:
        s = [int(shape[0]), int(shape[1]), int(shape[2])]
        if s[1] % self.scale or s[2] % self.scale:
            return False
        return self.unet.is_valid_input_shape((s[0], s[1] // self.scale, s[2] // self.scale))

    def output_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        if not self.is_valid_input_shape(shape):
            raise ValueError(f"input shape {tuple(shape)} is not valid for this network")
        return (int(shape[0]), int(shape[1]), int(shape[2]))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class SignedDifference(nn.Module):
    """Signed proximity from a two-channel sigmoid network: ``p_pre - p_post`` in [-1, 1].

    Training supervises the two channels with class-balanced BCE on the positive and negative
    parts of the signed-proximity target (stronger gradients than MSE on a tanh output); the
    exported model returns the single signed channel.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    @property
    def config(self) -> UNetConfig:
        return self.net.config  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y[:, 0:1] - y[:, 1:2]

    def is_valid_input_shape(self, shape: Sequence[int]) -> bool:
        return bool(self.net.is_valid_input_shape(shape))  # type: ignore[operator]
