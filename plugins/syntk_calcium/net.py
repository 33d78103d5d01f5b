"""The ROI detector network (torch; training and export only, never imported at inference).

A fully convolutional 2D U-Net with *valid* convolutions: an input tile of ``n`` pixels gives an
output tile of ``n - 40`` pixels (20 px of context on each side), the fully convolutional form
of the seed's "40x40 window -> central 20x20 pixels" design. Input size must be a multiple of 4.
Two output channels (logits): ROI mask and ROI core (a disc around each ROI's centre). ELU
activations, orthogonal initialisation, as the seed. Tensors are ``(N, C, 1, H, W)`` so the
exported model plugs into :func:`synapse_toolkit.inference.tiled.predict_tiled` (z = 1).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

CONTEXT = 20  # px lost on each side


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3), nn.BatchNorm2d(cout), nn.ELU(),
        nn.Conv2d(cout, cout, 3), nn.BatchNorm2d(cout), nn.ELU(),
    )  # fmt: skip


def _crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    dy = (x.shape[-2] - size[0]) // 2
    dx = (x.shape[-1] - size[1]) // 2
    return x[..., dy : dy + size[0], dx : dx + size[1]]


class RoiNet(nn.Module):
    """Valid-convolution 2D U-Net, 3 levels, ``width`` filters at full resolution."""

    def __init__(self, in_channels: int = 1, width: int = 16, out_channels: int = 2) -> None:
        super().__init__()
        self.input_channels = in_channels
        self.hparams = {"in_channels": in_channels, "width": width, "out_channels": out_channels}
        self.config = SimpleNamespace(**self.hparams)  # what synapse_toolkit.nn.export reads
        w = width
        self.down0 = _block(in_channels, w)
        self.down1 = _block(w, 2 * w)
        self.bottom = _block(2 * w, 4 * w)
        self.up1 = _block(4 * w + 2 * w, 2 * w)
        self.up0 = _block(2 * w + w, w)
        self.head = nn.Conv2d(w, out_channels, 1)
        self.pool = nn.MaxPool2d(2)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.orthogonal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @staticmethod
    def output_size(n: int) -> int:
        return n - 2 * CONTEXT

    @staticmethod
    def is_valid_input_shape(shape: tuple[int, ...]) -> bool:
        return all(s % 4 == 0 and s > 2 * CONTEXT + 4 for s in shape[-2:]) and (
            len(shape) == 2 or shape[0] == 1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, 0]
        a = self.down0(x)
        b = self.down1(self.pool(a))
        c = self.bottom(self.pool(b))
        u = self.upsample(c)
        d = self.up1(torch.cat([_crop(b, (u.shape[-2], u.shape[-1])), u], dim=1))
        u = self.upsample(d)
        e = self.up0(torch.cat([_crop(a, (u.shape[-2], u.shape[-1])), u], dim=1))
        return self.head(e)[:, :, None]


def build(config: dict[str, Any]) -> RoiNet:
    return RoiNet(**config)
