"""A configurable 3D U-Net (MALA style) reused by every syntk detector.

Levels, per-level downsampling factors (e.g. ``(1, 3, 3)`` for anisotropic EM, ``(2, 2, 2)`` for
isotropic FIB-SEM), feature maps with a growth factor per level, ``valid`` or ``same``
convolutions, any number of output channels and an output activation.

With ``padding="valid"`` the output is smaller than the input (the network sees ``context`` extra
voxels on each side) and the input shape must be *valid*: every feature map about to be
downsampled must be divisible by the factor, so that tiles of the output fit together seamlessly.
Use :meth:`UNet3D.valid_input_shape` to find one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet3D` (stored in checkpoints, so it is plain data)."""

    in_channels: int = 1
    out_channels: int = 3
    num_fmaps: int = 12
    fmap_inc_factor: int = 3
    downsample_factors: tuple[Triple, ...] = ((1, 3, 3), (1, 3, 3), (1, 3, 3))
    kernel_size: Triple = (3, 3, 3)
    #: per-level kernels (level 0 = full resolution … bottom), e.g. ``(1, 3, 3)`` at the fine
    #: levels of an anisotropic net; ``None``: ``kernel_size`` everywhere
    level_kernel_sizes: tuple[Triple, ...] | None = None
    num_convs: int = 2
    padding: str = "valid"
    output_activation: str = "sigmoid"
    #: hidden activation: "relu" (MALA) or "leaky_relu" (slope 0.01: inactive units keep a
    #: gradient; see plugins/syntk_neurons/models/README.md for what it did and did not change)
    activation: str = "relu"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {self.padding!r}")
        if self.activation not in HIDDEN_ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(HIDDEN_ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.output_activation not in ACTIVATIONS:
            raise ValueError(
                f"output_activation must be one of {sorted(ACTIVATIONS)}, "
                f"got {self.output_activation!r}"
            )
        object.__setattr__(
            self,
            "downsample_factors",
            tuple(tuple(int(v) for v in f) for f in self.downsample_factors),
        )
        object.__setattr__(self, "kernel_size", tuple(int(v) for v in self.kernel_size))
        if self.level_kernel_sizes is not None:
            ks = tuple(tuple(int(v) for v in k) for k in self.level_kernel_sizes)
            if len(ks) != len(self.downsample_factors) + 1 or any(len(k) != 3 for k in ks):
                raise ValueError(
                    f"level_kernel_sizes needs {len(self.downsample_factors) + 1} triples "
                    f"(one per level), got {self.level_kernel_sizes}"
                )
            if any(v % 2 == 0 for k in ks for v in k):
                raise ValueError(f"level_kernel_sizes must be odd, got {ks}")
            object.__setattr__(self, "level_kernel_sizes", ks)
        for f in self.downsample_factors:
            if len(f) != 3 or min(f) < 1:
                raise ValueError(f"downsample factors must be 3 positive ints, got {f}")
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")

    def kernel(self, level: int) -> Triple:
        """The convolution kernel of ``level`` (0 = full resolution)."""
        if self.level_kernel_sizes is None:
            return self.kernel_size
        k = self.level_kernel_sizes[level]
        return (k[0], k[1], k[2])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["downsample_factors"] = [list(f) for f in self.downsample_factors]
        d["kernel_size"] = list(self.kernel_size)
        if self.level_kernel_sizes is None:
            del d["level_kernel_sizes"]  # checkpoints of nets without it stay as they were
        else:
            d["level_kernel_sizes"] = [list(k) for k in self.level_kernel_sizes]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        d = dict(d)
        d["downsample_factors"] = tuple(tuple(f) for f in d.get("downsample_factors", ()))
        if "kernel_size" in d:
            d["kernel_size"] = tuple(d["kernel_size"])
        if d.get("level_kernel_sizes") is not None:
            d["level_kernel_sizes"] = tuple(tuple(k) for k in d["level_kernel_sizes"])
        return cls(**d)


ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "none": nn.Identity}
HIDDEN_ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU}


class ConvPass(nn.Module):
    """``num_convs`` × (Conv3d + ReLU or leaky ReLU)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: Triple,
        num_convs: int,
        padding: str,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        pad: Triple | int = (
            (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2) if padding == "same" else 0
        )
        act = HIDDEN_ACTIVATIONS[activation]
        for i in range(num_convs):
            layers += [nn.Conv3d(cin if i == 0 else cout, cout, kernel, padding=pad), act()]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _crop_to(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Centre-crop the spatial dims of ``x`` to ``shape``."""
    sl = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], shape, strict=True):
        off = (int(have) - int(want)) // 2
        sl.append(slice(off, off + int(want)))
    return x[tuple(sl)]


class UNet3D(nn.Module):
    """3D U-Net: ``len(downsample_factors) + 1`` levels, max-pool down, transposed-conv up."""

    def __init__(self, config: UNetConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = config if config is not None else UNetConfig(**kwargs)
        self.config = cfg
        n_down = len(cfg.downsample_factors)
        fmaps = [cfg.num_fmaps * cfg.fmap_inc_factor**level for level in range(n_down + 1)]
        self.fmaps = fmaps
        self.down = nn.ModuleList()
        self.pools = nn.ModuleList()
        for level in range(n_down):
            cin = cfg.in_channels if level == 0 else fmaps[level - 1]
            self.down.append(
                ConvPass(
                    cin, fmaps[level], cfg.kernel(level), cfg.num_convs, cfg.padding, cfg.activation
                )
            )
            f = cfg.downsample_factors[level]
            self.pools.append(nn.MaxPool3d(f, stride=f))
        bottom_in = cfg.in_channels if n_down == 0 else fmaps[n_down - 1]
        self.bottom = ConvPass(
            bottom_in, fmaps[n_down], cfg.kernel(n_down), cfg.num_convs, cfg.padding, cfg.activation
        )
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for level in reversed(range(n_down)):
            f = cfg.downsample_factors[level]
            self.ups.append(nn.ConvTranspose3d(fmaps[level + 1], fmaps[level], f, stride=f))
            self.up_convs.append(
                ConvPass(
                    2 * fmaps[level],
                    fmaps[level],
                    cfg.kernel(level),
                    cfg.num_convs,
                    cfg.padding,
                    cfg.activation,
                )
            )
        self.head = nn.Conv3d(fmaps[0], cfg.out_channels, 1)
        self.activation = ACTIVATIONS[cfg.output_activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for conv, pool in zip(self.down, self.pools, strict=True):
            x = conv(x)
            skips.append(x)
            x = pool(x)
        x = self.bottom(x)
        for up, conv, skip in zip(self.ups, self.up_convs, reversed(skips), strict=True):
            x = up(x)
            x = torch.cat([_crop_to(skip, x.shape[2:]), x], dim=1)
            x = conv(x)
        return self.activation(self.head(x))

    # -- shapes ------------------------------------------------------------------------------
    def _shape_walk(self, input_shape: Sequence[int]) -> tuple[Triple, bool]:
        cfg = self.config
        if cfg.padding == "same":
            shape = [int(s) for s in input_shape]
            ok = True
            for f in cfg.downsample_factors:
                ok &= all(s % fi == 0 for s, fi in zip(shape, f, strict=True))
                shape = [s // fi for s, fi in zip(shape, f, strict=True)]
            return (int(input_shape[0]), int(input_shape[1]), int(input_shape[2])), ok
        n_down = len(cfg.downsample_factors)
        shrinks = [[cfg.num_convs * (k - 1) for k in cfg.kernel(lv)] for lv in range(n_down + 1)]
        shape = [int(s) for s in input_shape]
        ok = True
        for f, shrink in zip(cfg.downsample_factors, shrinks, strict=False):
            shape = [s - r for s, r in zip(shape, shrink, strict=True)]
            ok &= all(s > 0 and s % fi == 0 for s, fi in zip(shape, f, strict=True))
            shape = [s // fi for s, fi in zip(shape, f, strict=True)]
        shape = [s - r for s, r in zip(shape, shrinks[n_down], strict=True)]
        ok &= all(s > 0 for s in shape)
        for lv in reversed(range(n_down)):
            f, shrink = cfg.downsample_factors[lv], shrinks[lv]
            shape = [s * fi - r for s, fi, r in zip(shape, f, shrink, strict=True)]
        ok &= all(s > 0 for s in shape)
        return (shape[0], shape[1], shape[2]), ok

    def output_shape(self, input_shape: Sequence[int]) -> Triple:
        """Spatial output shape for ``input_shape``; raises if the input shape is not valid."""
        out, ok = self._shape_walk(input_shape)
        if not ok:
            raise ValueError(
                f"input shape {tuple(input_shape)} is not valid for this U-Net; "
                f"try {self.valid_input_shape(input_shape)}"
            )
        return out

    def is_valid_input_shape(self, input_shape: Sequence[int]) -> bool:
        return self._shape_walk(input_shape)[1]

    def valid_input_shape(self, near: Sequence[int]) -> Triple:
        """The smallest valid input shape ≥ ``near`` (per axis)."""
        result = []
        for axis in range(3):
            s = max(1, int(near[axis]))
            for _ in range(10000):
                probe = [64] * 3
                probe[axis] = s
                # other axes are checked with a large known-valid candidate below
                if self._axis_ok(axis, s):
                    break
                s += 1
            result.append(s)
        return (result[0], result[1], result[2])

    def _axis_ok(self, axis: int, size: int) -> bool:
        cfg = self.config
        if cfg.padding == "same":
            prod = 1
            for f in cfg.downsample_factors:
                prod *= f[axis]
            return size % prod == 0
        n_down = len(cfg.downsample_factors)
        r = [cfg.num_convs * (cfg.kernel(lv)[axis] - 1) for lv in range(n_down + 1)]
        s = size
        for lv, f in enumerate(cfg.downsample_factors):
            s -= r[lv]
            if s <= 0 or s % f[axis]:
                return False
            s //= f[axis]
        s -= r[n_down]
        if s <= 0:
            return False
        for lv in reversed(range(n_down)):
            s = s * cfg.downsample_factors[lv][axis] - r[lv]
        return s > 0

    def context(self, input_shape: Sequence[int]) -> Triple:
        """Voxels lost on each side between input and output (0 for ``same`` padding)."""
        out = self.output_shape(input_shape)
        c = [(int(i) - o) // 2 for i, o in zip(input_shape, out, strict=True)]
        return (c[0], c[1], c[2])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def kaiming_init(net: nn.Module) -> None:
    """He-normal weights and zero biases for every convolution (ReLU networks).

    PyTorch's default initialisation shrinks activations about 2.5x per U-Net level when there
    is no normalisation, so the coarse levels (the context) barely reach the output at first.
    """
    for mod in net.modules():
        if isinstance(mod, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)


def apply_init(net: nn.Module, init: str) -> None:
    """The ``model.init`` option of the trainers: ``"default"`` (PyTorch's) or ``"kaiming"``."""
    if init == "kaiming":
        kaiming_init(net)
    elif init != "default":
        from synapse_toolkit.errors import ConfigError

        raise ConfigError(f"model.init: unknown {init!r} (use 'default' or 'kaiming')")
