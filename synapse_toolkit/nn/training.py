"""Generic training loop for dense-prediction U-Nets (affinities now; clefts etc. later).

Configured by a TOML file (see ``examples/train/fib_affinities.toml``)::

    [model]      # UNetConfig fields
    [data]       # volumes = [{raw, raw_dataset, labels, labels_dataset, roi, labelled_sections}],
                 # validation = [... perturb]
    [target]     # name = "affinities" (or "module:function"), long_range, extra_offsets
    [augment]    # AugmentConfig fields
    [training]   # iterations, time_limit_minutes, lr, loss, input_shape, ...

Random crops (with augmentation) come from several volumes (volumes are mirrored at their borders
so that crops near the edge see the same kind of context as tiled inference does); a target
function turns the label crop into ``(target, mask)``; the loss is BCE, MSE, MALIS or a sum; class
balancing weights positives and negatives equally; checkpoints are written atomically; validation
predicts whole validation volumes (tiled), agglomerates with waterz and logs VOI/ARAND/CREMI score.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import EllipsisType
from typing import Any, Literal, overload

import numpy as np
from pydantic import Field, PositiveInt, field_validator

from synapse_toolkit.affinities import (
    NEAREST_NEIGHBOURS,
    affinity_mask,
    balance_weights,
    labels_to_affinities,
    long_range_offsets,
)
from synapse_toolkit.config import StrictModel, load_training_config
from synapse_toolkit.cremi_ids import NEURON_IGNORE
from synapse_toolkit.errors import ConfigError, DataError
from synapse_toolkit.nn.augment import AugmentConfig, sample_augmented
from synapse_toolkit.nn.run import (
    DeviceOptions,
    MixedPrecision,
    TrainingRun,
    resume_from,
    resume_state,
    start_out_dir,
)
from synapse_toolkit.nn.volume_file import DatasetFile


class VolumeSpec(StrictModel):
    raw: str
    raw_dataset: str = "stack"
    labels: str | None = None
    labels_dataset: str = "stack"
    #: [[z0, z1], [y0, y1], [x0, x1]] voxels to use (default: all)
    roi: list[list[int]] | None = None
    #: validation copies: blur_sigma, contrast, noise_std, seed, match
    #: (:func:`synapse_toolkit.nn.consistency.perturb_volume`)
    perturb: dict[str, Any] | None = None
    #: scarce labels: only these z-sections (indices in the file) are labelled; the others are
    #: unknown (:data:`UNKNOWN`: no loss there, left out of validation scores)
    labelled_sections: list[int] | None = None


class DataSpec(StrictModel):
    volumes: list[VolumeSpec]
    validation: list[VolumeSpec] = Field(default_factory=list)


class TargetSpec(StrictModel):
    #: "affinities" or "package.module:function" taking (labels, config) → (target, mask)
    name: str = "affinities"
    long_range: list[int] = Field(default_factory=list)
    #: further (z, y, x) offsets after those, e.g. in-plane only for anisotropic sections:
    #: auxiliary outputs the loss trains; inference uses the first three (nearest neighbours)
    extra_offsets: list[tuple[int, int, int]] = Field(default_factory=list)

    def offsets(self) -> tuple[tuple[int, int, int], ...]:
        """Nearest neighbours, then ``long_range``'s, then ``extra_offsets``."""
        base = long_range_offsets(self.long_range) if self.long_range else NEAREST_NEIGHBOURS
        extra = tuple((int(z), int(y), int(x)) for z, y, x in self.extra_offsets)
        if any(o in base for o in extra) or len(set(extra)) != len(extra):
            raise ConfigError("target.extra_offsets: an offset is given twice")
        return (*base, *extra)


class TrainingSpec(DeviceOptions):
    """The affinity trainer's ``[training]`` section (and ``device``, ``mixed_precision``)."""

    iterations: int = Field(2000, ge=0)
    time_limit_minutes: float | None = None
    #: budget in CPU time of this process (all threads): "N minutes on 2 cores" = 2N here;
    #: unlike wall time it does not shrink when other jobs share the machine
    cpu_time_limit_minutes: float | None = None
    batch_size: int = Field(1, ge=1)
    lr: float = Field(5e-4, gt=0)
    loss: Literal["bce", "mse", "malis", "bce+malis", "mse+malis"] = "bce"
    malis_weight: float = 1.0
    malis_constrained: bool = True
    malis_start: int = 0  # iteration from which the MALIS term is added
    #: weight of MALIS's negative part (edges that merge objects) against its positive part
    malis_negative_weight: float = Field(1.0, gt=0)
    balance: bool = True
    input_shape: list[PositiveInt] = Field(
        default_factory=lambda: [64, 96, 96], min_length=3, max_length=3
    )
    seed: int = 0
    num_threads: int = 2
    out_dir: str = "runs/train"
    checkpoint_every: int = 250
    validate_every: int = 250
    validation_thresholds: list[float] = Field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    )
    validation_scoring: str = "quantile50"
    #: fragments the validation agglomerates, a setting as the waterz stage's ``fragments``
    #: (e.g. ``{method = "distance_2d"}``: distance-transform seeds in each section, far fewer
    #: fragments and far less memory on a noisy early model); default: waterz's own watershed
    validation_fragments: dict[str, Any] | None = None

    @field_validator("validation_fragments")
    @classmethod
    def _known_fragments(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        from synapse_toolkit.inference.fragments import METHODS

        if value is not None and value.get("method", "affinities") not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, not {value.get('method')!r}")
        return value

    #: "volume": VOI/ARAND of the 3D segmentation; "sections": mean over z-sections of the 2D
    #: scores (segmentation split into 2D pieces, truth = 2D components of the labelled cells;
    #: :mod:`synapse_toolkit.metrics.sections`), for serial-section data scored in 2D
    validation_metric: Literal["volume", "sections"] = "volume"
    log_every: int = 10
    #: continue from this checkpoint of the same model (weights, and the optimizer state when the
    #: checkpoint has it); iterations count on from its iteration
    init_from: str | None = None
    #: ``init_from`` may hold fewer output channels than this model (e.g. a nearest-neighbour
    #: affinity model when ``target.extra_offsets`` adds outputs): its channels are copied and
    #: each added channel starts as a copy of the nearest-neighbour channel of its offset's axis
    init_added_outputs: bool = False
    #: keep an exponential moving average of the weights (e.g. 0.999: ~1000 iterations); the
    #: average is what validation scores and what best.pt / ema.pt hold for export, while
    #: latest.pt keeps the raw weights (and the average) to continue from
    ema_decay: float | None = Field(None, gt=0, lt=1)
    #: also keep every periodic checkpoint as it<N>.pt (the averaged weights with ema_decay)
    keep_checkpoints: bool = False


class TrainConfig(StrictModel):
    model: dict[str, Any] = Field(default_factory=dict)
    data: DataSpec
    target: TargetSpec = Field(default_factory=TargetSpec)
    augment: dict[str, Any] = Field(default_factory=dict)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    #: what the model is for, copied into the exported model's metadata: e.g. modality
    #: ("ssTEM", "FIB-SEM", "phantom"), voxel_size_nm (z, y, x), training_data ("real"/"synthetic")
    domain: dict[str, Any] = Field(default_factory=dict)
    #: mean-teacher consistency on unlabelled volumes (:mod:`synapse_toolkit.nn.consistency`)
    semi_supervised: dict[str, Any] | None = None


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate an affinity training TOML."""
    return load_training_config(path, TrainConfig)


# -- data ---------------------------------------------------------------------------------------
#: label of voxels whose label is unknown (CREMI's ignore label: the metrics leave it out)
UNKNOWN = NEURON_IGNORE


def _mark_unlabelled(
    labels: np.ndarray, sections: list[int], where: str, depth: int | None = None, z0: int = 0
) -> np.ndarray:
    """``labels`` (the file's sections ``z0`` on, of ``depth``, default all of them) as uint64
    with every z-section outside ``sections`` (file indices) set to :data:`UNKNOWN`."""
    depth = labels.shape[0] if depth is None else depth
    bad = [z for z in sections if not 0 <= z < depth]
    if bad or not sections:
        raise ConfigError(f"{where}: labelled_sections {bad or sections} outside 0..{depth - 1}")
    out = labels.astype(np.uint64)
    keep = np.zeros(labels.shape[0], bool)
    keep[[z - z0 for z in sections if z0 <= z < z0 + labels.shape[0]]] = True
    out[~keep] = UNKNOWN
    return out


def known_box(labels: np.ndarray) -> tuple[list[int], list[int]] | None:
    """``(lo, hi)`` voxel bounds of the labelled voxels when some are :data:`UNKNOWN`, else None."""
    if labels.dtype != np.uint64:
        return None
    known = labels != UNKNOWN
    if known.all():
        return None
    idx = np.nonzero(known)
    if not idx[0].size:
        raise DataError("labels: every voxel is unknown (labelled_sections)")
    return [int(i.min()) for i in idx], [int(i.max()) + 1 for i in idx]


@overload
def load_volume(
    spec: VolumeSpec, need_labels: Literal[True] = True
) -> tuple[np.ndarray, np.ndarray]: ...


@overload
def load_volume(spec: VolumeSpec, need_labels: bool) -> tuple[np.ndarray, np.ndarray | None]: ...


def load_volume(spec: VolumeSpec, need_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw and labels of one training volume; with a ``roi``, only that region is read."""
    from synapse_toolkit.io.checks import roi_slices

    with DatasetFile(spec.raw, spec.raw_dataset) as rf:
        shape = rf.shape
        where = f"{spec.raw}:{spec.raw_dataset}"
        if len(shape) != 3:
            raise DataError(f"{where}: expected a 3D (z, y, x) volume, got shape {shape}")
        box = roi_slices(spec.roi, shape, where) if spec.roi is not None else None
        raw = rf.read(box)
    labels = None
    if spec.labels:
        with DatasetFile(spec.labels, spec.labels_dataset) as lf:
            if lf.shape != shape:
                raise DataError(
                    f"{spec.labels}:{spec.labels_dataset}: labels shape {lf.shape} != raw shape "
                    f"{shape} of {where}"
                )
            labels = lf.read(box)
    if need_labels and labels is None:
        raise DataError(f"{spec.raw}: training volume has no labels")
    if labels is not None and spec.labelled_sections is not None:
        z0 = box[0].start if box is not None else 0
        labels = _mark_unlabelled(labels, spec.labelled_sections, str(spec.labels), shape[0], z0)
    if spec.perturb:
        from synapse_toolkit.nn.consistency import perturb_volume

        raw = perturb_volume(raw, spec.perturb, spec.raw, labels)
    return raw, labels


def add_outputs(
    state: dict[str, Any], model_config: dict[str, Any], offsets: Sequence[Sequence[int]],
    source: str,
) -> dict[str, Any]:  # fmt: skip
    """``state`` of a model with the first channels of ``offsets`` grown to all of them (see
    ``training.init_added_outputs``); a model that differs otherwise is a ConfigError."""
    import torch

    old = dict(state.get("model_config") or {})
    n_old = int(old.get("out_channels", 0))
    if {**old, "out_channels": len(offsets)} != model_config or not 3 <= n_old <= len(offsets):
        raise ConfigError(
            f"training.init_from: {source} is not this model with fewer output channels"
        )
    sd = dict(state["state_dict"])
    old_offsets = [tuple(int(v) for v in o) for o in offsets[:n_old]]
    rows = list(range(n_old))
    for o in offsets[n_old:]:
        axis = int(np.argmax(np.abs(np.asarray(o))))
        rows.append(old_offsets.index(tuple(-1 if a == axis else 0 for a in range(3))))
    for key in ("head.weight", "head.bias"):
        sd[key] = sd[key][torch.as_tensor(rows)].clone()
    return {**state, "state_dict": sd, "model_config": model_config}


TargetFn = Callable[[np.ndarray, TargetSpec], tuple[np.ndarray, np.ndarray]]


def affinity_target(labels: np.ndarray, spec: TargetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Affinities (label 0 = boundary: affinity 0) and the mask of edges inside the crop whose
    two voxels are labelled (not :data:`UNKNOWN`)."""
    offsets = spec.offsets()
    mask = affinity_mask(labels.shape, offsets)
    if labels.dtype == np.uint64:
        unknown = labels == UNKNOWN
        if unknown.any():  # both ends known: the "affinity" of the known/unknown indicator
            mask = mask * labels_to_affinities((~unknown).astype(np.uint8), offsets)
    return labels_to_affinities(labels, offsets), mask


TARGETS: dict[str, TargetFn] = {"affinities": affinity_target}


def resolve_target(name: str) -> TargetFn:
    if name in TARGETS:
        return TARGETS[name]
    if ":" in name:
        mod, func = name.split(":", 1)
        try:
            return getattr(importlib.import_module(mod), func)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"target.name: cannot import {name!r}: {exc}") from exc
    raise ConfigError(
        f"target.name: unknown target {name!r}; use {sorted(TARGETS)} or module:function"
    )


def _crop_center(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    off = [(s - t) // 2 for s, t in zip(a.shape[-3:], shape, strict=True)]
    index: tuple[EllipsisType | slice, ...] = (
        ...,
        *[slice(o, o + t) for o, t in zip(off, shape, strict=True)],
    )
    return a[index]


class CropSampler:
    """Random augmented crops from several volumes (mirrored at their borders)."""

    def __init__(
        self,
        volumes: list[tuple[np.ndarray, np.ndarray]],
        input_shape,
        output_shape,
        augment: AugmentConfig,
        seed: int,
    ) -> None:
        self.input_shape = tuple(int(s) for s in input_shape)
        self.output_shape = tuple(int(s) for s in output_shape)
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self.context = [
            (i - o) // 2 for i, o in zip(self.input_shape, self.output_shape, strict=True)
        ]
        self.pad = [c + m + 1 for c, m in zip(self.context, augment.margin, strict=True)]
        self.volumes = []
        #: per volume, the region the output crop must overlap (its labelled voxels)
        self.boxes: list[tuple[list[int], list[int]]] = []
        sizes = []
        for raw, lab in volumes:
            if any(int(n) < o for n, o in zip(raw.shape[-3:], self.output_shape, strict=True)):
                raise ConfigError(
                    f"training.input_shape {list(self.input_shape)}: its output "
                    f"{list(self.output_shape)} does not fit in a training volume of shape "
                    f"{list(raw.shape)}; use a smaller input_shape"
                )
            box = known_box(lab)
            self.boxes.append(box or ([0, 0, 0], list(raw.shape)))
            pads = [(p, p) for p in self.pad]
            self.volumes.append(
                (
                    np.pad(raw, pads, mode="symmetric"),
                    np.pad(lab, pads, mode="symmetric"),
                    raw.shape,
                )
            )
            sizes.append(raw.size)
        self.probs = np.asarray(sizes, float) / sum(sizes)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        k = int(self.rng.choice(len(self.volumes), p=self.probs))
        raw, lab, shape = self.volumes[k]
        b_lo, b_hi = self.boxes[k]
        start = []
        for axis in range(3):
            # output region anywhere that overlaps the real (labelled part of the) volume
            lo = b_lo[axis] - self.output_shape[axis] // 2
            hi = b_hi[axis] - self.output_shape[axis] // 2
            o = int(self.rng.integers(lo, max(lo + 1, hi)))
            o = int(
                np.clip(
                    o,
                    -self.pad[axis] + self.context[axis] + self.augment.margin[axis],
                    shape[axis]
                    + self.pad[axis]
                    - self.output_shape[axis]
                    - self.context[axis]
                    - self.augment.margin[axis],
                )
            )
            start.append(o - self.context[axis] + self.pad[axis])
        return sample_augmented(raw, lab, start, self.input_shape, self.augment, self.rng)


def validation_sweep(
    affinities: np.ndarray, labels: np.ndarray, t_cfg: TrainingSpec
) -> list[dict[str, float]]:
    """Per validation threshold, the scores of the waterz segmentation of ``affinities`` (z, y,
    x offsets first) against ``labels``: VOI / Rand of the volume, or (``validation_metric =
    "sections"``) the mean 2D section scores (cells: labels != 0)."""
    from synapse_toolkit.inference.agglomeration import sweep
    from synapse_toolkit.inference.fragments import make_fragments
    from synapse_toolkit.metrics.sections import mean_section_scores

    score = mean_section_scores if t_cfg.validation_metric == "sections" else None
    fragments = make_fragments(affinities, t_cfg.validation_fragments)
    return sweep(affinities, labels, t_cfg.validation_thresholds, fragments=fragments,
                 scoring=t_cfg.validation_scoring, score=score)  # fmt: skip


# -- loop ---------------------------------------------------------------------------------------
def train(
    cfg: TrainConfig, log: Callable[[str], None] = print, resume: bool = False
) -> dict[str, Any]:
    """Run training; returns a summary (paths of the last and best checkpoints, metrics).

    ``training.init_from`` continues from a checkpoint's weights (and optimizer, average,
    iteration) for ``iterations`` more. ``resume`` instead continues an interrupted run from
    ``<out_dir>/latest.pt`` exactly (also the crop sampler's, torch's and the consistency
    teacher's states and the best validation so far) up to ``iterations`` in all.
    """
    import torch

    from synapse_toolkit.nn.malis import malis_loss
    from synapse_toolkit.nn.unet import UNet3D, UNetConfig, apply_init

    t_cfg = cfg.training
    run = TrainingRun(seed=t_cfg.seed, num_threads=t_cfg.num_threads, device=t_cfg.device,
                      time_limit_minutes=t_cfg.time_limit_minutes,
                      cpu_time_limit_minutes=t_cfg.cpu_time_limit_minutes)  # fmt: skip
    device = run.device
    precision = MixedPrecision(t_cfg.mixed_precision, device)
    offsets = cfg.target.offsets()
    model_dict = dict(cfg.model)
    init = str(model_dict.pop("init", "default"))  # "kaiming": He-normal convolutions
    try:
        model_cfg = UNetConfig.from_dict({"out_channels": len(offsets), **model_dict})
        net = UNet3D(model_cfg).to(device)
    except (TypeError, ValueError) as exc:  # an unknown key, a wrong shape of a value
        raise ConfigError(f"[model]: {' '.join(str(exc).split())}") from None
    apply_init(net, init)
    input_shape = tuple(t_cfg.input_shape)
    if not net.is_valid_input_shape(input_shape):
        raise ConfigError(
            f"training.input_shape: {list(input_shape)} is not valid for this U-Net; "
            f"try {list(net.valid_input_shape(input_shape))}"
        )
    output_shape = net.output_shape(input_shape)
    target_fn = resolve_target(cfg.target.name)
    aug = AugmentConfig.from_table(cfg.augment)
    volumes = [load_volume(v) for v in cfg.data.volumes]
    validation = [load_volume(v) for v in cfg.data.validation]
    sampler = CropSampler(volumes, input_shape, output_shape, aug, t_cfg.seed)
    # the sampler keeps padded copies: drop the unpadded labels (the raw may feed consistency)
    labelled_raw = [raw for raw, _ in volumes]
    del volumes
    out_dir = start_out_dir(t_cfg.out_dir, resume, t_cfg.init_from)
    opt = torch.optim.Adam(net.parameters(), lr=t_cfg.lr)
    it0 = 0
    resumed_ema: dict[str, Any] | None = None  # the average a latest.pt carries
    stopped = None
    if resume:
        stopped = resume_from(out_dir, net, opt, precision, sampler.rng, log)
    if stopped is not None:
        resumed_ema = stopped.get("ema_state_dict")
        it0 = int(stopped["iteration"])
        for group in opt.param_groups:  # the configured learning rate, as with init_from
            group["lr"] = t_cfg.lr
    elif t_cfg.init_from:
        from synapse_toolkit.nn.checkpoint import load_state

        if t_cfg.init_from.endswith(".onnx") or not Path(t_cfg.init_from).exists():
            from synapse_toolkit.nn.adapt import onnx_state  # an exported model or registry name

            state = onnx_state(t_cfg.init_from)
        else:
            state = load_state(t_cfg.init_from)
        if t_cfg.init_added_outputs:
            state = add_outputs(state, model_cfg.to_dict(), offsets, t_cfg.init_from)
            state.pop("optimizer", None)
        if state.get("model_config") != model_cfg.to_dict():
            raise ConfigError(
                f"training.init_from: {t_cfg.init_from} holds another model than [model]"
            )
        net.load_state_dict(state["state_dict"])
        resumed_ema = state.get("ema_state_dict")
        has_opt = "optimizer" in state
        if has_opt:
            opt.load_state_dict(state["optimizer"])
            for group in opt.param_groups:  # the configured learning rate, not the saved one
                group["lr"] = t_cfg.lr
        it0 = int(state.get("iteration", 0))
        log(
            f"continuing from {t_cfg.init_from} at iteration {it0} "
            f"({'with its' if has_opt else 'new'} optimizer state)"
        )
    from synapse_toolkit.nn.consistency import consistency_start_note, make_consistency
    from synapse_toolkit.nn.ema import ema_copy, ema_update

    ema = None
    if t_cfg.ema_decay is not None:  # after init_from: the average starts from its weights
        ema = ema_copy(net)
        if resumed_ema is not None:
            ema.load_state_dict(resumed_ema)
    # after init_from: the teacher starts from the student's weights
    consistency = make_consistency(
        cfg.semi_supervised, net, input_shape, output_shape, labelled_raw, t_cfg.seed
    )
    del labelled_raw
    if stopped is not None and consistency is not None:
        consistency.load_state(stopped["resume"]["consistency"])
    elif consistency is not None and consistency.spec.start < it0:
        log(consistency_start_note(consistency.spec, it0))
    metrics_log = (out_dir / "metrics.jsonl").open("a")
    log(
        f"model: {net.num_parameters()} parameters, input {input_shape} -> output {output_shape}, "
        f"device {device}, {precision.describe()}"
    )

    #: the weights that are validated and exported: the average when there is one
    scored = ema if ema is not None else net

    def checkpoint(it: int, name: str, extra: dict[str, Any], weights: Any = net) -> Path:
        path = out_dir / name
        if ema is not None and weights is net:
            extra = {**extra, "ema_state_dict": ema.state_dict()}
        run.save(
            {
                "model_config": model_cfg.to_dict(),
                "state_dict": weights.state_dict(),
                "iteration": it,
                "input_shape": list(input_shape),
                "output_shape": list(output_shape),
                "offsets": [list(o) for o in offsets],
                "optimizer": opt.state_dict(),
                "train_config": cfg.model_dump(),
                **extra,
            },
            path,
        )
        return path

    def validate(it: int) -> dict[str, Any] | None:
        if not validation:
            return None
        from synapse_toolkit.inference.tiled import predict_tiled

        scored.eval()
        rows_all = []
        with torch.no_grad():

            def predict(x: np.ndarray) -> np.ndarray:
                return scored(torch.from_numpy(x).to(device)).cpu().numpy()

            for raw, lab in validation:
                out = np.zeros((len(offsets), *raw.shape), np.float32)
                predict_tiled(predict, raw, out, input_shape, output_shape, overlap=(4, 8, 8))
                rows_all.append(validation_sweep(out[:3], lab, t_cfg))
        if scored is net:
            net.train()
        # mean over validation volumes, per threshold
        rows = [
            {k: float(np.mean([r[i][k] for r in rows_all])) for k in rows_all[0][i]}
            for i in range(len(rows_all[0]))
        ]
        best = min(rows, key=lambda r: r["cremi_score"])
        return {"iteration": it, "best": best, "sweep": rows}

    run.restart_clock()
    best_score = np.inf
    best_path = None
    loss_avg = None
    it = it0
    end = t_cfg.iterations if stopped is not None else it0 + t_cfg.iterations
    val = None
    if stopped is not None:
        best_score = float(stopped["resume"]["best_score"])
        best_path = Path(stopped["resume"]["best_path"]) if stopped["resume"]["best_path"] else None
    elif it0 and validation:  # continuing: the starting weights compete for best.pt too
        val = validate(it0)
        if val is not None:
            b = val["best"]
            log(f"validation it {it0} (start): best threshold {b['threshold']} CREMI "
                f"{b['cremi_score']:.3f}")  # fmt: skip
            metrics_log.write(json.dumps({"validation": val}) + "\n")
            best_score = b["cremi_score"]
            best_path = checkpoint(it0, "best.pt", {"validation": val}, scored)
    for it in range(it0 + 1, end + 1):
        raws, targets, masks, labels = [], [], [], []
        for _ in range(t_cfg.batch_size):
            r, lab = sampler.sample()
            tgt, msk = target_fn(lab, cfg.target)
            raws.append(r[None])
            targets.append(_crop_center(tgt, output_shape))
            masks.append(_crop_center(msk, output_shape))
            labels.append(_crop_center(lab, output_shape))
        x = torch.from_numpy(np.stack(raws)).to(device)
        y = torch.from_numpy(np.stack(targets)).to(device)
        m_np = np.stack(masks)
        if t_cfg.balance:
            w_np = np.stack(
                [
                    np.stack([balance_weights(t[c], mm[c]) for c in range(t.shape[0])])
                    for t, mm in zip(targets, masks, strict=True)
                ]
            )
        else:
            w_np = m_np
        w = torch.from_numpy(w_np.astype(np.float32)).to(device)
        with precision.autocast():
            pred = net(x)
        pred = pred.float()
        loss = torch.zeros((), device=device)
        if "bce" in t_cfg.loss:
            loss = loss + (
                torch.nn.functional.binary_cross_entropy(
                    pred.clamp(1e-6, 1 - 1e-6), y, reduction="none"
                )
                * w
            ).sum() / w.sum().clamp(min=1)
        if "mse" in t_cfg.loss:
            loss = loss + (((pred - y) ** 2) * w).sum() / w.sum().clamp(min=1)
        if "malis" in t_cfg.loss and it >= t_cfg.malis_start:
            nn_pred = pred[:, :3]
            lab_b = np.stack(labels)
            known = lab_b != UNKNOWN if lab_b.dtype == np.uint64 else None
            loss = loss + t_cfg.malis_weight * malis_loss(
                nn_pred,
                lab_b,
                NEAREST_NEIGHBOURS,
                constrained=t_cfg.malis_constrained,
                mask=None if known is None or known.all() else known,
                negative_weight=t_cfg.malis_negative_weight,
            )
        if consistency is not None:
            loss = loss + consistency.loss(net, it, device)
        precision.step(loss, opt)
        if consistency is not None:
            consistency.update_teacher(net)
        if ema is not None and t_cfg.ema_decay is not None:
            ema_update(ema, net, t_cfg.ema_decay)
        lv = float(loss.detach())
        loss_avg = lv if loss_avg is None else 0.95 * loss_avg + 0.05 * lv
        elapsed, cpu_used = run.elapsed, run.cpu_used
        if it % t_cfg.log_every == 0:
            log(f"it {it} loss {lv:.4f} avg {loss_avg:.4f} {elapsed:.0f}s (cpu {cpu_used:.0f}s)")
            record = {"iteration": it, "loss": lv, "time_s": elapsed, "cpu_s": cpu_used}
            if consistency is not None and consistency.last:
                record.update(consistency.last)
                log("  " + " ".join(f"{k} {v:.4f}" for k, v in consistency.last.items()))
            metrics_log.write(json.dumps(record) + "\n")
            metrics_log.flush()
        out_of_time = run.out_of_time()
        last = it == end or out_of_time
        validated = None
        if it % t_cfg.validate_every == 0 or last:
            validated = val = validate(it)
            if val is not None:
                b = val["best"]
                log(
                    f"validation it {it}: best threshold {b['threshold']} VOI {b['voi']:.3f} "
                    f"(split {b['voi_split']:.3f} merge {b['voi_merge']:.3f}) "
                    f"ARAND {b['arand']:.3f} CREMI {b['cremi_score']:.3f}"
                )
                metrics_log.write(json.dumps({"validation": val}) + "\n")
                metrics_log.flush()
                if b["cremi_score"] < best_score:
                    best_score = b["cremi_score"]
                    best_path = checkpoint(it, "best.pt", {"validation": val}, scored)
        if it % t_cfg.checkpoint_every == 0 or last:
            state = resume_state(
                opt, precision, sampler.rng, best_score=float(best_score),
                best_path=str(best_path or ""),
                consistency=consistency.state() if consistency is not None else {},
            )  # fmt: skip
            checkpoint(it, "latest.pt", {"loss": loss_avg, "resume": state})
            if ema is not None:
                checkpoint(it, "ema.pt", {"loss": loss_avg}, ema)
            if t_cfg.keep_checkpoints:  # with this iteration's validation, if any (export)
                kept = {"loss": loss_avg, **({"validation": validated} if validated else {})}
                checkpoint(it, f"it{it:06d}.pt", kept, scored)
        if out_of_time:
            log(run.budget_line(it))
            break
    metrics_log.close()
    if best_path is None:
        best_path = out_dir / "latest.pt"
    return {
        "iterations": it,
        "latest": str(out_dir / "latest.pt"),
        "best": str(best_path),
        "best_cremi_score": None if best_score == np.inf else best_score,
        "time_s": run.elapsed,
        "cpu_s": run.cpu_used,
    }
