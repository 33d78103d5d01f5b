"""A small 3D convolutional autoencoder (optionally variational) for synapse patches.

The encoder maps a standardised patch (1, C, z, y, x) to a ``latent``-dimensional code (the
mean for the VAE); it is what gets exported to ONNX and clustered. In-plane resolution halves at
each level, z is kept (serial sections are few and thick).

With ``contact_pool`` the input has two channels, the contact-aligned patch and its contact-row
mask (:func:`synapse_toolkit.synapses.patches.contact_patches`): features are averaged over the
sections and rows of the contact (weighted by the mask) before the code, so the code describes
what lies at each distance from the cleft — the same for every row of a straightened contact —
and not where along the contact vesicles or noise happen to be. Its decoder can then only
redraw the contact's mean cross-section, broadcast along the rows.

The ``profile`` architecture pools first: the standardised patch is averaged over the sections
and rows of its contact (weighted by the mask) into one cross-section (a profile across the
cleft, pre-synaptic side first), which is normalised per synapse (``profile_norm``: zero mean
and unit spread, or relative to the synapse's own cytoplasm at the profile's ends), and a small
1D convolutional network encodes that profile. Averaging the raw intensities over the whole
contact before any nonlinearity removes most pixel noise, so what the code sees is the band
structure (membranes, cleft width, the post-synaptic density's thickness).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of the cluster encoder."""

    input_shape: tuple[int, int, int] = (5, 64, 64)
    channels: tuple[int, ...] = (8, 16, 32, 32)
    latent: int = 16
    variational: bool = False
    in_channels: int = 1
    contact_pool: bool = False
    arch: str = "conv3d"  # or "profile" (pool over the contact first, then a 1D network)
    profile_norm: str = "std"  # profile: "std" (zero mean, unit spread) or "cytoplasm"
    profile_columns: tuple[int, int] | None = None  # profile: keep columns [start, stop)


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

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if config.contact_pool and config.in_channels != 2:
            raise ValueError("contact_pool needs 2 input channels (patch, contact mask)")
        self.config = config
        self.input_channels = config.in_channels
        chans = (1 if config.contact_pool else config.in_channels, *config.channels)
        self.features = nn.Sequential(*[_block(a, b) for a, b in itertools.pairwise(chans)])
        z, y, x = config.input_shape
        self.factor = f = 2 ** len(config.channels)
        if y % f or x % f:
            raise ValueError(f"patch y, x {y, x} must be divisible by {f}")
        self.feature_shape = (config.channels[-1], z, y // f, x // f)
        if config.contact_pool:
            n = config.channels[-1] * (x // f)
        else:
            n = config.channels[-1] * z * (y // f) * (x // f)
        self.mu = nn.Linear(n, config.latent)
        self.logvar = nn.Linear(n, config.latent) if config.variational else None

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Features flattened (plain), or averaged over the contact's sections and rows."""
        if not self.config.contact_pool:
            return self.features(x).flatten(1)
        h = self.features(x[:, :1])
        f = self.factor
        w = F.avg_pool3d(x[:, 1:2], (1, f, f)) + 1e-3  # no contact found: plain mean
        return ((h * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3))).flatten(1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.pooled(x)
        return self.mu(h), (self.logvar(h) if self.logvar is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]


def _code(mu: torch.Tensor, logvar: torch.Tensor | None, sample: bool) -> torch.Tensor:
    """The code a decoder reads: ``mu``, or a reparameterised sample when variational."""
    if logvar is None or not sample:
        return mu
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


class ClusterAutoencoder(nn.Module):
    """Encoder + mirrored decoder; ``forward`` returns (reconstruction, mu, logvar). The
    reconstruction has one channel (the patch)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.encoder = ClusterEncoder(config)
        c, z, y, x = self.encoder.feature_shape
        self.contact_pool = config.contact_pool
        self.expand = nn.Linear(config.latent, c * x if config.contact_pool else c * z * y * x)
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
        code = _code(mu, logvar, sample and self.training)
        shape = self.encoder.feature_shape
        if self.contact_pool:
            c, z, y, xx = shape
            h = self.expand(code).view(-1, c, 1, 1, xx).expand(-1, c, z, y, xx)
        else:
            h = self.expand(code).view(-1, *shape)
        return self.decoder(h), mu, logvar


def contact_profile(
    x: torch.Tensor, norm: str = "std", columns: tuple[int, int] | None = None
) -> torch.Tensor:
    """(N, 2, z, y, x) patch + contact mask → (N, 1, x) mean cross-section over the contact
    (plain mean where no contact was found), normalised per synapse.

    ``norm = "std"``: zero mean, unit standard deviation. ``"cytoplasm"``: 0 at the mean of the
    outer eighth of columns on both sides (cytoplasm), -1 at the profile's darkest point, so
    band widths do not depend on how dark a synapse's membranes and density are drawn.
    ``columns`` keeps columns [start, stop) of the profile (before normalising)."""
    w = x[:, 1:2] + 1e-3
    p = (x[:, :1] * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3))
    if columns is not None:
        p = p[..., columns[0] : columns[1]]
    if norm == "std":
        m = p.mean(dim=-1, keepdim=True)
        sd = torch.sqrt(((p - m) ** 2).mean(dim=-1, keepdim=True))
        return (p - m) / (sd + 1e-3)
    if norm == "cytoplasm":
        e = max(1, p.shape[-1] // 8)
        base = 0.5 * (
            p[..., :e].mean(dim=-1, keepdim=True) + p[..., -e:].mean(dim=-1, keepdim=True)
        )
        low = p.amin(dim=-1, keepdim=True)
        return (p - base) / (base - low).clamp_min(1e-3)
    raise ValueError(f"profile_norm must be 'std' or 'cytoplasm', not {norm!r}")


def _block1d(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(cin, cout, 5, stride=2, padding=2),
        nn.GroupNorm(1, cout),
        nn.LeakyReLU(0.1),
        nn.Conv1d(cout, cout, 3, padding=1),
        nn.LeakyReLU(0.1),
    )


class ProfileEncoder(nn.Module):
    """Contact patch (N, 2, z, y, x) → mean cross-section → 1D conv → code (mean code for the
    VAE). Same interface as :class:`ClusterEncoder`."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if config.in_channels != 2:
            raise ValueError("the profile encoder needs 2 input channels (patch, contact mask)")
        self.config = config
        self.input_channels = 2
        chans = (1, *config.channels)
        self.features = nn.Sequential(*[_block1d(a, b) for a, b in itertools.pairwise(chans)])
        x = config.input_shape[2]
        if config.profile_columns is not None:
            a, b = config.profile_columns
            if not 0 <= a < b <= x:
                raise ValueError(f"profile_columns {config.profile_columns} outside 0..{x}")
            x = b - a
        self.factor = f = 2 ** len(config.channels)
        if x % f:
            raise ValueError(f"profile length {x} must be divisible by {f}")
        self.feature_shape = (config.channels[-1], x // f)
        n = config.channels[-1] * (x // f)
        self.mu = nn.Linear(n, config.latent)
        self.logvar = nn.Linear(n, config.latent) if config.variational else None

    def profile(self, x: torch.Tensor) -> torch.Tensor:
        return contact_profile(x, self.config.profile_norm, self.config.profile_columns)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.features(self.profile(x)).flatten(1)
        return self.mu(h), (self.logvar(h) if self.logvar is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]


class ProfileAutoencoder(nn.Module):
    """Profile encoder + 1D decoder; ``forward`` returns (reconstructed profile (N, 1, x), mu,
    logvar). The target is :meth:`target` of the clean patch."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.encoder = ProfileEncoder(config)
        c, xx = self.encoder.feature_shape
        self.expand = nn.Linear(config.latent, c * xx)
        chans = (*reversed(config.channels), 8)
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(chans):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv1d(a, b, 5, padding=2),
                nn.LeakyReLU(0.1),
            ]
        layers.append(nn.Conv1d(chans[-1], 1, 3, padding=1))
        self.decoder = nn.Sequential(*layers)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.profile(x)

    def forward(
        self, x: torch.Tensor, sample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        mu, logvar = self.encoder.encode(x)
        code = _code(mu, logvar, sample and self.training)
        h = self.expand(code).view(-1, *self.encoder.feature_shape)
        return self.decoder(h), mu, logvar


def build_encoder(config: EncoderConfig) -> ProfileEncoder | ClusterEncoder:
    """The encoder of ``config.arch`` (what is exported and clustered)."""
    return ProfileEncoder(config) if config.arch == "profile" else ClusterEncoder(config)


def build_autoencoder(config: EncoderConfig) -> ProfileAutoencoder | ClusterAutoencoder:
    """The autoencoder of ``config.arch`` (``.encoder`` is :func:`build_encoder`'s network)."""
    return ProfileAutoencoder(config) if config.arch == "profile" else ClusterAutoencoder(config)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy: row i of ``a`` and of ``b`` are two views
    of one item, every other row of the batch is a negative."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.t() / temperature
    n = a.shape[0]
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)
