"""Train the EMSynConn pruning CNN on candidates labelled by matching to the ground truth.

Imports torch. Candidates come from the *predicted* signed proximity (the trained polarity U-Net,
ONNX) and the ground-truth segmentation of each training volume, so the CNN learns to reject the
candidates the detector really produces. A candidate is positive when a ground-truth pair matches
it the CREMI way (same segment labels, both sites within 400 nm).

Config (TOML)::

    [data]
    files = [...]; phantom_seeds = [...]; phantom_cache = "runs/phantom-cache"
                                    # files: paths or "registry:<name>" (fetched if missing)
    validation_seeds = [...]        # phantom volumes held out for validation
    [[data.validation]]             # and/or regions of CREMI files held out for validation
    file = "registry:cremi/sample_C"; roi = [[100, 125], [0, 1250], [0, 1250]]
    polarity_model = "plugins/syntk_synapses/models/polarity.onnx"
    [candidates]                    # CandidateSettings fields
    [patch]                         # shape = [8, 48, 48], downsample = 2
    [training]                      # iterations, batch_size, lr, time_limit_minutes, onnx, ...
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from synapse_toolkit.config import StrictModel, load_training_config
from synapse_toolkit.errors import ConfigError, DataError
from synapse_toolkit.inference.onnx_model import OnnxModel
from synapse_toolkit.nn.run import (
    MixedPrecision,
    RunSection,
    TrainingRun,
    resume_from,
    resume_state,
    start_out_dir,
)
from synapse_toolkit.nn.volume_file import volume_path
from synapse_toolkit.synapses.candidates import CandidateSettings, find_candidates
from synapse_toolkit.synapses.pruning import PatchSettings, candidate_patches, label_candidates
from synapse_toolkit.synapses.targets import Grid
from synapse_toolkit.synapses.train_detectors import Region, phantom_file, read_region


class PrunerData(StrictModel):
    files: list[str] = Field(default_factory=list)
    phantom_seeds: list[int] = Field(default_factory=list)
    validation_seeds: list[int] = Field(default_factory=list)
    #: regions of CREMI files held out for validation (as the detectors' ``data.validation``)
    validation: list[Region] = Field(default_factory=list)
    phantom_cache: str = "runs/phantom-cache"
    polarity_model: str = "plugins/syntk_synapses/models/polarity.onnx"
    #: "model": candidates from the polarity U-Net; "noisy-truth": from the ground-truth signed
    #: proximity plus smooth noise of std ``noise_std`` (spurious and distorted components);
    #: "both": the union (validation always uses the model's candidates when it is used)
    proximity_source: Literal["model", "noisy-truth", "both"] = "model"
    noise_std: float = 0.3
    #: "truth": candidates on the ground-truth segmentation; "predicted": on the segmentation of
    #: ``neuron_model`` + waterz (``waterz_scoring`` at ``waterz_threshold``), so the CNN sees
    #: the split and merged segment masks a pipeline really gives it; "both": the union.
    #: Labels always come from matching to the truth the CREMI way.
    segmentation_source: Literal["truth", "predicted", "both"] = "truth"
    neuron_model: str | None = None
    waterz_threshold: float = 0.5
    waterz_scoring: str = "quantile75"
    #: average ``neuron_model``'s affinities over the 8 mirrorings (as the main job does)
    neuron_tta: bool = False
    cache_dir: str = "runs/pruner-cache"


class PrunerTraining(RunSection):
    iterations: int = 1500
    time_limit_minutes: float | None = 15.0
    batch_size: int = 16
    num_fmaps: int = 16
    log_every: int = 50
    validate_every: int = 100
    out_dir: str = "runs/train-pruner"


class PrunerTrainConfig(StrictModel):
    data: PrunerData
    candidates: dict[str, Any] = Field(default_factory=dict)
    patch: dict[str, Any] = Field(default_factory=dict)
    training: PrunerTraining = Field(default_factory=PrunerTraining)


def load_pruner_config(path: str | Path) -> PrunerTrainConfig:
    return load_training_config(path, PrunerTrainConfig)


def noisy_truth_proximity(data: Any, noise_std: float, seed: int) -> np.ndarray:
    """Ground-truth signed proximity plus smooth Gaussian noise (std ``noise_std``, correlation
    ~1 section x 32 nm), clipped to [-1, 1]: a stand-in for an imperfect polarity detector."""
    from scipy import ndimage

    from synapse_toolkit.synapses.targets import TargetSettings, targets_from_cremi

    gt = targets_from_cremi(data, TargetSettings(), only=("proximity",))["proximity"]
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=gt.shape), (1.0, 8.0, 8.0))
    noise *= noise_std / (noise.std() + 1e-12)
    return np.clip(gt + noise, -1.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class SegmentationSource:
    """Where candidate segment ids come from: the truth (``model`` None) or an affinity model
    + waterz at one threshold, from waterz's own fragments or ``fragments`` (a setting of
    :func:`synapse_toolkit.inference.fragments.make_fragments`)."""

    model: str | None = None
    threshold: float = 0.5
    scoring: str = "quantile75"
    tta: bool = False  # average the affinities over the 8 mirrorings
    fragments: tuple[tuple[str, Any], ...] = ()  # e.g. (("method", "distance_2d"),)

    def key(self) -> Any:
        if self.model is None:
            return "truth"
        st = Path(self.model).stat()
        key: list[Any] = [st.st_size, st.st_mtime, self.threshold, self.scoring]
        key = [*key, "tta"] if self.tta else key  # (keeps earlier cache keys valid)
        return [*key, dict(self.fragments)] if self.fragments else key


def segmentation_sources(data: PrunerData) -> list[SegmentationSource]:
    """The segmentations the training candidates are found on (``segmentation_source``)."""
    out = []
    if data.segmentation_source in ("truth", "both"):
        out.append(SegmentationSource())
    if data.segmentation_source in ("predicted", "both"):
        out.append(SegmentationSource(data.neuron_model, data.waterz_threshold,
                                      data.waterz_scoring, tta=data.neuron_tta))  # fmt: skip
    return out


def predicted_segmentation(raw: np.ndarray, source: SegmentationSource) -> np.ndarray:
    """Neuron segmentation of ``raw`` by the affinity model (ONNX, tiled with the
    ``affinity-unet`` stage's default overlap, optionally with its 8-mirroring TTA) and waterz at
    one threshold."""
    from synapse_toolkit.affinities import NEAREST_NEIGHBOURS
    from synapse_toolkit.inference.agglomeration import agglomerate
    from synapse_toolkit.inference.fragments import make_fragments

    assert source.model is not None
    model = OnnxModel(source.model)
    offsets = model.metadata.get("offsets") or NEAREST_NEIGHBOURS[:3]
    affs = model.predict(raw, overlap=(4, 8, 8), tta_offsets=offsets if source.tta else None)
    frags = make_fragments(affs, dict(source.fragments))
    return agglomerate(affs, [source.threshold], scoring=source.scoring, fragments=frags)[0]


def volume_candidates(
    path: Path,
    model: OnnxModel | None,
    cs: CandidateSettings,
    ps: PatchSettings,
    cache_dir: Path | None = None,
    noise_std: float = 0.3,
    segmentation: SegmentationSource | None = None,
    roi: list[list[int]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(patches, labels) of the candidates of one CREMI file, or of its region ``roi`` ((start,
    stop) voxels per z, y, x); cached by file, region, model and settings.

    Without ``model`` the proximity is :func:`noisy_truth_proximity`; candidates use the
    ``segmentation`` source (default: the truth), labels always the truth."""
    seg_source = segmentation or SegmentationSource()
    model_key = [model.path.stat().st_size, model.path.stat().st_mtime] if model else noise_std
    parts = [str(path), model_key, cs.__dict__, ps.__dict__]
    if seg_source.model is not None:  # (keeps the cache keys of truth-only runs unchanged)
        parts.append(seg_source.key())
    if roi is not None:
        parts.append(f"roi {roi}")
    key = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]
    cached = cache_dir / f"{path.stem}-{key}.npz" if cache_dir else None
    if cached is not None and cached.exists():
        z = np.load(cached)
        return z["patches"], z["labels"]
    data = read_region(Region(file=str(path), roi=roi))
    if data.raw is None or data.neuron_ids is None or data.annotations is None:
        raise DataError(f"{path}: pruner training needs raw, neuron_ids and annotations")
    raw = data.raw.read()
    truth_seg = data.neuron_ids.read()
    seg = truth_seg if seg_source.model is None else predicted_segmentation(raw, seg_source)
    grid = Grid.of(data.raw)
    if model is not None:
        prox = model.predict(raw)[0]
    else:
        seed = int(hashlib.sha256(path.name.encode()).hexdigest()[:8], 16)
        prox = noisy_truth_proximity(data, noise_std, seed)
    cands = find_candidates(prox, seg, grid, cs)
    labels = label_candidates(cands, data.annotations, truth_seg, grid)
    patches = candidate_patches(cands, raw, prox, seg, ps)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, patches=patches, labels=labels)
        os.replace(tmp, cached)
    return patches, labels


def _augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = []
    for p in batch:
        for axis in (1, 2, 3):
            if rng.random() < 0.5:
                p = np.flip(p, axis)
        if rng.random() < 0.5:
            p = np.swapaxes(p, 2, 3)
        out.append(np.ascontiguousarray(p))
    return np.stack(out)


def _collect(
    files: list[Region],
    model: OnnxModel | None,
    cs: CandidateSettings,
    ps: PatchSettings,
    cache: Path,
    noise_std: float,
    segmentation: SegmentationSource | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    ps_list, ls_list = [], []
    for f in files:
        p, lab = volume_candidates(volume_path(f.file), model, cs, ps, cache, noise_std,
                                   segmentation, f.roi)  # fmt: skip
        ps_list.append(p)
        ls_list.append(lab)
    shape = (0, 4, *ps.shape)
    patches = np.concatenate(ps_list) if ps_list else np.zeros(shape, np.float32)
    labels = np.concatenate(ls_list) if ls_list else np.zeros(0, bool)
    return patches, labels


def train_pruner(
    cfg: PrunerTrainConfig, log: Callable[[str], None] = print, resume: bool = False
) -> dict[str, Any]:
    """Collect labelled candidates, train the CNN with balanced batches, export the best
    (validation balanced accuracy) network to ONNX. ``resume``: continue an interrupted run
    from ``<out_dir>/latest.pt`` (written at every validation) exactly (:func:`resume_from`)."""
    import torch

    from synapse_toolkit.nn.export import export_model
    from synapse_toolkit.nn.pruner import PrunerCNN, PrunerConfig

    t = cfg.training
    run = TrainingRun(seed=t.seed, num_threads=t.num_threads, device=t.device,
                      time_limit_minutes=t.time_limit_minutes)  # fmt: skip
    dev = run.device
    precision = MixedPrecision(t.mixed_precision, dev)
    rng = np.random.default_rng(t.seed)
    cs = CandidateSettings(**cfg.candidates)
    patch: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in cfg.patch.items()
    }
    ps = PatchSettings(**patch)
    model = (
        OnnxModel(cfg.data.polarity_model, n_threads=t.num_threads)
        if cfg.data.proximity_source in ("model", "both")
        else None
    )
    cache = Path(cfg.data.cache_dir)
    train_files = [Region(file=f) for f in cfg.data.files]
    train_files += [Region(file=str(phantom_file(s, cfg.data.phantom_cache)))
                    for s in cfg.data.phantom_seeds]  # fmt: skip
    val_files = [Region(file=str(phantom_file(s, cfg.data.phantom_cache)))
                 for s in cfg.data.validation_seeds]  # fmt: skip
    val_files += cfg.data.validation
    if not train_files:
        raise ConfigError("data: give `files` or `phantom_seeds`")
    start = time.time()
    d = cfg.data
    if d.segmentation_source != "truth" and not d.neuron_model:
        raise ConfigError("data: segmentation_source = predicted/both needs `neuron_model`")
    seg_sources = segmentation_sources(d)
    prox_sources: list[OnnxModel | None] = []
    if d.proximity_source in ("model", "both"):
        prox_sources.append(model)
    if d.proximity_source in ("noisy-truth", "both"):
        prox_sources.append(None)
    # every proximity source on the truth segmentation; on a predicted segmentation only the
    # pipeline's own proximity (noisy truth x split segments would flood the set with negatives)
    combos = [(pm, sg) for sg in seg_sources if sg.model is None for pm in prox_sources]
    combos += [(model, sg) for sg in seg_sources if sg.model is not None]
    parts = [_collect(train_files, pm, cs, ps, cache, d.noise_std, sg) for pm, sg in combos]
    # float16 halves the memory of tens of thousands of patches; batches go back to float32
    x_tr = np.concatenate([p.astype(np.float16) for p, _ in parts])
    y_tr = np.concatenate([lab for _, lab in parts])
    # validation: the proximity the pipeline uses, on every segmentation source
    val_parts = [_collect(val_files, model, cs, ps, cache, d.noise_std, sg) for sg in seg_sources]
    x_va = np.concatenate([p for p, _ in val_parts])
    y_va = np.concatenate([lab for _, lab in val_parts])
    took = time.time() - start
    log(f"candidates: train {len(y_tr)} ({int(y_tr.sum())} positive), "
        f"validation {len(y_va)} ({int(y_va.sum())} positive), {took:.0f}s")  # fmt: skip
    pos, neg = np.flatnonzero(y_tr), np.flatnonzero(~y_tr)
    if len(pos) == 0 or len(neg) == 0:
        raise DataError("pruner training needs both positive and negative candidates")
    net = PrunerCNN(PrunerConfig(num_fmaps=t.num_fmaps)).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=t.lr, weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    out_dir = start_out_dir(t.out_dir, resume)
    metrics = (out_dir / "metrics.jsonl").open("a")  # a continued run keeps the earlier lines

    def evaluate() -> dict[str, float]:
        if len(y_va) == 0:
            return {}
        net.eval()
        with torch.no_grad():
            logits = net(torch.from_numpy(x_va).to(dev)).cpu().numpy().reshape(-1)
        net.train()
        pred = logits > 0
        tp = float((pred & y_va).sum())
        tpr = tp / max(1, y_va.sum())
        tnr = float((~pred & ~y_va).sum()) / max(1, (~y_va).sum())
        return {"balanced_accuracy": (tpr + tnr) / 2, "recall": tpr, "specificity": tnr,
                "precision": tp / max(1.0, float(pred.sum()))}  # fmt: skip

    best = -1.0
    best_state = None
    stopped = resume_from(out_dir, net, opt, precision, rng, log) if resume else None
    if stopped is not None:
        best, best_state = float(stopped["resume"]["best"]), stopped["resume"]["best_state"] or None
    it = it0 = int(stopped["iteration"]) if stopped is not None else 0
    run.restart_clock()
    half = t.batch_size // 2
    for it in range(it0 + 1, t.iterations + 1):
        idx = np.concatenate([rng.choice(pos, half), rng.choice(neg, t.batch_size - half)])
        x = torch.from_numpy(_augment(x_tr[idx], rng).astype(np.float32)).to(dev)
        y = torch.from_numpy(y_tr[idx].astype(np.float32))[:, None].to(dev)
        with precision.autocast():
            logits = net(x)
        loss = loss_fn(logits.float(), y)
        precision.step(loss, opt)
        if it % t.log_every == 0:
            log(f"it {it} loss {float(loss.detach()):.4f} {run.elapsed:.0f}s")
        out_of_time = run.out_of_time()
        if it % t.validate_every == 0 or it == t.iterations or out_of_time:
            val = evaluate()
            score = val.get("balanced_accuracy", -float(loss.detach()))
            metrics.write(json.dumps({"iteration": it, "loss": float(loss.detach()), **val}) + "\n")
            metrics.flush()
            log(f"validation it {it}: {json.dumps(val)}")
            if score >= best:
                best = score
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            extra = resume_state(opt, precision, rng, best=float(best), best_state=best_state or {})
            run.save({"config": net.config.to_dict(), "state_dict": net.state_dict(),
                      "iteration": it, "resume": extra}, out_dir / "latest.pt")  # fmt: skip
        if out_of_time:
            log(run.budget_line(it))
            break
    metrics.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    net = net.cpu().eval()
    run.save({"config": net.config.to_dict(), "state_dict": net.state_dict()}, out_dir / "best.pt")
    onnx_path = Path(t.onnx) if t.onnx else out_dir / "pruner.onnx"
    meta = {"kind": "pruner", "downsample": ps.downsample, "channels": "em,proximity,pre,post",
            "proximity_source": cfg.data.proximity_source, "noise_std": cfg.data.noise_std,
            "segmentation_source": cfg.data.segmentation_source,
            "candidate_settings": cs.__dict__, "config": net.config.to_dict()}  # fmt: skip
    info = export_model(net, ps.shape, onnx_path, metadata=meta)
    summary = {"iterations": it, "best_validation_balanced_accuracy": best,
               "n_train": int(len(y_tr)), "n_train_positive": int(y_tr.sum()),
               "n_validation": int(len(y_va)), "time_s": time.time() - start, **info}  # fmt: skip
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log(json.dumps(summary))
    return summary
