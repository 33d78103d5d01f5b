"""The EMSynConn pruning network: a small 3D CNN that keeps or drops a synapse candidate.

Input ``(N, 4, z, y, x)``: EM, signed proximity, pre-segment mask, post-segment mask (see
:mod:`synapse_toolkit.synapses.pruning`). Three convolution blocks (anisotropic first block:
in-plane pooling only, as EM sections are 10x thicker than pixels), global average pooling and a
two-layer head give one logit per candidate (keep probability = sigmoid).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class PrunerConfig:
    in_channels: int = 4
    num_fmaps: int = 16
    dropout: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _block(cin: int, cout: int, kernel: tuple[int, int, int]) -> nn.Sequential:
    pad = (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)
    return nn.Sequential(
        nn.Conv3d(cin, cout, kernel, padding=pad),
        nn.BatchNorm3d(cout),
        nn.ReLU(),
        nn.Conv3d(cout, cout, kernel, padding=pad),
        nn.BatchNorm3d(cout),
        nn.ReLU(),
    )


class PrunerCNN(nn.Module):
    """conv(1,3,3)x2 → pool(1,2,2) → conv3x2 → pool(2,2,2) → conv3x2 → global avg → MLP → logit."""

    def __init__(self, config: PrunerConfig | None = None) -> None:
        super().__init__()
        cfg = config or PrunerConfig()
        self.config = cfg
        f = cfg.num_fmaps
        self.features = nn.Sequential(
            _block(cfg.in_channels, f, (1, 3, 3)),
            nn.MaxPool3d((1, 2, 2)),
            _block(f, 2 * f, (3, 3, 3)),
            nn.MaxPool3d((2, 2, 2)),
            _block(2 * f, 4 * f, (3, 3, 3)),
            nn.AdaptiveAvgPool3d(1),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(cfg.dropout),
            nn.Linear(4 * f, 2 * f),
            nn.ReLU(),
            nn.Linear(2 * f, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
