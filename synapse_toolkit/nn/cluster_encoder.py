"""A small 3D convolutional autoencoder (optionally variational) for synapse patches.

The encoder maps a standardised patch (1, 1, z, y, x) to a ``latent``-dimensional code (the
mean for the VAE); it is what gets exported to ONNX and clustered. In-plane resolution halves at
each level, z is kept (serial sections are few and thick).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of the cluster encoder."""

    input_shape: tuple[int, int, int] = (5, 64, 64)
    channels: tuple[int, ...] = (8, 16, 32, 32)
    latent: int = 16
    variational: bool = False
    in_channels: int = 1


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, (3, 3, 3), stride=(1, 2, 2), padding=1),
        nn.GroupNorm(1, cout),
        nn.LeakyReLU(0.1),
        nn.Conv3d(cout, cout, (1, 3, 3), padding=(0, 1, 1)),
        nn.LeakyReLU(0.1),
    )


class ClusterEncoder(nn.Module):
    """Patch → code (mean code for the VAE); the exported network."""

    input_channels = 1

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        chans = (1, *config.channels)
        self.features = nn.Sequential(*[_block(a, b) for a, b in itertools.pairwise(chans)])
        z, y, x = config.input_shape
        f = 2 ** len(config.channels)
        if y % f or x % f:
            raise ValueError(f"patch y, x {y, x} must be divisible by {f}")
        self.feature_shape = (config.channels[-1], z, y // f, x // f)
        n = config.channels[-1] * z * (y // f) * (x // f)
        self.mu = nn.Linear(n, config.latent)
        self.logvar = nn.Linear(n, config.latent) if config.variational else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.features(x).flatten(1)
        return self.mu(h), (self.logvar(h) if self.logvar is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]


class ClusterAutoencoder(nn.Module):
    """Encoder + mirrored decoder; ``forward`` returns (reconstruction, mu, logvar)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.encoder = ClusterEncoder(config)
        c, z, y, x = self.encoder.feature_shape
        self.expand = nn.Linear(config.latent, c * z * y * x)
        chans = (*reversed(config.channels), 8)
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(chans):
            layers += [
                nn.Upsample(scale_factor=(1, 2, 2), mode="nearest"),
                nn.Conv3d(a, b, (3, 3, 3), padding=1),
                nn.LeakyReLU(0.1),
            ]
        layers.append(nn.Conv3d(chans[-1], 1, (1, 3, 3), padding=(0, 1, 1)))
        self.decoder = nn.Sequential(*layers)

    def forward(
        self, x: torch.Tensor, sample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        mu, logvar = self.encoder.encode(x)
        code = mu
        if logvar is not None and sample and self.training:
            code = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        h = self.expand(code).view(-1, *self.encoder.feature_shape)
        return self.decoder(h), mu, logvar
