"""Train the synapse cluster encoder (3D conv autoencoder or VAE) on phantom synapse patches.

``syntk train cluster-encoder CONFIG.toml``. Data: phantom volumes made in memory from
``data.seeds`` (annotated partners → one oriented patch per synapse); each synapse also gets
``augment.views`` extra patches cut with jittered orientation and centre. With
``patch.align = "contact"`` the patches are contact-aligned (rows straightened on the phantom's
segmentation, a contact-row mask as second channel) and the encoder averages its features over
the contact (``contact_pool``). Training is denoising:
the input is a jittered view further changed by elastic warping, intensity (gain, offset,
gamma), noise and missing sections; the target is the synapse's canonical patch, so the code
has to ignore those nuisances. Mirroring across the pre→post axis is applied to both.
With ``model.arch = "profile"`` the network pools the contact into one cross-section first
(:class:`~synapse_toolkit.nn.cluster_encoder.ProfileEncoder`) and reconstructs the clean
patch's cross-section. ``model.contrastive > 0`` adds SimCLR's NT-Xent loss between the codes of
two independently augmented views of each synapse (the other synapses of the batch are the
negatives), so that the code keeps what tells synapses apart and drops what the augmentations
change; ``model.reconstruction = 0`` trains on that loss alone.

Selection: every ``eval_every`` iterations the codes of each validation seed's synapses are
clustered (k-means per volume, k = number of phantom types, as the held-out benchmark does) and
the checkpoint with the best mean validation ARI is exported (the validation seeds are neither
training nor test data).
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synapse_toolkit.errors import ConfigError
from synapse_toolkit.nn.run import DeviceOptions, start_out_dir
from synapse_toolkit.synapses import CLEFT_THRESHOLD
from synapse_toolkit.synapses.patches import (
    PatchSpec,
    contact_patches,
    extract_patches,
    standardise,
    standardise_channels,
    synapse_sites,
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Model):
    seeds: list[int] = Field(default_factory=lambda: list(range(2001, 2009)))
    validation_seeds: list[int] = Field(default_factory=lambda: [2101, 2102])
    shape: tuple[int, int, int] = (24, 512, 512)
    types: int = Field(3, ge=1, le=6)
    cache_dir: Path | None = Field(None, description="Keep prepared patches here (npz).")
    validation_pooled: bool = Field(
        False,
        description="Score validation with one k-means over all validation volumes "
        "(how encoders before the per-volume score were selected).",
    )


class PatchConfig(_Model):
    size_nm: tuple[float, float, float] = (200.0, 512.0, 512.0)
    voxel_size_nm: tuple[float, float, float] = (40.0, 8.0, 8.0)
    align: Literal["sites", "contact"] = Field(
        "sites", description="Orient by the sites only, or also straighten on the segmentation."
    )
    reach_nm: float = Field(64.0, gt=0, description="Contact search reach either side (nm).")
    straighten_on: Literal["segmentation", "predicted_cleft"] = Field(
        "segmentation",
        description="With align = 'contact': the true segment boundary, or the cleft "
        "probability of `cleft_model` above `cleft_threshold` (as the main job straightens).",
    )
    cleft_model: str = Field("synapses/clefts", description="Registry name of the cleft U-Net.")
    cleft_threshold: float = Field(CLEFT_THRESHOLD, gt=0, lt=1)


class NetConfig(_Model):
    channels: tuple[int, ...] = (8, 16, 32, 32)
    latent: int = Field(16, ge=2)
    variational: bool = False
    beta: float = Field(1e-3, ge=0, description="KL weight (VAE).")
    loss_sigma_nm: float | None = Field(
        None,
        gt=0,
        description="Weight the reconstruction error in-plane by a Gaussian of this "
        "sigma (nm) around the synapse centre; none = uniform.",
    )
    arch: Literal["conv3d", "profile"] = Field(
        "conv3d", description="3D conv on the patch, or pool the contact first (profile)."
    )
    profile_norm: Literal["std", "cytoplasm"] = "std"
    profile_columns: tuple[int, int] | None = Field(
        None, description="Profile: keep columns [start, stop) of the cross-section."
    )
    reconstruction: float = Field(1.0, ge=0, description="Weight of the reconstruction loss.")
    contrastive: float = Field(0.0, ge=0, description="Weight of the NT-Xent loss (0 = off).")
    temperature: float = Field(0.2, gt=0, description="NT-Xent temperature.")


class AugmentConfig(_Model):
    views: int = Field(8, ge=1)
    angle_jitter_deg: float = 20.0
    centre_jitter_nm: float = 24.0
    elastic_sigma_px: float = 1.0
    gain: float = 0.2
    offset: float = 0.2
    gamma: float = 0.3
    noise_std: float = 0.1
    missing_prob: float = 0.1


class TrainConfig(_Model, DeviceOptions):
    """The encoder's ``[training]`` section (and ``device``, ``mixed_precision``)."""

    iterations: int = 3000
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    num_threads: int = 1
    time_limit_minutes: float | None = 20.0
    eval_every: int = 250
    out_dir: Path = Path("runs/cluster_encoder")


class ExportConfig(_Model):
    path: Path = Path("runs/cluster_encoder/cluster_encoder.onnx")


class ClusterEncoderConfig(_Model):
    kind: Literal["cluster-encoder"] = "cluster-encoder"
    data: DataConfig = DataConfig()
    patch: PatchConfig = PatchConfig()
    model: NetConfig = NetConfig()
    augment: AugmentConfig = AugmentConfig()
    training: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()


def load_cluster_config(path: str | Path) -> ClusterEncoderConfig:
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML ({exc})") from None
    try:
        return ClusterEncoderConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{p}: {key}: {err['msg']}") from None


# -- data ---------------------------------------------------------------------------------------


def phantom_synapses(
    seed: int, shape: tuple[int, int, int], types: int, *, with_labels: bool = False
) -> tuple[Any, ...]:
    """(raw volume, annotated partner table, true type per synapse id row-aligned with sites)
    and, ``with_labels``, the neuron segmentation last."""
    from synapse_toolkit.data import PartnerTable
    from synapse_toolkit.phantom.em import EMPhantom
    from synapse_toolkit.phantom.params import EMPhantomParams

    ph = EMPhantom(EMPhantomParams(shape=shape, seed=seed, n_types=types))
    data = ph.generate()
    assert data.annotations is not None and data.raw is not None
    partners = PartnerTable.from_annotations(data.annotations)
    table = ph.synapse_table()
    by_site = dict(zip(table["pre_site_id"].tolist(), table["type"].tolist(), strict=True))
    sites = synapse_sites(partners)
    truth = np.asarray([by_site[int(s)] for s in sites.synapse_id], np.int64)
    if with_labels:
        return data.raw, partners, truth, data.neuron_ids
    return data.raw, partners, truth


def cut_patches(
    cfg: PatchConfig,
    raw: Any,
    labels: Any,
    sites: Any,
    cleft: Any = None,
    **jitter: Any,
) -> np.ndarray:
    """Patches as the encoder of ``cfg`` sees them: (N, z, y, x), or (N, 2, z, y, x) when
    contact-aligned (on ``cleft``, a cleft probability volume, when given)."""
    spec = PatchSpec(cfg.size_nm, cfg.voxel_size_nm)
    if cfg.align == "contact":
        return contact_patches(raw, labels, sites, spec, cfg.reach_nm, cleft=cleft,
                               cleft_threshold=cfg.cleft_threshold, **jitter)  # fmt: skip
    return extract_patches(raw, sites, spec, **jitter)


def predicted_cleft(raw: Any, model: str) -> Any:
    """The cleft probability (1, z, y, x) of the registry's cleft U-Net ``model`` on ``raw``, as
    the pipeline's ``synapse-clefts`` detector predicts it (held in memory)."""
    import tempfile

    from synapse_toolkit.api import run_stage

    with tempfile.TemporaryDirectory(prefix="syntk-cleft-") as tmp:
        out = run_stage("detector", "synapse-clefts", {"raw": raw}, {"model": model},
                        scratch_dir=tmp)["cleft_probability"]  # fmt: skip
        return out.with_data(np.asarray(out.data[...], np.float32))


def prepare_seed(
    seed: int, cfg: ClusterEncoderConfig, views: int, rng_seed: int
) -> dict[str, np.ndarray]:
    """Canonical patches, jittered views and true types of one phantom (cached as npz)."""
    d = cfg.data
    cache = None
    if d.cache_dir is not None:
        tag = f"s{seed}_t{d.types}_{'x'.join(map(str, d.shape))}_v{views}"
        tag += f"_p{'x'.join(f'{v:g}' for v in (*cfg.patch.size_nm, *cfg.patch.voxel_size_nm))}"
        tag += f"_a{cfg.augment.angle_jitter_deg:g}_c{cfg.augment.centre_jitter_nm:g}"
        if cfg.patch.align == "contact":
            tag += f"_contact{cfg.patch.reach_nm:g}"
            if cfg.patch.straighten_on == "predicted_cleft":
                tag += f"_cleft{cfg.patch.cleft_threshold:g}"
        cache = Path(d.cache_dir) / f"{tag}.npz"
        if cache.exists():
            with np.load(cache) as z:
                return {k: z[k] for k in z.files}
    raw, partners, truth, labels = phantom_synapses(seed, d.shape, d.types, with_labels=True)
    sites = synapse_sites(partners)
    cleft = None
    if cfg.patch.align == "contact" and cfg.patch.straighten_on == "predicted_cleft":
        cleft = predicted_cleft(raw, cfg.patch.cleft_model)
    canon = cut_patches(cfg.patch, raw, labels, sites, cleft)
    rng = np.random.default_rng(rng_seed)
    jit = []
    a = np.deg2rad(cfg.augment.angle_jitter_deg)
    for _ in range(views):
        ang = rng.uniform(-a, a, len(sites))
        cen = rng.normal(0, cfg.augment.centre_jitter_nm, (len(sites), 3)) * [0, 1, 1]
        jit.append(cut_patches(cfg.patch, raw, labels, sites, cleft, angle_jitter=ang,
                               centre_jitter_nm=cen))  # fmt: skip
    out = {
        "canonical": np.clip(np.round(canon), 0, 255).astype(np.uint8),
        "views": np.clip(np.round(np.stack(jit, 1)), 0, 255).astype(np.uint8),
        "types": truth,
        "synapse_id": sites.synapse_id,
    }
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.stem}.tmp.npz")
        np.savez_compressed(tmp, **out)
        tmp.replace(cache)
    return out


# -- augmentation -------------------------------------------------------------------------------


def augment_input(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """One patch (z, y, x) in [0, 1]: elastic in-plane warp, gain/offset/gamma, noise, missing
    sections (set to the patch mean)."""
    from scipy import ndimage

    z, y, xx = (int(s) for s in x.shape)
    if cfg.elastic_sigma_px > 0:
        coarse = rng.normal(0, cfg.elastic_sigma_px, (2, 4, 4))
        disp = np.stack([ndimage.zoom(c, (y / 4, xx / 4), order=1) for c in coarse])
        gy, gx = np.meshgrid(np.arange(y), np.arange(xx), indexing="ij")
        coords = np.stack([gy + disp[0], gx + disp[1]])
        x = np.stack([ndimage.map_coordinates(s, coords, order=1, mode="nearest") for s in x])
    x = np.clip(x, 0, 1) ** np.exp(rng.uniform(-cfg.gamma, cfg.gamma))
    x = x * rng.uniform(1 - cfg.gain, 1 + cfg.gain) + rng.uniform(-cfg.offset, cfg.offset)
    if cfg.noise_std > 0:
        x = x + rng.normal(0, cfg.noise_std * rng.uniform(), x.shape)
    missing = rng.random(z) < cfg.missing_prob
    if missing.any() and not missing.all():
        x[missing] = x[~missing].mean()
    return x.astype(np.float32)


def make_batch(
    data: dict[str, np.ndarray],
    cfg: ClusterEncoderConfig,
    rng: np.random.Generator,
    *,
    idx: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(augmented inputs, clean targets) of ``idx`` (default: a random batch), both
    (B, C, z, y, x) with channel 0 standardised per patch."""
    n = len(data["canonical"])
    if idx is None:
        idx = rng.integers(n, size=cfg.training.batch_size)
    v = rng.integers(data["views"].shape[1], size=len(idx))
    xs, ts = [], []
    for i, j in zip(idx, v, strict=True):
        x = data["views"][i, j].astype(np.float32)
        t = data["canonical"][i].astype(np.float32)
        if x.ndim == 3:
            x, t = x[None], t[None]
        if rng.random() < 0.5:  # mirror across the pre→post axis (patch y): a true symmetry
            x, t = x[:, :, ::-1], t[:, :, ::-1]
        x = np.array(x)
        x[0] = augment_input(np.ascontiguousarray(x[0] / 255.0), cfg.augment, rng)
        xs.append(x)
        ts.append(np.ascontiguousarray(t))
    return standardise_channels(np.stack(xs)), standardise_channels(np.stack(ts))


# -- training -----------------------------------------------------------------------------------


def encode_torch(net: Any, patches: np.ndarray, batch: int = 64) -> np.ndarray:
    """Codes of raw patches (N, z, y, x) with a torch encoder (eval mode, no grad)."""
    import torch

    net.eval()
    x = encoder_input(patches)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(net(torch.from_numpy(x[i : i + batch])).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 1))


def encoder_input(patches: np.ndarray) -> np.ndarray:
    """(N, C, z, y, x) network input of raw patches (N, z, y, x) or (N, C, z, y, x): channel 0
    standardised per patch, mask channels as they are."""
    p = np.asarray(patches, np.float32)
    return standardise(p)[:, None] if p.ndim == 4 else standardise_channels(p)


def validation_ari(net: Any, val: dict[str, np.ndarray], k: int) -> float:
    """Mean over validation volumes (``val["volume"]``; one volume if absent) of the ARI of
    k-means (k clusters, per volume) on the codes against the true types."""
    from sklearn.metrics import adjusted_rand_score

    from synapse_toolkit.synapses.clustering import kmeans

    codes = encode_torch(net, val["canonical"].astype(np.float32))
    vol = val.get("volume", np.zeros(len(codes), np.int64))
    scores = [
        adjusted_rand_score(val["types"][vol == v], kmeans(codes[vol == v], k, seed=0))
        for v in np.unique(vol)
    ]
    return float(np.mean(scores))


def loss_weight(spec: PatchSpec, sigma_nm: float | None) -> np.ndarray:
    """(z, y, x) reconstruction weights with mean 1: uniform, or an in-plane Gaussian."""
    if sigma_nm is None:
        return np.ones(spec.shape, np.float32)
    _, ny, nx = spec.shape
    vy, vx = spec.voxel_size_nm[1:]
    y = (np.arange(ny) - (ny - 1) / 2) * vy
    x = (np.arange(nx) - (nx - 1) / 2) * vx
    w = np.exp(-(y[:, None] ** 2 + x[None] ** 2) / (2 * sigma_nm**2))
    w = np.broadcast_to(w, spec.shape)
    return (w / w.mean()).astype(np.float32)


def _concat(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([d[k] for d in items]) for k in items[0]}


def train_cluster_encoder(
    cfg: ClusterEncoderConfig,
    log: Callable[[str], Any] = print,
    resume: bool = False,
) -> dict[str, Any]:
    """Prepare data, train, select on validation ARI, export the encoder to ONNX. ``latest.pt``
    (written at every validation) lets ``resume`` continue a stopped run exactly."""
    import torch

    from synapse_toolkit.nn.cluster_encoder import (
        EncoderConfig,
        ProfileAutoencoder,
        build_autoencoder,
        nt_xent,
    )
    from synapse_toolkit.nn.export import export_model
    from synapse_toolkit.nn.run import MixedPrecision, TrainingRun, resume_from, resume_state

    if cfg.model.arch == "profile" and cfg.patch.align != "contact":
        raise ConfigError("model.arch = 'profile' needs patch.align = 'contact'")
    tc = cfg.training
    run = TrainingRun(seed=tc.seed, num_threads=tc.num_threads,
                      time_limit_minutes=tc.time_limit_minutes, device=tc.device)  # fmt: skip
    precision = MixedPrecision(tc.mixed_precision, run.device)
    t0 = time.time()
    train = _concat([prepare_seed(s, cfg, cfg.augment.views, s) for s in cfg.data.seeds])
    val = _concat([{**d, "volume": np.full(len(d["types"]), 0 if cfg.data.validation_pooled else s)}
                   for s in cfg.data.validation_seeds
                   for d in [prepare_seed(s, cfg, 1, s)]])  # fmt: skip
    log(f"data: {len(train['canonical'])} training synapses ({cfg.data.seeds}), "
        f"{len(val['canonical'])} validation ({cfg.data.validation_seeds}) "
        f"[{time.time() - t0:.0f} s]")  # fmt: skip
    spec = PatchSpec(cfg.patch.size_nm, cfg.patch.voxel_size_nm)
    contact = cfg.patch.align == "contact"
    ecfg = EncoderConfig(spec.shape, tuple(cfg.model.channels), cfg.model.latent,
                         cfg.model.variational, in_channels=2 if contact else 1,
                         contact_pool=contact, arch=cfg.model.arch,
                         profile_norm=cfg.model.profile_norm,
                         profile_columns=cfg.model.profile_columns)  # fmt: skip
    net = build_autoencoder(ecfg).to(run.device)
    opt = torch.optim.Adam(net.parameters(), lr=tc.lr)
    rng = np.random.default_rng(tc.seed)
    out_dir = start_out_dir(tc.out_dir, resume)
    run.restart_clock()
    k = cfg.data.types
    weight = torch.from_numpy(loss_weight(spec, cfg.model.loss_sigma_nm)).to(run.device)
    best = (-np.inf, -1)
    history: list[dict[str, float]] = []
    it = start = 0
    if resume and (stopped := resume_from(out_dir, net, opt, precision, rng, log)) is not None:
        r = stopped["resume"]
        start, best, history = int(stopped["iteration"]), tuple(r["best"]), list(r["history"])
    m = cfg.model
    for it in range(start + 1, tc.iterations + 1):
        net.train()
        idx = rng.integers(len(train["canonical"]), size=tc.batch_size)
        xb, tb = make_batch(train, cfg, rng, idx=idx)
        x = torch.from_numpy(xb).to(run.device)
        with precision.autocast():
            rec, mu, logvar = net(x)
        rec, mu = rec.float(), mu.float()
        logvar = None if logvar is None else logvar.float()
        if isinstance(net, ProfileAutoencoder):
            t = net.target(torch.from_numpy(tb).to(run.device))
            loss = torch.mean((rec - t) ** 2)
        else:
            t = torch.from_numpy(tb[:, :1]).to(run.device)
            w = weight
            if contact:  # the contact rows of the target count; the rest a little
                w = weight * (0.05 + torch.from_numpy(tb[:, 1:2]).to(run.device))
                w = w / w.mean()
            loss = torch.mean(w * (rec - t) ** 2)
        loss = m.reconstruction * loss
        if m.contrastive > 0:  # a second, independently augmented view of the same synapses
            x2 = torch.from_numpy(make_batch(train, cfg, rng, idx=idx)[0]).to(run.device)
            with precision.autocast():
                mu2 = net.encoder(x2)
            loss = loss + m.contrastive * nt_xent(mu, mu2.float(), m.temperature)
        kl = torch.zeros(())
        if logvar is not None:
            kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=1))
            loss = loss + cfg.model.beta * kl
        precision.step(loss, opt)
        done = run.out_of_time()
        if it % tc.eval_every == 0 or it == tc.iterations or done:
            ari = validation_ari(net.encoder, val, k)
            history.append({"iteration": it, "loss": loss.item(), "kl": kl.item(),
                            "val_ari": ari, "minutes": run.elapsed / 60})  # fmt: skip
            log(f"it {it}: loss {loss.item():.4f} kl {kl.item():.3f} val ARI {ari:.3f} "
                f"[{run.elapsed / 60:.1f} min]")  # fmt: skip
            if ari > best[0]:
                best = (ari, it)
                run.save({"model": net.state_dict(), "iteration": it,
                          "config": cfg.model_dump(mode="json")}, out_dir / "best.pt")  # fmt: skip
            extra = resume_state(opt, precision, rng, best=list(best), history=history)
            run.save({"state_dict": net.state_dict(), "iteration": it, "resume": extra},
                     out_dir / "latest.pt")  # fmt: skip
        if done:
            log(run.budget_line(it))
            break
    ckpt = torch.load(out_dir / "best.pt", weights_only=True)
    net.load_state_dict(ckpt["model"])
    net = net.cpu().eval()
    meta = {
        "model": "cluster-encoder",
        "variational": cfg.model.variational,
        "latent": cfg.model.latent,
        "patch_size_nm": list(cfg.patch.size_nm),
        "patch_voxel_size_nm": list(cfg.patch.voxel_size_nm),
        "align": cfg.patch.align,
        "reach_nm": cfg.patch.reach_nm,
        "straighten_on": cfg.patch.straighten_on,
        "contact_pool": contact,
        "arch": cfg.model.arch,
        "profile_norm": cfg.model.profile_norm,
        "profile_columns": cfg.model.profile_columns,
        "contrastive": cfg.model.contrastive,
        "channels": list(cfg.model.channels),
        "normalisation": "per-patch zero mean, unit std",
        "iteration": int(ckpt["iteration"]),
        "validation_ari": float(best[0]),
        "training_seeds": list(cfg.data.seeds),
        "validation_seeds": list(cfg.data.validation_seeds),
        "phantom_types": k,
    }
    info = export_model(net.encoder, spec.shape, cfg.export.path, metadata=meta)
    from synapse_toolkit.fsio import atomic_write_text

    onnx_path = Path(cfg.export.path)
    atomic_write_text(onnx_path.with_suffix(".sha256"), f"{info['sha256']}  {onnx_path.name}\n")
    summary = {**info, "iterations_run": it, "minutes": run.elapsed / 60, "history": history}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return {k2: v for k2, v in summary.items() if k2 != "history"}
