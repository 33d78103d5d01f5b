"""Train the neurofinder ROI detector and export it to ONNX (needs torch: ``.[train]``).

Data (the real field of view is split so that no truth of the held-out part is ever used):

- real: the full-view mean image of the neurofinder crop folder with its left-half regions
  (regions lying entirely in columns < 256). Training rows ``[0, 200)``, validation rows
  ``[200, 256)``, **held out** rows ``[256, 512)`` (never read here); columns ``[0, 240)`` are
  scored / trained (cells crossing column 256 have no truth, so the last 16 columns are masked);
- phantom: calcium phantom movies (``synapse_toolkit.phantom.calcium``), mean projections of
  192x192 movies with 90 cells and 150-600 frames; training seeds 5001-5012, validation 5101-5103.

Every image gets the seed's preprocessing (:func:`~syntk_calcium.preprocess.clip_standardise` of
the whole image), after a flat-field division with ``--flat-field SIGMA`` (stored in the exported
model's metadata, so the detector does the same). Batches are half real tiles, half phantom
tiles, with random flips and 90-degree rotations, a random gain/offset and added noise; loss:
class-balanced BCE on the ROI mask and the ROI core. Every ``--eval-every`` iterations the
region thresholds are searched on the validation images; the checkpoint and thresholds with the
best validation combined score (mean of the real and the phantom validation scores) are kept and
exported. ``latest.pt`` (written at every evaluation) holds what ``--resume`` needs to continue a
stopped run exactly: weights, optimizer, moving average, random states and the best so far.

    python -m syntk_calcium.train --out runs/neurofinder-cnn \
        --export plugins/syntk_calcium/models/neurofinder_cnn.onnx --overwrite

An existing ``--export`` file (e.g. the shipped model) is refused before anything runs unless
``--overwrite``; a resumed run re-exports its own.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.data import Regions
from synapse_toolkit.metrics.neurofinder import score_neurofinder
from syntk_calcium.preprocess import prepare, region_masks
from syntk_calcium.regions import extract_regions, regions_in_window

DATA = Path("/work/shared/data/calcium/neurofinder-crop")
CONTEXT = 20
TILE_IN = 132
TRAIN_ROWS, VAL_ROWS, TEST_ROWS = (0, 200), (200, 256), (256, 512)
#: a refit (``--refit``) trains on every labelled row once all settings are chosen on the split
REFIT_ROWS = (0, 512)
LABELLED_COLS = (0, 240)
PHANTOM_TRAIN = tuple(range(5001, 5013))
PHANTOM_VAL = (5101, 5102, 5103)
GRID = {
    "threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "core_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "min_size": (10, 20, 30, 40),
}


def phantom_mean(seed: int, cache: Path) -> tuple[np.ndarray, Regions]:
    """Mean projection (192x192) and regions of phantom ``seed`` (cached as .npz/.json)."""
    from synapse_toolkit.phantom.calcium import generate_calcium

    f = cache / f"phantom_{seed}.npz"
    if f.exists():
        d = np.load(f)
        return d["mean"], Regions.from_neurofinder(json.loads(str(d["regions"])))
    frames = int(np.random.default_rng(seed).choice([150, 300, 600]))
    ph = generate_calcium(seed=seed, shape=(192, 192), n_cells=90, frames=frames)
    mean = ph.movie.astype(np.float64).mean(axis=0).astype(np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, mean=mean, regions=json.dumps(ph.regions.to_neurofinder()))
    return mean, ph.regions


def real_data(data_dir: Path) -> tuple[np.ndarray, Regions]:
    from syntk_calcium.io import load_regions_file

    mean = np.load(data_dir / "mean_fullfov_512x512_float32.npy")
    return mean, load_regions_file(data_dir / "regions_fullfov_left_half.json")


class Sample:
    """A preprocessed image, its targets and its loss mask, padded by the network context."""

    def __init__(
        self, image: np.ndarray, regions: Regions, loss_mask: np.ndarray, flat_sigma: float = 0.0
    ) -> None:
        x = prepare(image, flat_sigma)
        mask, core = region_masks(regions, x.shape)
        pad = ((CONTEXT, CONTEXT), (CONTEXT, CONTEXT))
        self.x = np.pad(x, pad, mode="reflect")
        self.y = np.stack([np.pad(mask, pad), np.pad(core, pad)]).astype(np.float32)
        self.m = np.pad(loss_mask.astype(np.float32), pad)

    def crop(
        self, rng: np.random.Generator, scale: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A training tile (TILE_IN px) with its targets and mask (TILE_IN - 2 CONTEXT px); with
        ``scale`` != 1 a ``TILE_IN * scale`` px window is resampled to the tile (cells appear
        ``1 / scale`` times as large)."""
        h, w = self.x.shape
        size = min(int(round(TILE_IN * scale)), h, w)
        y0 = int(rng.integers(0, h - size + 1))
        x0 = int(rng.integers(0, w - size + 1))
        xs = self.x[y0 : y0 + size, x0 : x0 + size]
        ys = self.y[:, y0 : y0 + size, x0 : x0 + size]
        ms = self.m[y0 : y0 + size, x0 : x0 + size]
        if size != TILE_IN:
            from scipy.ndimage import zoom

            f = TILE_IN / size
            xs = zoom(xs, f, order=1, grid_mode=True, mode="grid-mirror")
            ys = np.stack([zoom(c, f, order=1, grid_mode=True, mode="grid-constant") > 0.5
                           for c in ys]).astype(np.float32)  # fmt: skip
            ms = zoom(ms, f, order=0, grid_mode=True, mode="grid-constant")
            xs, ys, ms = xs[:TILE_IN, :TILE_IN], ys[:, :TILE_IN, :TILE_IN], ms[:TILE_IN, :TILE_IN]
        c = slice(CONTEXT, TILE_IN - CONTEXT)
        return xs, ys[:, c, c], ms[c, c]


def augment(
    x: np.ndarray, y: np.ndarray, m: np.ndarray, rng: np.random.Generator, strong: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random rotation by 90 degrees, flip, gain/offset and noise; with ``strong`` also a gamma
    curve, a contrast change around the tile mean and a slight blur (intensity only: the
    scale change is :meth:`Sample.crop`'s)."""
    k = int(rng.integers(4))
    x, y, m = np.rot90(x, k), np.rot90(y, k, axes=(1, 2)), np.rot90(m, k)
    if rng.random() < 0.5:
        x, y, m = x[:, ::-1], y[:, :, ::-1], m[:, ::-1]
    if strong:
        if rng.random() < 0.5:  # gamma on the tile's [min, max] range, mapped back
            lo, hi = float(x.min()), float(x.max())
            u = (x - lo) / max(hi - lo, 1e-6)
            x = lo + (hi - lo) * u ** rng.uniform(0.67, 1.5)
        if rng.random() < 0.5:
            mu = float(x.mean())
            x = mu + (x - mu) * rng.uniform(0.7, 1.4)
        if rng.random() < 0.25:
            from scipy.ndimage import gaussian_filter

            x = gaussian_filter(x, rng.uniform(0.3, 1.0))
    x = x * rng.uniform(0.8, 1.25) + rng.normal(0, 0.15)
    x = x + rng.normal(0, rng.uniform(0, 0.25), x.shape)
    return (np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y),
            np.ascontiguousarray(m))  # fmt: skip


def predict_full(net: Any, image: np.ndarray) -> np.ndarray:
    """Torch prediction (2, H, W) probabilities of a whole preprocessed image (reflect-padded by
    the context, and to a multiple of 4), on the network's device."""
    import torch

    h, w = image.shape
    ph, pw = (-(h + 2 * CONTEXT)) % 4, (-(w + 2 * CONTEXT)) % 4
    x = np.pad(image, ((CONTEXT, CONTEXT + ph), (CONTEXT, CONTEXT + pw)), mode="reflect")
    device = next(net.parameters()).device
    with torch.no_grad():
        xt = torch.from_numpy(x[None, None, None].copy()).to(device)
        out = torch.sigmoid(net(xt))[0, :, 0].cpu().numpy()
    return out[:, :h, :w]


def _val_map(net: Any, name: str, image: np.ndarray, rows: tuple[int, int]) -> np.ndarray:
    """Probabilities for validation scoring: the whole image for a phantom; for the real image
    only a band around the validation ``rows`` (and the left half), on the same 4-px grid as
    the whole-image prediction, zero elsewhere (regions are counted by their centre)."""
    if name != "real":
        return predict_full(net, image)
    r0 = max(0, (rows[0] - 2 * CONTEXT) // 4 * 4)
    r1 = min(image.shape[0], rows[1] + 2 * CONTEXT)
    c1 = min(image.shape[1], LABELLED_COLS[1] + 2 * CONTEXT)
    prob = np.zeros((2, r1, c1), np.float32)
    prob[:, r0:] = predict_full(net, image[r0:r1, :c1])
    return prob


def _val_sets(
    data_dir: Path, cache: Path, refit: bool = False, flat_sigma: float = 0.0
) -> list[tuple[str, np.ndarray, Regions, tuple, tuple]]:
    """(name, preprocessed image, truth, rows, cols) for validation scoring."""
    mean, regions = real_data(data_dir)
    out = [("real", prepare(mean, flat_sigma), regions, VAL_ROWS, LABELLED_COLS)]
    if refit:  # every labelled row is trained on: the phantoms are the only validation
        out = []
    for s in PHANTOM_VAL:
        m, r = phantom_mean(s, cache)
        out.append((f"phantom{s}", prepare(m, flat_sigma), r, (0, m.shape[0]), (0, m.shape[1])))
    return out


def search_thresholds(
    maps: list[np.ndarray], val: list[tuple], grid: dict[str, tuple] = GRID
) -> tuple[dict[str, Any], float, dict[str, float]]:
    """Best region parameters by mean(real combined, mean phantom combined) on validation."""
    best: tuple[float, dict[str, Any], dict[str, float]] = (-1.0, {}, {})
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values, strict=True))
        per: dict[str, float] = {}
        for prob, (name, _img, truth, rows, cols) in zip(maps, val, strict=True):
            pred = extract_regions(prob[0], prob[1], **params)
            s = score_neurofinder(
                regions_in_window(truth, rows, cols), regions_in_window(pred, rows, cols)
            )
            per[name] = s.combined
        phantom = float(np.mean([v for k, v in per.items() if k != "real"]))
        score = 0.5 * (per["real"] + phantom) if "real" in per else phantom
        if score > best[0]:
            best = (score, params, {"real": per.get("real", float("nan")), "phantom": phantom})
    return best[1], best[0], best[2]


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from synapse_toolkit.nn.run import (
        MixedPrecision,
        TrainingRun,
        resume_from,
        resume_state,
        start_out_dir,
    )
    from syntk_calcium.net import RoiNet

    # threads, torch seed, device and the wall-clock budget (which counts data preparation)
    run = TrainingRun(seed=args.seed, num_threads=args.threads, device=args.device,
                      time_limit_minutes=args.time_limit / 60)  # fmt: skip
    precision = MixedPrecision(args.mixed_precision, run.device)
    rng = np.random.default_rng(args.seed)
    out = start_out_dir(args.out, args.resume)
    cache = out / "phantoms"
    log = open(out / "train.log", "a", buffering=1)  # noqa: SIM115

    def say(msg: str) -> None:
        print(msg, flush=True)
        log.write(msg + "\n")

    mean, regions = real_data(Path(args.data))
    # the left half's training rows only (all labelled rows for a refit): validation / held-out
    # truth and the right half's pixels never reach the network during training
    rows = REFIT_ROWS if args.refit else TRAIN_ROWS
    train_part = mean[: rows[1], :256]
    lm = np.zeros(train_part.shape, bool)
    lm[:, LABELLED_COLS[0] : LABELLED_COLS[1]] = True
    train_regions = regions_in_window(regions, rows, (0, 256))
    # the preprocessing statistics come from the whole image, as at inference
    full = prepare(mean, args.flat_field)
    real = Sample(train_part, train_regions, lm)
    real.x = np.pad(full[: rows[1], :256], CONTEXT, mode="reflect")
    phantoms = []
    for s in PHANTOM_TRAIN:
        m, r = phantom_mean(s, cache)
        phantoms.append(Sample(m, r, np.ones(m.shape, bool), args.flat_field))
    val = _val_sets(Path(args.data), cache, refit=args.refit, flat_sigma=args.flat_field)
    say(
        f"data ready in {run.elapsed:.0f} s ({run.describe()}): real train {train_part.shape} "
        f"({len(train_regions)} ROIs), {len(phantoms)} phantoms, {len(val)} validation sets"
    )
    ys = np.concatenate([(s.y * s.m[None]).reshape(2, -1) for s in [real, *phantoms]], axis=1)
    ms = np.concatenate([s.m.reshape(-1) for s in [real, *phantoms]])
    pos_frac = ys.sum(axis=1) / ms.sum()
    pos_weight = torch.tensor(np.minimum((1 - pos_frac) / pos_frac, 20.0), dtype=torch.float32)
    say(f"positive fractions {pos_frac.round(4).tolist()}, pos_weight {pos_weight.tolist()}")
    pos_weight = pos_weight.to(run.device)

    net = RoiNet(in_channels=1, width=args.width).to(run.device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    # evaluated / saved weights: an exponential moving average of the trained ones (batch-norm
    # statistics included) when --ema > 0
    ema = None
    if args.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True)
    say(f"settings: {json.dumps({k: v for k, v in vars(args).items() if k != 'select_only'})}")
    best: dict[str, Any] = {"score": -1.0}
    it = start = 0
    if args.resume and (stopped := resume_from(out, net, opt, precision, rng, say)) is not None:
        start, best = int(stopped["iteration"]), stopped["resume"]["best"]
        if ema is not None:
            ema.load_state_dict(stopped["resume"]["ema"])
    for it in range(start + 1, args.iterations + 1):
        xb, yb, mb = [], [], []
        for b in range(args.batch):
            f = args.real_fraction  # real tiles spread through the batch (b = 0 always real)
            use_real = np.ceil((b + 1) * f - 1e-9) > np.ceil(b * f - 1e-9)
            src = real if use_real else phantoms[int(rng.integers(len(phantoms)))]
            scale = 1.0
            if args.scale > 0 and rng.random() < 0.5:
                scale = float(np.exp(rng.uniform(-args.scale, args.scale)))
            x, y, m = augment(*src.crop(rng, scale), rng, strong=args.strong_aug)
            xb.append(x)
            yb.append(y)
            mb.append(m)
        xt = torch.from_numpy(np.stack(xb)[:, None, None]).to(run.device)
        yt = torch.from_numpy(np.stack(yb)).to(run.device)
        mt = torch.from_numpy(np.stack(mb))[:, None].to(run.device)
        net.train()
        with precision.autocast():
            logits = net(xt)[:, :, 0]
        logits = logits.float()
        loss_map = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, yt, pos_weight=pos_weight[None, :, None, None], reduction="none"
        )
        loss = (loss_map * mt).sum() / (mt.sum() * 2 + 1e-6)
        if args.cosine:  # decay to lr / 10 over the planned iterations
            frac = min(1.0, it / args.iterations)
            for group in opt.param_groups:
                group["lr"] = args.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * frac)))
        precision.step(loss, opt)
        if ema is not None:
            ema.update_parameters(net)
        if it % 50 == 0:
            say(f"it {it} loss {loss.item():.4f} elapsed {run.elapsed:.0f} s")
        done = it == args.iterations or run.out_of_time()
        if it % args.eval_every == 0 or done:
            model = net if ema is None else ema.module
            model.eval()
            maps = [_val_map(model, name, img, rows) for name, img, _t, rows, _c in val]
            params, score, parts = search_thresholds(maps, val, GRID)
            say(f"it {it} validation combined {score:.3f} (real {parts['real']:.3f}, "
                f"phantom {parts['phantom']:.3f}) at {params}")  # fmt: skip
            ckpt = {"state_dict": model.state_dict(), "config": net.hparams, "iteration": it,
                    "region_params": params, "flat_field_sigma": args.flat_field,
                    "validation": {"combined": score, **parts}}  # fmt: skip
            if args.keep_all:
                run.save(ckpt, out / f"it{it:05d}.pt")
            if score > best["score"]:
                best = {"score": score, "iteration": it, "params": params, "parts": parts}
                run.save(ckpt, out / "best.pt")
                say(f"  new best at iteration {it}")
            extra = resume_state(opt, precision, rng, best=best,
                                 ema=None if ema is None else ema.state_dict())  # fmt: skip
            run.save({"state_dict": net.state_dict(), "config": net.hparams, "iteration": it,
                      "resume": extra}, out / "latest.pt")  # fmt: skip
        if done:
            break
    say(f"finished at iteration {it} after {run.elapsed:.0f} s; best {best}")
    log.close()
    return best


def export(
    checkpoint: Path,
    onnx_path: Path,
    tile: int = 256,
    region_params: dict[str, Any] | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """Export a checkpoint as ONNX (tile (1, 1, 1, tile, tile) -> (1, 2, 1, tile-40, tile-40));
    ``region_params`` replaces the checkpoint's (a refit takes the split run's choice)."""
    import torch

    from synapse_toolkit.nn.export import export_model
    from syntk_calcium.net import RoiNet

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    net = RoiNet(**ckpt["config"])
    net.load_state_dict(ckpt["state_dict"])
    sigma = float(ckpt.get("flat_field_sigma", 0.0))
    preprocessing = "clip at mean + 3 SD, standardise (whole image)"
    if sigma > 0:
        preprocessing = f"divide by the image smoothed at sigma {sigma:g} px, then {preprocessing}"
    meta = {"context_px": CONTEXT, "iteration": int(ckpt["iteration"]),
            "region_params": region_params or ckpt["region_params"],
            "outputs": ["roi_mask", "roi_core"], "preprocessing": preprocessing,
            "flat_field_sigma": sigma, "validation": ckpt["validation"]}  # fmt: skip
    if note:
        meta["note"] = note
    info = export_model(net, (1, tile, tile), onnx_path, metadata=meta)
    onnx_path.with_suffix(".sha256").write_text(f"{info['sha256']}  {onnx_path.name}\n")
    return info


def select(onnx_path: Path, data_dir: Path, cache: Path) -> dict[str, Any]:
    """Choose test-time augmentation and region thresholds for the exported model on the
    validation sets, through the detector's own ONNX path (never the held-out rows' truth)."""
    from syntk_calcium.stages import cnn_probability

    mean = real_data(data_dir)[0]
    raws = [mean] + [phantom_mean(s, cache)[0] for s in PHANTOM_VAL]
    # truth and windows only: the maps come from the raw images through the detector's path,
    # which preprocesses them as the model's metadata says
    val = _val_sets(data_dir, cache)
    out: dict[str, Any] = {}
    for tta in (False, True):
        maps = [cnn_probability(r, onnx_path, n_threads=1, tta=tta) for r in raws]
        params, score, parts = search_thresholds(maps, val)
        out[f"tta={tta}"] = {"combined": round(score, 4), **parts, "params": params}
        print(f"validation, tta={tta}: combined {score:.3f} (real {parts['real']:.3f}, "
              f"phantom {parts['phantom']:.3f}) at {params}", flush=True)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA), help="the neurofinder-crop folder")
    ap.add_argument("--out", default="runs/neurofinder-cnn")
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--time-limit", type=float, default=2400.0, help="seconds")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--real-fraction", type=float, default=0.5, help="real tiles per batch")
    ap.add_argument("--cosine", action="store_true", help="cosine learning-rate decay to lr/10")
    ap.add_argument("--strong-aug", action="store_true",
                    help="also gamma, contrast and blur augmentation")  # fmt: skip
    ap.add_argument("--scale", type=float, default=0.0,
                    help="random zoom of half the tiles by exp(U(-s, s)); 0: none")  # fmt: skip
    ap.add_argument("--ema", type=float, default=0.0,
                    help="evaluate and save a weight moving average (decay); 0: none")  # fmt: skip
    ap.add_argument("--keep-all", action="store_true",
                    help="also save the checkpoint of every evaluation (itNNNNN.pt)")  # fmt: skip
    ap.add_argument("--refit", action="store_true",
                    help="train on all labelled rows 0-511 (left half), phantoms only for "
                    "validation; with the settings and iteration chosen on the split")  # fmt: skip
    ap.add_argument("--flat-field", type=float, default=0.0, metavar="SIGMA",
                    help="divide each image by itself smoothed at SIGMA px before the "
                    "preprocessing; 0: off")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--mixed-precision", action="store_true",
                    help="float16 forward passes, loss scaling (CUDA; ignored on CPU)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true",
                    help="continue a stopped run from <out>/latest.pt (written at every "
                    "evaluation) exactly, up to --iterations")  # fmt: skip
    ap.add_argument("--export", default=None, help="write the best checkpoint as this ONNX file")
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help="let --export replace an existing file (e.g. the shipped model)",
    )
    ap.add_argument("--export-checkpoint", default=None, metavar="PT",
                    help="no training: export this checkpoint (a refit's itNNNNN.pt)")  # fmt: skip
    ap.add_argument("--region-params", default=None, metavar="JSON",
                    help="region parameters stored in the exported model (default: the "
                    "checkpoint's)")  # fmt: skip
    ap.add_argument("--select-only", default=None, metavar="ONNX",
                    help="no training: choose TTA and thresholds on validation")  # fmt: skip
    args = ap.parse_args(argv)
    from synapse_toolkit.errors import DataError
    from synapse_toolkit.nn.run import check_export

    try:
        check_export(args.export, args.resume, args.overwrite)
    except DataError as exc:
        ap.exit(1, f"error: {exc}\n")
    if args.select_only:
        select(Path(args.select_only), Path(args.data), Path(args.out) / "phantoms")
        return
    if args.export_checkpoint:  # no training: export a kept checkpoint
        if not args.export:
            ap.error("--export-checkpoint needs --export FILE.onnx")
        params = json.loads(args.region_params) if args.region_params else None
        note = ("refit on all labelled rows; region_params chosen on the split run's validation"
                if args.refit else None)  # fmt: skip
        info = export(Path(args.export_checkpoint), Path(args.export), region_params=params,
                      note=note)  # fmt: skip
        print(json.dumps({k: info[k] for k in ("path", "sha256", "bytes", "max_abs_diff")}))
        if not args.refit:  # a refit trained on the validation rows: nothing to choose there
            select(Path(args.export), Path(args.data), Path(args.out) / "phantoms")
        return
    train(args)
    if args.export:
        info = export(Path(args.out) / "best.pt", Path(args.export))
        print(json.dumps({k: info[k] for k in ("path", "sha256", "bytes", "max_abs_diff")}))
        if not args.refit:
            select(Path(args.export), Path(args.data), Path(args.out) / "phantoms")


if __name__ == "__main__":
    main()
