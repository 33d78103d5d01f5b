"""Synapse clustering on held-out phantom volumes: ARI / NMI / AMI against the true types.

For each phantom seed (frozen defaults, ``--types`` K types, never used in training or
selection) the synapses of the annotated partners (and, with ``--predicted``, of the partners
found by the shipped polarity U-Net + EMSynConn with pruning on the true segmentation) are cut
into the encoder's patches (contact-aligned on the true segmentation for the shipped encoders)
and clustered per volume with k-means at k = K, from

- each trained encoder given with ``--model`` (ONNX, through ``PatchEncoder``),
- the same encoder architecture with random weights (baseline; ``--random-inits`` of them),
- PCA (16 components) of the standardised raw patches (baseline), both of the patches the
  encoder sees and of site-oriented patches without straightening (5 x 64 x 64 at 40 x 8 x 8
  nm, the first encoders' patches);
- and, as a no-network reference for contact-aligned patches, PCA of each patch's mean
  cross-section over its contact.

Scores are means over volumes (± standard deviation over volumes); "stability" is the mean ARI
between k-means runs with different seeds on the same codes. Predicted synapses take the type of
the true synapse whose pre site is nearest (within 400 nm); unmatched ones are left out and
counted.

Usage::

    python benchmarks/eval_clustering.py --seeds 3101 3102 3103 \
        --model plugins/syntk_synapses/models/cluster_encoder.onnx [--predicted]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.evaluation.phantom_seeds import check_report_seeds
from synapse_toolkit.metrics.clustering import match_nearest, score_clustering
from synapse_toolkit.synapses.clustering import PatchEncoder, choose_k, kmeans, pca_codes
from synapse_toolkit.synapses.patches import PatchSpec, extract_patches, synapse_sites
from synapse_toolkit.synapses.train_cluster_encoder import phantom_synapses

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "plugins" / "syntk_synapses" / "models"
#: the site-oriented patches of the first encoders, for the second PCA baseline
SITE_SPEC = PatchSpec((200.0, 512.0, 512.0), (40.0, 8.0, 8.0))


def onnx_channels(path: str | Path) -> tuple[int, ...]:
    """Feature widths of a cluster encoder: from its metadata, else from its 3x3x3 convs."""
    import onnx

    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    if "channels" in meta:
        return tuple(json.loads(meta["channels"]))
    dims = [tuple(t.dims) for t in model.graph.initializer]
    return tuple(int(d[0]) for d in dims if len(d) == 5 and tuple(d[2:]) == (3, 3, 3))


def random_encoder_codes(patches: np.ndarray, model: PatchEncoder, init: int) -> np.ndarray:
    """Codes from the trained encoder's architecture with random (torch default) weights."""
    import torch

    from synapse_toolkit.nn.cluster_encoder import EncoderConfig, build_encoder
    from synapse_toolkit.onnx_runtime import model_metadata
    from synapse_toolkit.synapses.train_cluster_encoder import encode_torch

    meta = model_metadata(model.session)
    torch.manual_seed(init)
    z, y, x = model.input_shape
    cfg = EncoderConfig(
        (z, y, x),
        onnx_channels(model.path),
        latent=int(meta["latent"]),
        variational=bool(meta["variational"]),
        in_channels=model.in_channels,
        contact_pool=bool(meta.get("contact_pool", False)),
        arch=str(meta.get("arch", "conv3d")),
        profile_norm=str(meta.get("profile_norm", "std")),
        profile_columns=tuple(meta["profile_columns"]) if meta.get("profile_columns") else None,
    )
    net = build_encoder(cfg)
    return encode_torch(net, patches)


def profile_codes(patches: np.ndarray, n_components: int = 8) -> np.ndarray:
    """A no-network reference: PCA of each contact-aligned patch's mean cross-section (the
    standardised patch averaged over the sections and rows of its contact)."""
    from sklearn.decomposition import PCA

    from synapse_toolkit.synapses.patches import standardise_channels

    p = standardise_channels(patches)
    w = p[:, 1:2] + 1e-3
    prof = (p[:, :1] * w).sum(axis=(1, 2, 3)) / w.sum(axis=(1, 2, 3))
    n = max(1, min(n_components, len(prof) - 1, prof.shape[1]))
    return PCA(n_components=n, random_state=0).fit_transform(prof)


def volume(seed: int, args: argparse.Namespace, cache: Path | None) -> tuple[Any, ...]:
    """Raw volume, true segmentation, annotated partners, true types and (``--predicted``)
    predicted partners of one phantom seed; cached as npz (the phantom and the U-Net are the slow
    part)."""
    from synapse_toolkit.data import PartnerTable, Volume

    key = f"s{seed}_t{args.types}_{'x'.join(map(str, args.shape))}_seg.npz"
    path = cache / key if cache is not None else None
    if path is not None and path.exists():
        z = np.load(path, allow_pickle=False)
        raw = Volume(z["raw"], tuple(z["voxel_size_nm"]))
        seg = Volume(z["labels"], tuple(z["voxel_size_nm"]))
        ann = PartnerTable.from_dict(json.loads(str(z["partners"])))
        pred = json.loads(str(z["predicted"])) if "predicted" in z.files else None
        if pred is not None or not args.predicted:
            table = PartnerTable.from_dict(pred) if pred is not None else None
            return raw, seg, ann, z["truth"], table
    raw, partners, truth, seg = phantom_synapses(seed, tuple(args.shape), args.types,
                                                 with_labels=True)  # fmt: skip
    table = None
    extra: dict[str, Any] = {}
    if args.predicted:
        from synapse_toolkit.inference.onnx_model import OnnxModel
        from synapse_toolkit.synapses.assigners import EMSynConnSettings, assign_emsynconn
        from synapse_toolkit.synapses.pruning import PrunerONNX
        from synapse_toolkit.synapses.targets import Grid

        arr = raw.read()
        prox = OnnxModel(MODELS / "polarity.onnx", n_threads=1).predict(arr)[0]
        pruner = PrunerONNX(MODELS / "pruner.onnx", 1)
        table = assign_emsynconn(arr, prox, seg.read(), Grid.of(raw), pruner, EMSynConnSettings())
        extra["predicted"] = json.dumps(table.to_dict())
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, raw=raw.read(), labels=seg.read(),
                            voxel_size_nm=np.asarray(raw.voxel_size_nm),
                            partners=json.dumps(partners.to_dict()), truth=truth,
                            **extra)  # fmt: skip
    return raw, seg, partners, truth, table


def match_types(pred_pre: np.ndarray, true_pre: np.ndarray, true_types: np.ndarray,
                max_nm: float = 400.0) -> np.ndarray:  # fmt: skip
    """Type of the nearest true pre site within ``max_nm`` (-1 if none), as the clustering
    scorer matches found synapses."""
    j = match_nearest(pred_pre, true_pre, max_nm)
    return np.where(j >= 0, true_types[np.maximum(j, 0)] if len(true_types) else -1, -1)


def scores_for(codes: np.ndarray, truth: np.ndarray, k: int, seeds: list[int]) -> dict[str, float]:
    runs = [kmeans(codes, k, seed=s) for s in seeds]
    s = score_clustering(truth, runs[0]).as_dict()
    from sklearn.metrics import adjusted_rand_score

    pairs = [adjusted_rand_score(runs[a], runs[b])
             for a in range(len(runs)) for b in range(a + 1, len(runs))]  # fmt: skip
    return {"ari": s["ari"], "nmi": s["nmi"], "ami": s["ami"],
            "stability": float(np.mean(pairs)) if pairs else 1.0}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[3101, 3102, 3103])
    ap.add_argument("--types", type=int, default=3)
    ap.add_argument("--shape", type=int, nargs=3, default=[24, 512, 512])
    ap.add_argument("--model", nargs="+", default=[str(MODELS / "cluster_encoder.onnx")])
    ap.add_argument("--random-inits", type=int, default=3)
    ap.add_argument("--kmeans-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--predicted", action="store_true", help="also predicted partners")
    ap.add_argument("--choose-k", action="store_true",
                    help="also k chosen by stability and silhouette (2-8)")  # fmt: skip
    ap.add_argument("--cache", default=str(ROOT / "runs" / "cluster-eval-cache"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    check_report_seeds(args.seeds, family="clustering")
    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    encoders = {Path(m).stem: PatchEncoder(m) for m in args.model}
    cache = Path(args.cache) if args.cache else None
    rows: dict[str, list[dict[str, float]]] = {}
    counts: dict[str, list[int]] = {}

    def add(name: str, vals: dict[str, float]) -> None:
        rows.setdefault(name, []).append(vals)

    for seed in args.seeds:
        raw, seg, partners, truth, table = volume(seed, args, cache)
        sets = {"annotated": (synapse_sites(partners), truth)}
        if table is not None:
            psites = synapse_sites(table)
            ptypes = match_types(psites.pre_nm, sets["annotated"][0].pre_nm, truth)
            keep = ptypes >= 0
            counts.setdefault("predicted synapses (matched / all)", []).extend(
                [int(keep.sum()), len(keep)]
            )
            matched_rows = np.isin(table.synapse_id, psites.synapse_id[keep])
            sets["predicted"] = (synapse_sites(table.select(matched_rows)), ptypes[keep])
        for set_name, (sites, types) in sets.items():
            counts.setdefault(f"{set_name} synapses", []).append(len(sites))
            first = next(iter(encoders.values()))
            patches = first.patches(raw, sites, seg)
            for name, enc in encoders.items():
                codes = enc.encode(enc.patches(raw, sites, seg))
                add(f"{set_name} | {name}", scores_for(codes, types, args.types,
                                                        args.kmeans_seeds))  # fmt: skip
                if args.choose_k:
                    chosen = choose_k(codes, (2, 8)).k
                    counts.setdefault(f"{set_name} | {name}: chosen k", []).append(chosen)
                    add(f"{set_name} | {name}, k chosen", scores_for(codes, types, chosen,
                                                                  args.kmeans_seeds))  # fmt: skip
            for init in range(args.random_inits):
                add(f"{set_name} | random-weights encoder",
                    scores_for(random_encoder_codes(patches, first, init), types, args.types,
                               args.kmeans_seeds))  # fmt: skip
            add(
                f"{set_name} | PCA of raw patches (the encoder's)",
                scores_for(pca_codes(patches), types, args.types, args.kmeans_seeds),
            )
            if patches.ndim == 5:
                add(
                    f"{set_name} | PCA of the contact's mean cross-section",
                    scores_for(profile_codes(patches), types, args.types, args.kmeans_seeds),
                )
            site = extract_patches(raw, sites, SITE_SPEC)
            add(
                f"{set_name} | PCA of raw patches (site-oriented)",
                scores_for(pca_codes(site), types, args.types, args.kmeans_seeds),
            )
        print(f"seed {seed} done ({time.time() - t0:.0f} s)", flush=True)

    inits = f", random encoder over {args.random_inits} inits" if args.random_inits else ""
    print(f"\nSynapse clustering, k = {args.types}, phantom seeds {args.seeds} "
          f"(per-volume k-means; mean ± sd over volumes{inits})")  # fmt: skip
    print(f"{'partners | method':58s} {'ARI':>13s} {'NMI':>13s} {'AMI':>13s} {'stability':>10s}")
    results: dict[str, Any] = {}
    for name, vals in rows.items():
        m = {k: float(np.mean([v[k] for v in vals])) for k in vals[0]}
        sd = {k: float(np.std([v[k] for v in vals])) for k in vals[0]}
        results[name] = {"mean": m, "sd": sd, "n": len(vals)}
        print(f"{name:58s} " + " ".join(f"{m[k]:6.3f}±{sd[k]:5.3f}" for k in ("ari", "nmi", "ami"))
              + f" {m['stability']:10.3f}")  # fmt: skip
    for name, c in counts.items():
        print(f"{name}: {c}")
    print(f"[{time.time() - t0:.0f} s]")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": results,
                                               "counts": counts}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
