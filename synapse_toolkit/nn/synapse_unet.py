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


class SpaceToDepth(nn.Module):
    """``(B, C, z, y, x) → (B, C·s², z, y/s, x/s)``: every s x s pixel block becomes channels.

    Lossless, unlike average pooling, which blurs away structures a few pixels wide (the membrane
    rings of 35-50 nm vesicles at 4 nm per pixel).
    """

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = int(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, z, y, w = x.shape
        s = self.scale
        x = x.reshape(b, c, z, y // s, s, w // s, s)
        x = x.permute(0, 1, 4, 6, 2, 3, 5)
        return x.reshape(b, c * s * s, z, y // s, w // s)


class ScaledUNet(nn.Module):
    """``downsample (1, s, s) → UNet3D (same padding) → trilinear upsampling (1, s, s)``.

    ``pool="avg"`` averages s x s pixels; ``pool="space-to-depth"`` keeps all of them as channels
    (the U-Net's ``in_channels`` must then be ``s * s``).
    """

    def __init__(self, config: UNetConfig, scale: int = 2, pool: str = "avg") -> None:
        super().__init__()
        if config.padding != "same":
            raise ValueError("ScaledUNet needs a U-Net with padding='same'")
        self.scale = int(scale)
        self.unet = UNet3D(config)
        if self.scale == 1:
            self.pool: nn.Module = nn.Identity()
        elif pool == "avg":
            self.pool = nn.AvgPool3d((1, self.scale, self.scale))
        elif pool == "space-to-depth":
            if config.in_channels != self.scale**2:
                raise ValueError(f"space-to-depth needs in_channels = {self.scale**2}")
            self.pool = SpaceToDepth(self.scale)
        else:
            raise ValueError(f"unknown pool {pool!r}: 'avg' or 'space-to-depth'")

    @property
    def config(self) -> UNetConfig:
        return self.unet.config

    @property
    def input_channels(self) -> int:
        """Channels of the full-resolution input (before space-to-depth)."""
        if isinstance(self.pool, SpaceToDepth):
            return self.config.in_channels // self.scale**2
        return self.config.in_channels

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

    def valid_input_shape(self, near: Sequence[int]) -> tuple[int, int, int]:
        """The smallest valid input shape ≥ ``near`` (per axis; y and x multiples of the scale)."""
        s = self.scale
        z, y, x = self.unet.valid_input_shape(
            (int(near[0]), -(-int(near[1]) // s), -(-int(near[2]) // s))
        )
        return (z, y * s, x * s)

    def output_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        if not self.is_valid_input_shape(shape):
            raise ValueError(f"input shape {tuple(shape)} is not valid for this network")
        return (int(shape[0]), int(shape[1]), int(shape[2]))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class _SignedHead(nn.Module):
    """Wraps a two-channel sigmoid network; subclasses combine the channels into one signed map."""

    def __init__(self, net: UNet3D | ScaledUNet) -> None:
        super().__init__()
        self.net = net

    @property
    def config(self) -> UNetConfig:
        return self.net.config

    @property
    def input_channels(self) -> int:
        return int(getattr(self.net, "input_channels", self.config.in_channels))

    def is_valid_input_shape(self, shape: Sequence[int]) -> bool:
        return self.net.is_valid_input_shape(shape)


class SignedDifference(_SignedHead):
    """Signed proximity from a two-channel sigmoid network: ``p_pre - p_post`` in [-1, 1].

    Training supervises the two channels with class-balanced BCE on the positive and negative
    parts of the signed-proximity target; the exported model returns the single signed channel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y[:, 0:1] - y[:, 1:2]


class VicinityTimesSide(_SignedHead):
    """Signed proximity from a (vicinity, side) sigmoid network: ``v * (2 * p_pre_side - 1)``.

    Channel 0 learns the unsigned proximity to any synaptic site; channel 1, trained only where
    that proximity is non-zero, the probability of being on the pre-synaptic side. Splitting
    "near a synapse?" from "which side?" gives the side question a balanced loss of its own, so
    the network cannot settle in the symmetric state where both sides look alike.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y[:, 0:1] * (2.0 * y[:, 1:2] - 1.0)


class SynfulHead(_SignedHead):
    """Synful's factorised edge classifier from a 7-channel linear network: channel 0 → sigmoid
    post-synaptic mask, 1-3 → vector to the pre-synaptic partner in nm (``vector_scale_nm`` per
    unit), 4-6 → unit direction to the partner (the direction head)."""

    def __init__(self, net: UNet3D | ScaledUNet, vector_scale_nm: float = 100.0) -> None:
        super().__init__(net)
        self.vector_scale_nm = float(vector_scale_nm)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mask logit, vector in units of ``vector_scale_nm``, unnormalised direction)."""
        y = self.net(x)
        return y[:, 0:1], y[:, 1:4], y[:, 4:7]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit, vec, d = self.parts(x)
        unit = d / torch.sqrt((d * d).sum(dim=1, keepdim=True) + 1e-12)
        return torch.cat([torch.sigmoid(logit), vec * self.vector_scale_nm, unit], dim=1)
