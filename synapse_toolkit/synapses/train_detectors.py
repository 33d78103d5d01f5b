"""Train the cleft and signed-proximity (polarity) U-Nets on CREMI files or phantom volumes.

Imports torch: never import this module from the CLI start-up path or from inference code.

Config (TOML)::

    [data]
    files = ["a.h5"]            # CREMI files (raw + neuron_ids + annotations [+ clefts]) or
                                # "registry:cremi/sample_A" (a registry dataset, fetched if missing)
    phantom_seeds = [1, 2, 3]   # and/or phantom volumes at the frozen defaults, generated once
    phantom_cache = "runs/phantom-cache"
    [[data.validation]]         # optional: held-out regions; the export is then the checkpoint
    file = "registry:cremi/sample_C"   # with the lowest loss on fixed crops of them
    roi = [[100, 125], [0, 625], [0, 625]]  # (start, stop) voxels per z, y, x; whole file if absent
    [model]                     # synapse_toolkit.nn.unet.UNetConfig fields
    [targets]                   # synapse_toolkit.synapses.targets.TargetSettings fields
    [augment]                   # synapse_toolkit.nn.augment.AugmentConfig fields
    [training]                  # iterations, time_limit_minutes, lr, input_shape, ...

``kind = "clefts"`` trains a sigmoid U-Net with class-balanced BCE on the cleft mask;
``kind = "polarity"`` a tanh U-Net with class-balanced (signal vs. zero) MSE on the signed
proximity. Crops are centred on a synapse with probability ``synapse_fraction`` (synapses are
sparse), otherwise anywhere. At the end the model is exported to ONNX (self-contained, checked
against torch) with its metadata.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from synapse_toolkit.config import StrictModel, load_training_config
from synapse_toolkit.data import Annotations
from synapse_toolkit.errors import ConfigError, DataError
from synapse_toolkit.io.cremi import CremiData, open_cremi, read_cremi
from synapse_toolkit.nn.run import (
    MixedPrecision,
    RunSection,
    TrainingRun,
    resume_from,
    resume_state,
    start_out_dir,
)
from synapse_toolkit.nn.volume_file import volume_path
from synapse_toolkit.synapses.targets import Grid, TargetSettings, targets_from_cremi

if TYPE_CHECKING:
    import torch

    from synapse_toolkit.nn.augment import AugmentConfig
    from synapse_toolkit.nn.unet import UNetConfig


class Region(StrictModel):
    """A CREMI file (a path or ``registry:<name>``) and optionally a region of it."""

    file: str
    #: (start, stop) voxels per z, y, x; the whole file if absent
    roi: list[list[int]] | None = None


class DataSection(StrictModel):
    files: list[str] = Field(default_factory=list)
    phantom_seeds: list[int] = Field(default_factory=list)
    phantom_cache: str = "runs/phantom-cache"
    #: held-out regions: the checkpoint with the lowest loss on fixed crops of them is exported
    validation: list[Region] = Field(default_factory=list)


class TrainingSection(RunSection):
    input_shape: list[int] = Field(default_factory=lambda: [28, 112, 112])
    synapse_fraction: float = 0.7
    #: phantom synapse type -> how likely a synapse-centred crop is centred on a site of that
    #: type, relative to others (files without phantom truth, and types not listed: 1)
    synapse_type_weights: dict[int, float] = Field(default_factory=dict)
    checkpoint_every: int = 500  # also write <out_dir>/latest.pt this often (0 = only at the end)
    validate_every: int = 500  # with data.validation: score the fixed crops this often
    validation_crops: int = 32  # crops drawn once from data.validation (no augmentation)
    out_dir: str = "runs/train-synapses"
    init_checkpoint: str | None = None  # continue from this checkpoint (same architecture)
    #: continue from an exported model of this config's architecture (registry name or .onnx;
    #: every weight, the output layer included)
    init_from_model: str | None = None
    #: polarity only: "mse" (tanh output), "bce-split" (two sigmoid channels for the positive
    #: and negative parts of the target; exported as their difference) or "bce-side" (unsigned
    #: proximity + pre-side probability; exported as proximity x (2 p - 1))
    loss: Literal["mse", "bce-split", "bce-side"] = "mse"


class DetectorTrainConfig(StrictModel):
    kind: Literal["clefts", "polarity"]
    data: DataSection
    model: dict[str, Any] = Field(default_factory=dict)
    targets: dict[str, Any] = Field(default_factory=dict)
    augment: dict[str, Any] = Field(default_factory=dict)
    training: TrainingSection = Field(default_factory=TrainingSection)


def load_detector_config(path: str | Path) -> DetectorTrainConfig:
    return load_training_config(path, DetectorTrainConfig)


#: an ``[augment]`` table that leaves crops as they are (validation crops)
NO_AUGMENTATION: dict[str, Any] = {
    "flip": False, "transpose_axes": [], "intensity_scale": 0.0, "intensity_shift": 0.0,
    "elastic_sigma": 0.0, "margin": [0, 0, 0],
}  # fmt: skip


def phantom_file(seed: int, cache: str | Path) -> Path:
    """A phantom EM volume at the frozen defaults for ``seed`` (generated once, then cached)."""
    from synapse_toolkit.phantom.em import EMPhantom
    from synapse_toolkit.phantom.store import write_phantom

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"em-seed{seed}.h5"
    if not path.exists():
        write_phantom(EMPhantom(seed=seed), path)
    return path


def training_files(data: DataSection) -> list[Path]:
    files = [volume_path(f) for f in data.files]
    files += [phantom_file(s, data.phantom_cache) for s in data.phantom_seeds]
    if not files:
        raise ConfigError("data: give `files` or `phantom_seeds`")
    return files


def read_region(region: Region, where: str = "") -> CremiData:
    """The CREMI contents of ``region`` (only its region is read from the file); ``where`` (a
    config key) goes into the errors."""
    from synapse_toolkit.io.cremi import crop_cremi, open_cremi

    path = volume_path(region.file)
    at = f" ({where})" if where else ""
    if not path.exists():
        raise DataError(f"{path}: file not found{at}")
    if region.roi is None:
        return read_cremi(path)
    with open_cremi(path) as data:
        return crop_cremi(data, region.roi, f"{path}{at}")


def _volume_target(
    kind: str, data: CremiData, tsettings: TargetSettings, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """(target, mask) volumes for one training file (``where``: its name, for the errors)."""
    wanted = ("proximity",) if kind == "polarity" else ("cleft_mask", "cleft_valid")
    try:
        t = targets_from_cremi(data, tsettings, only=wanted)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from exc
    if kind == "polarity":
        return t["proximity"], np.ones_like(t["proximity"], dtype=bool)
    if "cleft_mask" not in t:
        raise DataError(f"{where}: cleft training needs files with volumes/labels/clefts")
    return t["cleft_mask"].astype(np.float32), t["cleft_valid"]


def _synapse_centres(
    data: CremiData,
    shape: tuple[int, ...],
    path: str | Path | None = None,
    type_weights: dict[int, float] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Every annotation site of ``data`` as a crop centre (see :func:`site_centres`)."""
    assert data.raw is not None and data.annotations is not None
    return site_centres(data.annotations, Grid.of(data.raw), shape, path, type_weights)


def site_centres(
    annotations: Annotations,
    grid: Grid,
    shape: Sequence[int],
    path: str | Path | None = None,
    type_weights: dict[int, float] | None = None,
    select: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Annotation sites (those of the boolean ``select``, else all) inside ``shape`` as voxels of
    ``grid``, and, with ``type_weights``, each one's probability of being chosen as a crop
    centre in proportion to the weight of its phantom synapse type (1 for types not listed and
    files without phantom truth); None (uniform) without weights, file or sites."""
    ids = np.asarray(annotations.ids)
    locations = annotations.world_locations()
    if select is not None:
        ids, locations = ids[select], locations[select]
    idx = grid.nearest_voxel(locations)
    inside = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
    idx, ids = idx[inside], ids[inside]
    if not type_weights or path is None or not len(ids):
        return idx, None
    from synapse_toolkit.phantom.store import site_types

    w = np.asarray([type_weights.get(int(t), 1.0) for t in site_types(path, ids)], np.float64)
    return idx, (w / w.sum() if w.sum() > 0 else None)


#: one training volume: raw, target, loss mask, synapse centres (voxels), their probabilities
#: of being chosen (None: uniform)
_Prepared = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]


class SynapseCropSampler:
    """Augmented crops (raw, target, mask) of ``input_shape``; target/mask cropped to output.

    Each volume is kept once, padded: raw as given and target and mask packed into one float32
    array (``target + 4 * mask``; targets lie in [-1, 1]), so the sampler holds about five bytes
    per voxel of uint8 raw. ``volumes`` may be a generator: each volume is packed as it arrives,
    and the caller's unpadded copy can go.
    """

    def __init__(
        self,
        volumes: Iterable[_Prepared],
        input_shape: Sequence[int],
        output_shape: Sequence[int],
        augment: AugmentConfig,
        synapse_fraction: float,
        seed: int,
    ) -> None:
        self.input_shape = tuple(int(s) for s in input_shape)
        self.output_shape = tuple(int(s) for s in output_shape)
        self.augment = augment
        self.frac = synapse_fraction
        self.rng = np.random.default_rng(seed)
        shapes = zip(self.input_shape, self.output_shape, augment.margin, strict=True)
        # an input crop centred anywhere in the volume, +- output // 3, with the warp's margin
        self.pad = [(i + 1) // 2 + o // 3 + m + 1 for i, o, m in shapes]
        self.vols: list[
            tuple[np.ndarray, np.ndarray, tuple[int, ...], np.ndarray, np.ndarray | None]
        ] = []
        for raw, target, mask, centres, chance in volumes:
            pads = [(p, p) for p in self.pad]
            packed = target.astype(np.float32)
            packed[mask.astype(bool)] += 4.0
            self.vols.append((
                np.pad(raw, pads, mode="symmetric"),
                np.pad(packed, pads, mode="symmetric"),
                raw.shape, centres, chance,
            ))  # fmt: skip
            del raw, target, mask, packed

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from synapse_toolkit.nn.augment import sample_augmented

        raw, lab, shape, centres, chance = self.vols[int(self.rng.integers(len(self.vols)))]
        if len(centres) and self.rng.random() < self.frac:
            c = centres[int(self.rng.choice(len(centres), p=chance))]
            c = c + self.rng.integers(-np.asarray(self.output_shape) // 3,
                                      np.asarray(self.output_shape) // 3 + 1)  # fmt: skip
        else:
            c = np.asarray([self.rng.integers(0, s) for s in shape])
        start = [
            int(ci) - i // 2 + p for ci, i, p in zip(c, self.input_shape, self.pad, strict=True)
        ]
        r, lab_c = sample_augmented(raw, lab, start, self.input_shape, self.augment, self.rng)
        off = [(i - o) // 2 for i, o in zip(self.input_shape, self.output_shape, strict=True)]
        lab_c = lab_c[tuple(slice(o, o + n) for o, n in zip(off, self.output_shape, strict=True))]
        mask = lab_c > 2.0
        target = np.where(mask, lab_c - 4.0, lab_c)
        return r, target.astype(np.float32), mask


def _balanced_weights(target: np.ndarray, mask: np.ndarray, kind: str) -> np.ndarray:
    signal = np.abs(target) > (0.5 if kind == "clefts" else 0.0)
    n = max(int(mask.sum()), 1)
    frac = float(np.clip((signal & mask).sum() / n, 0.02, 0.98))
    w = np.where(signal, 0.5 / frac, 0.5 / (1 - frac)).astype(np.float32)
    return w * mask


def _split_weights(target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(2, ...) loss weights for the pre (target > 0) and post (target < 0) channels.

    Per channel, its own side, the *other* side and the background each carry a third of the
    weight. With plain positive/negative balancing the other side is a few percent of the
    negatives, so predicting "near a synapse" on both channels is almost free and the net never
    learns which side is which.
    """
    sides = (target > 0, target < 0)
    out = []
    for own, other in (sides, sides[::-1]):
        w = np.zeros(target.shape, np.float32)
        background = ~(own | other)
        for part in (own, other, background):
            n = int((part & mask).sum())
            if n:
                w[part] = 1.0 / (3.0 * n)
        out.append(w * mask * mask.sum())
    return np.stack(out)


def _side_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``bce-side`` loss: balanced BCE of channel 0 on |target| (near any synaptic site) plus
    balanced BCE of channel 1 on ``target > 0`` (pre-synaptic side) where |target| > 0."""
    import torch
    from torch.nn.functional import binary_cross_entropy

    pred = pred.clamp(1e-6, 1 - 1e-6)
    valid = (mask > 0).float()
    near_t = target.abs()
    near = (near_t > 0).float() * valid
    frac = (near.sum() / valid.sum().clamp(min=1)).clamp(0.02, 0.98)
    w_near = (near * 0.5 / frac + (1 - near) * valid * 0.5 / (1 - frac)) / valid.sum().clamp(min=1)
    loss_near = (binary_cross_entropy(pred[:, 0:1], near_t, reduction="none") * w_near).sum()
    pre = (target > 0).float()
    n_pre = (near * pre).sum().clamp(min=1)
    n_post = (near * (1 - pre)).sum().clamp(min=1)
    w_side = near * (pre * 0.5 / n_pre + (1 - pre) * 0.5 / n_post)
    loss_side = (binary_cross_entropy(pred[:, 1:2], pre, reduction="none") * w_side).sum()
    return loss_near + torch.where(near.sum() > 0, loss_side, torch.zeros_like(loss_side))


def _save_checkpoint(
    path: Path,
    net: torch.nn.Module,
    model_cfg: UNetConfig,
    it: int,
    input_shape: Sequence[int],
    output_shape: Sequence[int],
    kind: str,
    scale: int,
    pool: str = "avg",
    resume: dict[str, Any] | None = None,
) -> None:
    """Write a training checkpoint atomically; ``resume`` (optimizer, random states, best
    validation so far) makes it one a run can continue from exactly (``latest.pt``)."""
    state = {"model_config": model_cfg.to_dict(), "state_dict": net.state_dict(),
             "iteration": it, "input_shape": list(input_shape),
             "output_shape": list(output_shape), "kind": kind, "scale": scale,
             "pool": pool, **({"resume": resume} if resume else {})}  # fmt: skip
    TrainingRun.save(state, path)


def train_detector(
    cfg: DetectorTrainConfig, log: Callable[[str], None] = print, resume: bool = False
) -> dict[str, Any]:
    """Train, export to ONNX, return a summary (paths, sha256, loss, time).

    ``resume``: continue an interrupted run from ``<out_dir>/latest.pt`` (weights, optimizer,
    the crop sampler's and torch's random states, the best validation so far) up to
    ``training.iterations``, as if it had not stopped; without a ``latest.pt`` it starts anew.
    """
    import torch

    from synapse_toolkit.nn.augment import AugmentConfig
    from synapse_toolkit.nn.export import export_model
    from synapse_toolkit.nn.synapse_unet import ScaledUNet
    from synapse_toolkit.nn.unet import UNet3D, UNetConfig, apply_init

    t = cfg.training
    run = TrainingRun(seed=t.seed, num_threads=t.num_threads, device=t.device,
                      time_limit_minutes=t.time_limit_minutes)  # fmt: skip
    dev = run.device
    precision = MixedPrecision(t.mixed_precision, dev)
    split = cfg.kind == "polarity" and t.loss == "bce-split"
    side = cfg.kind == "polarity" and t.loss == "bce-side"
    act = "sigmoid" if cfg.kind == "clefts" or split or side else "tanh"
    model_dict = dict(cfg.model)
    if split or side:
        model_dict["out_channels"] = 2
    init = str(model_dict.pop("init", "default"))
    scale = int(model_dict.pop("scale", 1))
    pool = str(model_dict.pop("pool", "avg"))
    if pool == "space-to-depth":
        model_dict["in_channels"] = scale * scale
    model_cfg = UNetConfig.from_dict({
        "in_channels": 1, "out_channels": 1, "num_fmaps": 8, "fmap_inc_factor": 3,
        "downsample_factors": [[1, 3, 3], [1, 3, 3]], "output_activation": act, **model_dict,
    })  # fmt: skip
    net = UNet3D(model_cfg) if scale == 1 else ScaledUNet(model_cfg, scale, pool)
    apply_init(net, init)
    input_shape = tuple(t.input_shape)
    if not net.is_valid_input_shape(input_shape):
        raise ConfigError(f"training.input_shape {list(input_shape)} is not valid; "
                          f"try {list(net.valid_input_shape(input_shape))}")  # fmt: skip
    output_shape = net.output_shape(input_shape)
    if t.init_checkpoint:
        from synapse_toolkit.nn.checkpoint import load_state

        state = load_state(t.init_checkpoint)
        net.load_state_dict(state["state_dict"])
        log(f"initialised from {t.init_checkpoint} (iteration {state.get('iteration')})")
    from synapse_toolkit.nn.synapse_unet import SignedDifference, VicinityTimesSide

    export_net = SignedDifference(net) if split else VicinityTimesSide(net) if side else net
    if t.init_from_model:
        from synapse_toolkit.nn.exported_weights import load_exported

        n = load_exported(export_net, "training.init_from_model", t.init_from_model,
                          with_output_layer=True)  # fmt: skip
        log(f"initialised from {t.init_from_model} ({n} tensors)")
    tsettings = TargetSettings(**cfg.targets)
    aug = AugmentConfig.from_table(cfg.augment)

    def prepared(data: CremiData, where: str, path: Path | None = None) -> _Prepared:
        if data.raw is None:
            raise DataError(f"{where}: no volumes/raw")
        target, mask = _volume_target(cfg.kind, data, tsettings, where)
        centres, chance = _synapse_centres(data, target.shape, path, t.synapse_type_weights)
        return data.raw.read(), target, mask, centres, chance

    def read_prepared(path: Path) -> _Prepared:
        """One training file, read lazily: only the volumes the targets need leave the disk."""
        with open_cremi(path) as data:
            return prepared(data, str(path), path)

    files = training_files(cfg.data)
    # generators: the sampler packs each volume as it is read, so one unpadded copy lives at a time
    volumes = (read_prepared(f) for f in files)
    val_crops: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if cfg.data.validation:
        held = (prepared(read_region(r, f"data.validation[{k}]"),
                         f"{volume_path(r.file)} (data.validation[{k}])")
                for k, r in enumerate(cfg.data.validation))  # fmt: skip
        plain = AugmentConfig.from_table(NO_AUGMENTATION)
        fixed = SynapseCropSampler(held, input_shape, output_shape, plain, t.synapse_fraction,
                                   t.seed + 1)  # fmt: skip
        val_crops = [fixed.sample() for _ in range(t.validation_crops)]
    sampler = SynapseCropSampler(
        volumes, input_shape, output_shape, aug, t.synapse_fraction, t.seed
    )
    out_dir = start_out_dir(t.out_dir, resume, t.init_checkpoint)
    net.to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=t.lr)
    log(f"{cfg.kind}: {net.num_parameters()} parameters, input {input_shape} -> {output_shape}, "
        f"{len(files)} volumes, {run.describe()}, {precision.describe()}")  # fmt: skip
    best_val, best_it, it0 = float("inf"), 0, 0
    latest = out_dir / "latest.pt"
    stopped = resume_from(out_dir, net, opt, precision, sampler.rng, log) if resume else None
    if stopped is not None:
        it0 = int(stopped["iteration"])
        best_val, best_it = float(stopped["resume"]["best_val"]), int(stopped["resume"]["best_it"])

    metrics = (out_dir / "metrics.jsonl").open("a")  # a continued run keeps the earlier lines
    run.restart_clock()
    avg = None
    it = it0

    def batch_loss(batch: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> torch.Tensor:
        """The loss of ``net`` on (raw, target, mask) crops (float32, outside autocast)."""
        ys = [y[None] for _, y, _ in batch]
        ws = [_balanced_weights(y, m, cfg.kind)[None] for _, y, m in batch]
        x = torch.from_numpy(np.stack([r[None] for r, _, _ in batch])).to(dev)
        y_t = torch.from_numpy(np.stack(ys)).to(dev)
        w = torch.from_numpy(np.stack(ws)).to(dev)
        with precision.autocast():
            pred = net(x)
        pred = pred.float()
        if side:
            return _side_loss(pred, y_t, w)
        if split:
            parts = torch.cat([y_t.clamp(min=0), (-y_t).clamp(min=0)], dim=1)
            w2 = torch.from_numpy(np.stack([
                _split_weights(y[0], wi[0] > 0) for y, wi in zip(ys, ws, strict=True)
            ])).to(dev)  # fmt: skip
            per = torch.nn.functional.binary_cross_entropy(pred.clamp(1e-6, 1 - 1e-6), parts,
                                                           reduction="none")  # fmt: skip
            return (per * w2).sum() / w2.sum().clamp(min=1)
        if cfg.kind == "clefts":
            per = torch.nn.functional.binary_cross_entropy(
                pred.clamp(1e-6, 1 - 1e-6), y_t, reduction="none"
            )
        else:
            per = (pred - y_t) ** 2
        return (per * w).sum() / w.sum().clamp(min=1)

    def validate() -> float:
        """Mean loss over the fixed validation crops (one at a time, no gradient)."""
        net.eval()
        with torch.no_grad():
            value = float(np.mean([float(batch_loss([c])) for c in val_crops]))
        net.train()
        return value

    for it in range(it0 + 1, t.iterations + 1):
        loss = batch_loss([sampler.sample() for _ in range(t.batch_size)])
        precision.step(loss, opt)
        lv = float(loss.detach())
        avg = lv if avg is None else 0.95 * avg + 0.05 * lv
        elapsed = run.elapsed
        if it % t.log_every == 0:
            log(f"it {it} loss {lv:.4f} avg {avg:.4f} {elapsed:.0f}s")
            metrics.write(
                json.dumps({"iteration": it, "loss": lv, "avg": avg, "time_s": elapsed}) + "\n"
            )
            metrics.flush()
        out_of_time = run.out_of_time()
        if val_crops and (it % t.validate_every == 0 or it == t.iterations or out_of_time):
            val_loss = validate()
            log(f"validation it {it}: loss {val_loss:.4f}")
            metrics.write(json.dumps({"iteration": it, "validation_loss": val_loss}) + "\n")
            metrics.flush()
            if val_loss < best_val:
                best_val, best_it = val_loss, it
                _save_checkpoint(out_dir / "best.pt", net, model_cfg, it, input_shape,
                                 output_shape, cfg.kind, scale, pool)  # fmt: skip
        last = out_of_time or it == t.iterations
        if last or (t.checkpoint_every and it % t.checkpoint_every == 0):
            extra = resume_state(opt, precision, sampler.rng, best_val=best_val, best_it=best_it)
            _save_checkpoint(latest, net, model_cfg, it, input_shape, output_shape, cfg.kind,
                             scale, pool, extra)  # fmt: skip
        if out_of_time:
            log(run.budget_line(it))
            break
    metrics.close()
    net = net.cpu().eval()
    ckpt = out_dir / "final.pt"
    _save_checkpoint(ckpt, net, model_cfg, it, input_shape, output_shape, cfg.kind, scale, pool)
    chosen: dict[str, Any] = {}
    if val_crops:  # export the checkpoint with the lowest validation loss
        from synapse_toolkit.nn.checkpoint import load_state

        net.load_state_dict(load_state(out_dir / "best.pt")["state_dict"])
        chosen = {"best_iteration": best_it, "best_validation_loss": best_val,
                  "validation_crops": len(val_crops)}  # fmt: skip
    onnx_path = Path(t.onnx) if t.onnx else out_dir / "model.onnx"
    target_doc = "signed proximity in [-1, 1]" if cfg.kind == "polarity" else "cleft probability"
    overlap = [2, 8, 8] if model_cfg.padding == "valid" else [4, 32, 32]
    meta = {"kind": cfg.kind, "target": target_doc, "iteration": chosen.get("best_iteration", it),
            "scale": scale, "pool": pool,
            "overlap": overlap, "model_config": model_cfg.to_dict(),
            "target_settings": tsettings.__dict__}  # fmt: skip
    info = export_model(export_net, input_shape, onnx_path, metadata=meta)
    summary = {"kind": cfg.kind, "iterations": it, "loss_avg": avg, "time_s": run.elapsed,
               "checkpoint": str(ckpt), **chosen, **info}  # fmt: skip
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log(json.dumps(summary))
    return summary
