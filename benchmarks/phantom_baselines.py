"""Naive baselines on the EM phantom at its frozen defaults (they must score badly).

- neurons: intensity threshold + 3D connected components (background filled by the nearest
  component), best threshold chosen with the ground truth -> CREMI score (25 nm border mask);
- synapses: dark blobs that touch two ground-truth segments; partners = those two segments,
  polarity guessed by a coin flip; best threshold chosen with the ground truth -> CREMI partner F;
- synapse types: k-means (K = number of types) on PCA of raw synapse-centred patches -> ARI.

Run: ``python benchmarks/phantom_baselines.py [--seeds 0 1 2] [--shape 20 256 256]``
(prints one JSON line per seed and the means). ``tests/test_phantom_em.py`` pins the numbers on
the shipped demo volume (seed 0 at the defaults).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import cc3d
import numpy as np
from scipy import ndimage
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from synapse_toolkit.data import Annotations, Volume
from synapse_toolkit.metrics.clustering import score_clustering
from synapse_toolkit.metrics.cremi_neurons import score_neuron_ids
from synapse_toolkit.metrics.cremi_partners import score_partners


# -- metrics (synapse_toolkit.metrics) ------------------------------------------------------------
def partner_fscore(
    pred: list[tuple[np.ndarray, np.ndarray]], truth: Annotations, neuron_ids: np.ndarray,
    voxel_size: np.ndarray,
) -> dict[str, float]:  # fmt: skip
    """CREMI synaptic-partner scores of predicted (pre, post) world points against ``truth``."""
    n = len(pred)
    locs = np.asarray([p for pair in pred for p in pair], np.float64).reshape(-1, 3)
    ann = Annotations(
        ids=np.arange(2 * n, dtype=np.uint64),
        types=tuple([Annotations.PRE, Annotations.POST] * n),
        locations_nm=locs,
        partners=np.arange(2 * n, dtype=np.uint64).reshape(-1, 2),
    )
    s = score_partners(ann, truth, Volume(neuron_ids, tuple(voxel_size)))
    return {k: float(v) for k, v in s.as_dict().items()}


def adjusted_rand(truth: np.ndarray, pred: np.ndarray) -> float:
    return score_clustering(truth, pred).ari


# -- baselines -------------------------------------------------------------------------------------
def threshold_segmentation(raw: np.ndarray, threshold: float, voxel_size: np.ndarray) -> np.ndarray:
    """Bright (cytoplasm) voxels -> 3D connected components; dark voxels take the nearest id."""
    smooth = ndimage.gaussian_filter(raw.astype(np.float32), (0, 1.0, 1.0))
    labels = cc3d.connected_components(smooth > threshold, connectivity=6).astype(np.uint64)
    if labels.max() == 0:
        return np.ones_like(labels)
    idx = ndimage.distance_transform_edt(
        labels == 0, sampling=voxel_size, return_distances=False, return_indices=True
    )
    return labels[tuple(idx)]


def neuron_baseline(raw: np.ndarray, truth: np.ndarray, voxel_size: np.ndarray) -> dict[str, Any]:
    """Best (lowest) CREMI score of threshold + connected components over thresholds."""
    results = []
    for q in (20, 30, 40, 50, 60, 70):
        t = float(np.percentile(raw, q))
        s = score_neuron_ids(truth, threshold_segmentation(raw, t, voxel_size),
                             border_threshold_nm=25.0, voxel_size_nm=tuple(voxel_size))  # fmt: skip
        results.append({"percentile": q, "threshold": t, "cremi_score": s.cremi_score,
                        "voi_split": s.voi_split, "voi_merge": s.voi_merge,
                        "adapted_rand": s.adapted_rand})  # fmt: skip
    best = min(results, key=lambda r: r["cremi_score"])
    return {"best": best, "all": results}


def dark_blob_partners(
    raw: np.ndarray, truth: np.ndarray, threshold: float, voxel_size: np.ndarray, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Dark blobs touching two truth segments -> (pre, post) world points, polarity guessed."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(raw.astype(np.float32), (0, 2.0, 2.0))
    blobs = cc3d.connected_components(smooth < threshold, connectivity=26)
    pairs = []
    grow = np.ones((1, 5, 5), bool)
    for sl, comp in zip(ndimage.find_objects(blobs), range(1, int(blobs.max()) + 1), strict=False):
        if sl is None:
            continue
        size = int((blobs[sl] == comp).sum())
        if size < 30 or size > 20000:
            continue
        pad = tuple(slice(max(0, s.start - 3), min(n, s.stop + 3))
                    for s, n in zip(sl, blobs.shape, strict=True))  # fmt: skip
        mask = ndimage.binary_dilation(blobs[pad] == comp, grow)
        ids, counts = np.unique(truth[pad][mask], return_counts=True)
        if len(ids) < 2:
            continue
        a, b = ids[np.argsort(counts)[::-1][:2]]
        if rng.random() < 0.5:
            a, b = b, a
        centre = np.argwhere(blobs[pad] == comp).mean(axis=0)
        pts = []
        for seg in (a, b):
            vox = np.argwhere(mask & (truth[pad] == seg))
            near = vox[np.argmin(np.linalg.norm((vox - centre) * voxel_size, axis=1))]
            pts.append((near + [s.start for s in pad]) * voxel_size)
        pairs.append((pts[0], pts[1]))
    return pairs


def synapse_baseline(
    raw: np.ndarray, truth: np.ndarray, annotations: Annotations, voxel_size: np.ndarray,
    seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Best partner F of the dark-blob baseline over thresholds."""
    results = []
    for q in (0.5, 1, 2, 4, 7, 10):
        t = float(np.percentile(raw, q))
        pairs = dark_blob_partners(raw, truth, t, voxel_size, seed)
        s = partner_fscore(pairs, annotations, truth, voxel_size)
        results.append({"percentile": q, "threshold": t, "n_pred": len(pairs), **s})
    best = max(results, key=lambda r: r["fscore"])
    return {"best": best, "all": results}


def patches(raw: np.ndarray, centres_nm: np.ndarray, voxel_size: np.ndarray,
            half: tuple[int, int, int] = (2, 24, 24)) -> np.ndarray:  # fmt: skip
    """Synapse-centred raw patches (N, prod(2 * half + 1)), edge-padded."""
    pad = np.pad(raw.astype(np.float32), [(h, h) for h in half], mode="edge")
    out = []
    for c in centres_nm:
        v = np.clip(np.round(c / voxel_size).astype(int), 0, np.asarray(raw.shape) - 1)
        sl = tuple(slice(int(x), int(x) + 2 * h + 1) for x, h in zip(v, half, strict=True))
        out.append(pad[sl].ravel())
    return np.asarray(out)


def type_baseline(
    raw: np.ndarray, centres_nm: np.ndarray, types: np.ndarray, voxel_size: np.ndarray, k: int,
    seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """ARI of k-means on PCA (10 components) of standardised raw synapse-centred patches."""
    if len(types) < max(k, 3):
        return {"ari": float("nan"), "n": len(types)}
    x = patches(raw, centres_nm, voxel_size)
    x = (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-6)
    emb = PCA(n_components=min(10, len(x) - 1), random_state=seed).fit_transform(x)
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(emb)
    return {"ari": adjusted_rand(types, pred), "n": len(types)}


def run(data: Any, synapses: dict[str, np.ndarray], n_types: int, seed: int = 0) -> dict[str, Any]:
    """All three baselines on a phantom (``data``: CremiData; ``synapses``: its synapse table)."""
    vs = np.asarray(data.raw.voxel_size_nm)
    raw = np.asarray(data.raw.data)
    truth = np.asarray(data.neuron_ids.data)
    return {
        "neurons": neuron_baseline(raw, truth, vs),
        "synapses": synapse_baseline(raw, truth, data.annotations, vs, seed),
        "types": type_baseline(raw, synapses["contact_nm"], synapses["type"], vs, n_types, seed),
    }


def main() -> None:
    from synapse_toolkit.phantom.em import EMPhantom
    from synapse_toolkit.phantom.params import EMPhantomParams

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shape", type=int, nargs=3, default=[20, 256, 256])
    args = ap.parse_args()
    summary: dict[str, list[float]] = {"cremi_score": [], "partner_f": [], "type_ari": []}
    all_types, all_patches_seed = [], []
    for seed in args.seeds:
        t0 = time.perf_counter()
        ph = EMPhantom(EMPhantomParams(shape=tuple(args.shape), seed=seed))
        data = ph.generate()
        assert data.raw is not None  # EMPhantom.generate always fills every part
        table = ph.synapse_table()
        res = run(data, table, ph.params.n_types, seed)
        summary["cremi_score"].append(res["neurons"]["best"]["cremi_score"])
        summary["partner_f"].append(res["synapses"]["best"]["fscore"])
        summary["type_ari"].append(res["types"]["ari"])
        all_types.append(table["type"])
        all_patches_seed.append(patches(np.asarray(data.raw.data), table["contact_nm"],
                                        np.asarray(ph.params.voxel_size_nm)))  # fmt: skip
        print(json.dumps({"seed": seed, "seconds": round(time.perf_counter() - t0, 1),
                          "neurons": res["neurons"]["best"], "synapses": res["synapses"]["best"],
                          "types": res["types"]}))  # fmt: skip
    # pooled type baseline over all seeds (more synapses, steadier ARI)
    x = np.concatenate(all_patches_seed)
    x = (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-6)
    types = np.concatenate(all_types)
    k = int(types.max()) + 1 if len(types) else 1
    emb = PCA(n_components=min(10, len(x) - 1), random_state=0).fit_transform(x)
    pooled = adjusted_rand(types, KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(emb))
    print(json.dumps({"mean_cremi_score": float(np.mean(summary["cremi_score"])),
                      "mean_partner_f": float(np.mean(summary["partner_f"])),
                      "mean_type_ari": float(np.nanmean(summary["type_ari"])),
                      "pooled_type_ari": pooled, "pooled_synapses": len(types)}))  # fmt: skip


if __name__ == "__main__":
    main()
