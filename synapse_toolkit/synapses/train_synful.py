"""Train the Synful network (post-synaptic mask + partner vector + direction head) on CREMI files
or phantom volumes, and export it to ONNX.

Imports torch: never import this module from the CLI start-up path or from inference code.

Config (TOML)::

    [data]                      # as for the detectors: files and/or phantom_seeds
    [model]                     # UNetConfig fields + scale / pool / init (see train_detectors)
    [targets]                   # synapse_toolkit.synapses.synful.SynfulTargetSettings fields
    [augment]                   # photometric AugmentConfig fields; flips/transposes always on
    [training]                  # iterations, time_limit_minutes, lr, input_shape, loss weights

One network, three heads sharing the trunk (see :mod:`synapse_toolkit.synapses.synful`):
class-balanced BCE on the post-synaptic mask; MSE on the vector (in units of
``vector_scale_nm``) and ``1 - cos`` on the direction, both where the vector target is defined
(within ``vector_radius_nm`` of a post site, in its segment). Crops are flipped and transposed in
plane with the vector components flipped / swapped to match.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from synapse_toolkit.config import StrictModel, load_training_config
from synapse_toolkit.errors import ConfigError, DataError
from synapse_toolkit.inference.intensity import unit_scale
from synapse_toolkit.io.cremi import read_cremi
from synapse_toolkit.nn.exported_weights import load_exported
from synapse_toolkit.nn.run import (
    MixedPrecision,
    RunSection,
    TrainingRun,
    resume_from,
    resume_state,
    start_out_dir,
)
from synapse_toolkit.synapses.synful import SynfulTargetSettings, synful_targets
from synapse_toolkit.synapses.targets import Grid
from synapse_toolkit.synapses.train_detectors import DataSection, site_centres, training_files

if TYPE_CHECKING:
    import torch

    from synapse_toolkit.nn.augment import AugmentConfig


class SynfulTrainingSection(RunSection):
    batch_size: int = 4
    input_shape: list[int] = Field(default_factory=lambda: [12, 128, 128])
    synapse_fraction: float = 0.8
    #: phantom synapse type -> how likely a synapse-centred crop is centred on a post site of
    #: that type, relative to others (files without phantom truth, and types not listed: 1)
    synapse_type_weights: dict[int, float] = Field(default_factory=dict)
    checkpoint_every: int = 500
    #: also keep every periodic checkpoint as ``it<N>.pt`` (to choose one on validation seeds)
    keep_checkpoints: bool = False
    out_dir: str = "runs/train-synful"
    init_checkpoint: str | None = None
    #: an exported U-Net (registry name or .onnx) of the same trunk architecture, e.g. the
    #: polarity model: every weight but the output layer starts from it
    init_trunk_from: str | None = None
    #: an exported synful model (registry name or .onnx) of this architecture: every weight,
    #: the output layer included, starts from it (to continue training a shipped model)
    init_from_model: str | None = None
    vector_scale_nm: float = 100.0
    vector_weight: float = 1.0
    direction_weight: float = 1.0
    #: focal modulation of the mask's balanced BCE (Lin et al. 2017): each voxel's term is
    #: multiplied by (1 - p_t) ** gamma, so voxels already classified well weigh less, and the
    #: weights rescaled to the batch's total without it (the heads keep their balance); 0 = off
    mask_focal_gamma: float = Field(default=0.0, ge=0.0)


class SynfulTrainConfig(StrictModel):
    kind: Literal["synful"] = "synful"
    data: DataSection
    model: dict[str, Any] = Field(default_factory=dict)
    targets: dict[str, Any] = Field(default_factory=dict)
    augment: dict[str, Any] = Field(default_factory=dict)
    training: SynfulTrainingSection = Field(default_factory=SynfulTrainingSection)


def load_synful_config(path: str | Path) -> SynfulTrainConfig:
    return load_training_config(path, SynfulTrainConfig)


#: packed target channels: mask, vector (3, nm), direction (3), vector-defined mask
_PACKED = 8


def pack_targets(t: dict[str, np.ndarray]) -> np.ndarray:
    """(8, z, y, x) float32: mask, vectors (nm), directions, vectors_mask."""
    return np.concatenate([
        t["mask"][None].astype(np.float32), t["vectors"], t["directions"],
        t["vectors_mask"][None].astype(np.float32),
    ]).astype(np.float32)  # fmt: skip


def flip_transpose(
    raw: np.ndarray, packed: np.ndarray, flips: Sequence[bool], swap_yx: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Flip spatial axes (z, y, x) and optionally swap y/x of a crop and its packed targets,
    negating / swapping the vector and direction components so they still point to the partner."""
    packed = packed.copy()
    for axis, f in enumerate(flips):
        if f:
            raw = np.flip(raw, axis)
            packed = np.flip(packed, axis + 1)
            packed[1 + axis] *= -1.0
            packed[4 + axis] *= -1.0
    if swap_yx:
        raw = np.swapaxes(raw, 1, 2)
        packed = np.swapaxes(packed, 2, 3)
        packed = packed[[0, 1, 3, 2, 4, 6, 5, 7]]
    return np.ascontiguousarray(raw), np.ascontiguousarray(packed)


#: one training volume: raw, packed targets, post sites (voxels), their probabilities of being
#: chosen as crop centre (None: uniform)
_Prepared = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]


class SynfulCropSampler:
    """Crops (raw float32 in ~[0, 1], packed targets) of ``shape``, centred on a post site with
    probability ``synapse_fraction``; random flips, in-plane transposes, photometric changes."""

    def __init__(
        self,
        volumes: Sequence[_Prepared],
        shape: Sequence[int],
        augment: AugmentConfig,
        synapse_fraction: float,
        seed: int,
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.augment = augment
        self.frac = synapse_fraction
        self.rng = np.random.default_rng(seed)
        self.pad = [s // 2 + 1 for s in self.shape]
        pads = [(p, p) for p in self.pad]
        self.vols = [
            (
                np.pad(raw, pads, mode="symmetric"),
                np.pad(packed, [(0, 0), *pads]),
                raw.shape,
                c,
                chance,
            )
            for raw, packed, c, chance in volumes
        ]

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        from synapse_toolkit.nn.augment import apply_photometric

        raw, packed, shape, centres, chance = self.vols[int(self.rng.integers(len(self.vols)))]
        half = np.asarray(self.shape) // 3
        if len(centres) and self.rng.random() < self.frac:
            # without weights, choice(n) draws the same stream as integers(n)
            c = centres[int(self.rng.choice(len(centres), p=chance))]
            c = c + self.rng.integers(-half, half + 1)
        else:
            c = np.asarray([self.rng.integers(0, s) for s in shape])
        c = np.clip(c, 0, np.asarray(shape) - 1)
        start = [int(ci) - n // 2 + p for ci, n, p in zip(c, self.shape, self.pad, strict=True)]
        box = tuple(slice(a, a + n) for a, n in zip(start, self.shape, strict=True))
        r = np.asarray(raw[box], np.float32) * np.float32(unit_scale(raw.dtype))
        t = packed[(slice(None), *box)]
        flips = [bool(self.rng.random() < 0.5) for _ in range(3)] if self.augment.flip else [0] * 3
        swap = bool(self.shape[1] == self.shape[2] and self.rng.random() < 0.5)
        r, t = flip_transpose(r, t, [bool(f) for f in flips], swap)
        r = apply_photometric(r, self.augment, self.rng)
        return np.ascontiguousarray(r, np.float32), t


def synful_loss(
    head: Any, x: torch.Tensor, t: torch.Tensor, vector_scale_nm: float,
    vector_weight: float, direction_weight: float, focal_gamma: float = 0.0,
    precision: MixedPrecision | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """Balanced BCE on the mask (focal-modulated if ``focal_gamma`` > 0, same total weight) +
    MSE on the vector + (1 - cos) on the direction; the forward pass under ``precision``'s
    autocast, the loss in float32."""
    import torch
    from torch.nn.functional import binary_cross_entropy_with_logits

    with precision.autocast() if precision is not None else contextlib.nullcontext():
        logit, vec, d = head.parts(x)
    logit, vec, d = logit.float(), vec.float(), d.float()
    m = t[:, 0:1]
    frac = m.mean().clamp(0.02, 0.98)
    w = torch.where(m > 0.5, 0.5 / frac, 0.5 / (1 - frac))
    if focal_gamma > 0:
        p = torch.sigmoid(logit.detach())
        f = torch.where(m > 0.5, 1 - p, p) ** focal_gamma
        w = w * f / (w * f).mean().clamp(min=1e-6) * w.mean()  # same total weight as without
    bce = (binary_cross_entropy_with_logits(logit, m, reduction="none") * w).mean()
    vm = t[:, 7:8]
    n = vm.sum().clamp(min=1)
    mse = (((vec - t[:, 1:4] / vector_scale_nm) ** 2).sum(1, keepdim=True) * vm).sum() / n
    unit = d / torch.sqrt((d * d).sum(1, keepdim=True) + 1e-12)
    cos = (unit * t[:, 4:7]).sum(1, keepdim=True)
    dloss = ((1 - cos) * vm).sum() / n
    loss = bce + vector_weight * mse + direction_weight * dloss
    return loss, {"bce": float(bce.detach()), "mse": float(mse.detach()),
                  "cos": float(dloss.detach())}  # fmt: skip


def _post_centres(
    ann: Any,
    grid: Grid,
    path: str | Path | None = None,
    type_weights: dict[int, float] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The post sites as crop centres (see :func:`~.train_detectors.site_centres`)."""
    post = np.asarray(ann.types, dtype=object) == ann.POST
    return site_centres(ann, grid, grid.shape, path, type_weights, select=post)


def build_network(cfg: SynfulTrainConfig) -> Any:
    """The :class:`~synapse_toolkit.nn.synapse_unet.SynfulHead` network of a config."""
    from synapse_toolkit.nn.synapse_unet import ScaledUNet, SynfulHead
    from synapse_toolkit.nn.unet import UNet3D, UNetConfig, apply_init
    from synapse_toolkit.synapses.synful import N_CHANNELS

    model_dict = dict(cfg.model)
    init = str(model_dict.pop("init", "default"))
    scale = int(model_dict.pop("scale", 1))
    pool = str(model_dict.pop("pool", "avg"))
    if pool == "space-to-depth":
        model_dict["in_channels"] = scale * scale
    model_cfg = UNetConfig.from_dict({
        "in_channels": 1, "num_fmaps": 8, "fmap_inc_factor": 3,
        "downsample_factors": [[1, 3, 3], [1, 3, 3]], **model_dict,
        "out_channels": N_CHANNELS, "output_activation": "none",
    })  # fmt: skip
    net = UNet3D(model_cfg) if scale == 1 else ScaledUNet(model_cfg, scale, pool)
    apply_init(net, init)
    return SynfulHead(net, cfg.training.vector_scale_nm), model_cfg, scale, pool


def init_trunk(head: Any, model: str) -> int:
    """Copy the weights of an exported model (registry name or ``.onnx``) into ``head``, every
    tensor with the same name and shape except the output layer; returns the number copied."""
    import torch

    n = load_exported(head, "training.init_trunk_from", model, with_output_layer=False)
    # a fresh output layer on trained features: start near zero (mask 0.5, vector 0)
    out = head.net.unet.head if hasattr(head.net, "unet") else head.net.head
    with torch.no_grad():
        out.weight.normal_(0.0, 1e-3)
        out.bias.zero_()
    return n


def init_from_model(head: Any, model: str) -> int:
    """Copy every weight of an exported synful model (registry name or ``.onnx``) of the same
    architecture into ``head``, the output layer included; returns the number copied."""
    return load_exported(head, "training.init_from_model", model, with_output_layer=True)


def train_synful(
    cfg: SynfulTrainConfig, log: Callable[[str], None] = print, resume: bool = False
) -> dict[str, Any]:
    """Train, export to ONNX, return a summary (paths, sha256, losses, time). ``resume``:
    continue an interrupted run from ``<out_dir>/latest.pt`` exactly (:func:`resume_from`)."""
    if cfg.data.validation:
        raise ConfigError("data.validation: the synful trainer keeps no validation set; choose its "
                          "checkpoints with benchmarks/eval_partners.py --checkpoints")  # fmt: skip
    import torch

    from synapse_toolkit.nn.augment import AugmentConfig

    t = cfg.training
    run = TrainingRun(seed=t.seed, num_threads=t.num_threads, device=t.device,
                      time_limit_minutes=t.time_limit_minutes)  # fmt: skip
    dev = run.device
    precision = MixedPrecision(t.mixed_precision, dev)
    head, model_cfg, scale, pool = build_network(cfg)
    input_shape = tuple(t.input_shape)
    if not head.is_valid_input_shape(input_shape):
        raise ConfigError(f"training.input_shape {list(input_shape)} is not valid for this U-Net")
    if t.init_checkpoint:
        from synapse_toolkit.nn.checkpoint import load_state

        state = load_state(t.init_checkpoint)
        head.load_state_dict(state["state_dict"])
        log(f"initialised from {t.init_checkpoint} (iteration {state.get('iteration')})")
    if t.init_trunk_from:
        n = init_trunk(head, t.init_trunk_from)
        log(f"trunk initialised from {t.init_trunk_from} ({n} tensors)")
    if t.init_from_model:
        n = init_from_model(head, t.init_from_model)
        log(f"initialised from {t.init_from_model} ({n} tensors)")
    tsettings = SynfulTargetSettings(**cfg.targets)
    aug = AugmentConfig.from_table(cfg.augment)
    volumes = []
    files = training_files(cfg.data)
    for f in files:
        data = read_cremi(f)
        if data.raw is None or data.annotations is None or data.neuron_ids is None:
            raise DataError(f"{f}: synful training needs raw, neuron_ids and annotations")
        grid = Grid.of(data.raw)
        targets = synful_targets(data.annotations, grid, data.neuron_ids.read(), tsettings)
        centres, chance = _post_centres(data.annotations, grid, f, t.synapse_type_weights)
        volumes.append((data.raw.read(), pack_targets(targets), centres, chance))
    sampler = SynfulCropSampler(volumes, input_shape, aug, t.synapse_fraction, t.seed)
    out_dir = start_out_dir(t.out_dir, resume, t.init_checkpoint)
    head.to(dev)
    opt = torch.optim.Adam(head.parameters(), lr=t.lr)
    n_params = sum(p.numel() for p in head.parameters())
    log(f"synful: {n_params} parameters, input {input_shape}, {len(files)} volumes, "
        f"{run.describe()}, {precision.describe()}")  # fmt: skip

    def save(path: Path, it: int, **more: Any) -> None:
        TrainingRun.save({"model_config": model_cfg.to_dict(), "state_dict": head.state_dict(),
                          "iteration": it, "input_shape": list(input_shape), "kind": "synful",
                          "scale": scale, "pool": pool,
                          "vector_scale_nm": t.vector_scale_nm, **more}, path)  # fmt: skip

    stopped = resume_from(out_dir, head, opt, precision, sampler.rng, log) if resume else None
    metrics = (out_dir / "metrics.jsonl").open("a")  # a continued run keeps the earlier lines
    run.restart_clock()
    avg: float | None = None
    it = it0 = int(stopped["iteration"]) if stopped is not None else 0
    for it in range(it0 + 1, t.iterations + 1):
        xs, ts = zip(*(sampler.sample() for _ in range(t.batch_size)), strict=True)
        x = torch.from_numpy(np.stack(xs)[:, None]).to(dev)
        tt = torch.from_numpy(np.stack(ts)).to(dev)
        loss, parts = synful_loss(head, x, tt, t.vector_scale_nm, t.vector_weight,
                                  t.direction_weight, t.mask_focal_gamma, precision)  # fmt: skip
        precision.step(loss, opt)
        lv = float(loss.detach())
        avg = lv if avg is None else 0.95 * avg + 0.05 * lv
        if it % t.log_every == 0:
            log(f"it {it} loss {lv:.4f} avg {avg:.4f} bce {parts['bce']:.4f} "
                f"mse {parts['mse']:.4f} 1-cos {parts['cos']:.4f} {run.elapsed:.0f}s")  # fmt: skip
            metrics.write(json.dumps({"iteration": it, "loss": lv, "avg": avg, **parts,
                                      "time_s": run.elapsed}) + "\n")  # fmt: skip
            metrics.flush()
        out_of_time = run.out_of_time()
        periodic = bool(t.checkpoint_every) and it % t.checkpoint_every == 0
        if periodic or out_of_time or it == t.iterations:
            save(out_dir / "latest.pt", it, resume=resume_state(opt, precision, sampler.rng))
        if periodic and t.keep_checkpoints:
            save(out_dir / f"it{it:06d}.pt", it)
        if out_of_time:
            log(run.budget_line(it))
            break
    metrics.close()
    head = head.cpu().eval()
    ckpt = out_dir / "final.pt"
    save(ckpt, it)
    info = export_synful(cfg, head, it)
    summary = {"kind": "synful", "iterations": it, "loss_avg": avg, "time_s": run.elapsed,
               "checkpoint": str(ckpt), **info}  # fmt: skip
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log(json.dumps(summary))
    return summary


def export_synful(cfg: SynfulTrainConfig, head: Any, iteration: int) -> dict[str, Any]:
    """Export a trained :class:`SynfulHead` to ``training.onnx`` (default
    ``<out_dir>/model.onnx``) with its metadata; returns :func:`export_model`'s summary."""
    from synapse_toolkit.nn.export import export_model

    t = cfg.training
    model_cfg = head.config
    onnx_path = Path(t.onnx) if t.onnx else Path(t.out_dir) / "model.onnx"
    overlap = [2, 8, 8] if model_cfg.padding == "valid" else [4, 32, 32]
    model = dict(cfg.model)
    meta = {"kind": "synful", "iteration": iteration, "scale": int(model.get("scale", 1)),
            "pool": str(model.get("pool", "avg")), "overlap": overlap,
            "channels": ["post mask", "vector z nm", "vector y nm", "vector x nm",
                         "direction z", "direction y", "direction x"],
            "model_config": model_cfg.to_dict(),
            "target_settings": SynfulTargetSettings(**cfg.targets).__dict__,
            "vector_scale_nm": t.vector_scale_nm}  # fmt: skip
    return export_model(head.cpu().eval(), t.input_shape, onnx_path, metadata=meta)


def export_synful_checkpoint(cfg: SynfulTrainConfig, checkpoint: str | Path) -> dict[str, Any]:
    """Export the checkpoint a run of ``cfg`` wrote (e.g. after an interrupted export)."""
    from synapse_toolkit.nn.checkpoint import load_state

    head = build_network(cfg)[0]
    state = load_state(checkpoint)
    head.load_state_dict(state["state_dict"])
    return export_synful(cfg, head, int(state.get("iteration", 0)))
