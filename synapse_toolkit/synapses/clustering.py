"""Synapse clustering: encode patches (ONNX), k-means on the codes, choose k.

The encoder is an ONNX file written by ``syntk train cluster-encoder`` (metadata: patch size and
voxel size in nm, input shape, how patches are aligned); it runs through
:mod:`synapse_toolkit.onnx_runtime`. An encoder with ``align = "contact"`` needs a cleft probability
map or a segmentation to straighten its patches on
(:func:`~synapse_toolkit.synapses.patches.contact_patches`). Codes are
z-scored per dimension before k-means (scikit-learn). ``k`` is given, or chosen among a range by
silhouette among the values of k whose clustering is stable across k-means seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.data import Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.synapses import CLEFT_THRESHOLD
from synapse_toolkit.synapses.patches import (
    PatchSpec,
    SynapseSites,
    contact_patches,
    extract_patches,
    standardise,
    standardise_channels,
)


class PatchEncoder:
    """An ONNX cluster encoder: patches (N, z, y, x), or (N, 2, z, y, x) contact-aligned, →
    codes (N, D)."""

    def __init__(self, path: str | Path, n_threads: int | None = 1) -> None:
        from synapse_toolkit.onnx_runtime import create_session, model_metadata, predictor

        self.path = Path(path)
        self.session = create_session(self.path, providers=["CPUExecutionProvider"],
                                      num_threads=n_threads)  # fmt: skip
        meta = model_metadata(self.session)
        try:
            self.spec = PatchSpec(tuple(meta["patch_size_nm"]), tuple(meta["patch_voxel_size_nm"]))
            self.input_shape = tuple(int(s) for s in meta["input_shape"])
        except KeyError as exc:
            raise DataError(f"{self.path}: not a cluster encoder (metadata lacks {exc})") from None
        if self.spec.shape != self.input_shape:
            raise DataError(
                f"{self.path}: patch shape {self.spec.shape} != input {self.input_shape}"
            )
        self.align = str(meta.get("align", "sites"))
        self.reach_nm = float(meta.get("reach_nm", 64.0))
        self.in_channels = int(meta.get("in_channels", 1))
        self._predict = predictor(self.session)

    @property
    def aligns_on_contact(self) -> bool:
        """True when patches are straightened on the contact (on a cleft map or a
        segmentation, one of which the clusterer must be given)."""
        return self.align == "contact"

    def patches(
        self,
        raw: Volume,
        sites: SynapseSites,
        labels: Volume | None = None,
        cleft: Volume | None = None,
        cleft_threshold: float = CLEFT_THRESHOLD,
    ) -> np.ndarray:
        """The patches this encoder reads, cut from ``raw``; a contact-aligned encoder
        straightens them on the cleft probability ``cleft`` if given, else on the segment
        boundary in ``labels``."""
        if self.aligns_on_contact:
            if labels is None and cleft is None:
                raise DataError(
                    f"{self.path.name}: this encoder straightens patches on the contact; "
                    "wire a cleft probability (clefts) or a segmentation (labels) into the "
                    "clusterer"
                )
            return contact_patches(raw, labels, sites, self.spec, self.reach_nm, cleft=cleft,
                                   cleft_threshold=cleft_threshold)  # fmt: skip
        return extract_patches(raw, sites, self.spec)

    def encode_sites(
        self,
        raw: Volume,
        sites: SynapseSites,
        labels: Volume | None = None,
        batch: int = 128,
        cleft: Volume | None = None,
        cleft_threshold: float = CLEFT_THRESHOLD,
    ) -> np.ndarray:
        """Codes (N, D) of every synapse in ``sites``, cut and encoded ``batch`` synapses at a
        time, so memory follows the batch rather than the number of synapses."""
        parts = [self.encode(self.patches(raw, sites.take(np.arange(a, min(a + batch, len(sites)))),
                                          labels, cleft, cleft_threshold))
                 for a in range(0, len(sites), batch)]  # fmt: skip
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float64)

    def encode(self, patches: np.ndarray) -> np.ndarray:
        """Codes of raw-intensity patches (standardised here), one ONNX call per patch."""
        p = np.asarray(patches, np.float32)
        x = standardise(p)[:, None] if p.ndim == 4 else standardise_channels(p)
        if x.shape[1:] != (self.in_channels, *self.input_shape):
            raise DataError(
                f"patches have shape {x.shape[1:]}, the encoder wants "
                f"{(self.in_channels, *self.input_shape)}"
            )
        out = [self._predict(x[i][None]).reshape(-1) for i in range(len(x))]
        return np.asarray(out, np.float64).reshape(len(x), -1)


def zscore(codes: np.ndarray) -> np.ndarray:
    c = np.asarray(codes, np.float64)
    sd = c.std(axis=0)
    return (c - c.mean(axis=0)) / np.where(sd > 1e-12, sd, 1.0)


def kmeans(codes: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """k-means labels of z-scored codes (scikit-learn)."""
    from sklearn.cluster import KMeans

    n = len(codes)
    if n == 0:
        return np.zeros(0, np.int64)
    k = max(1, min(int(k), n))
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed)
    return km.fit_predict(zscore(codes)).astype(np.int64)


@dataclass(frozen=True)
class KChoice:
    """k chosen by stability and silhouette, with the figures per candidate k."""

    k: int
    silhouette: dict[int, float]
    stability: dict[int, float]


def choose_k(
    codes: np.ndarray,
    k_range: tuple[int, int] = (2, 8),
    *,
    n_runs: int = 5,
    subsample: float = 0.8,
    min_stability: float = 0.8,
    seed: int = 0,
) -> KChoice:
    """Stability = mean ARI between k-means runs on random ``subsample`` s (on shared points);
    among the k with stability >= ``min_stability`` (all k if none) take the best silhouette."""
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    x = zscore(codes)
    n = len(x)
    lo, hi = k_range
    ks = [k for k in range(max(2, lo), hi + 1) if k < n]
    if not ks:
        return KChoice(1, {}, {})
    rng = np.random.default_rng(seed)
    sil: dict[int, float] = {}
    stab: dict[int, float] = {}
    for k in ks:
        sil[k] = float(silhouette_score(x, kmeans(x, k, seed)))
        runs = []
        for r in range(n_runs):
            idx = np.sort(rng.choice(n, max(k + 1, int(subsample * n)), replace=False))
            full = np.full(n, -1)
            full[idx] = kmeans(x[idx], k, seed + 1 + r, n_init=3)
            runs.append(full)
        pairs = []
        for a in range(n_runs):
            for b in range(a + 1, n_runs):
                both = (runs[a] >= 0) & (runs[b] >= 0)
                pairs.append(adjusted_rand_score(runs[a][both], runs[b][both]))
        stab[k] = float(np.mean(pairs))
    stable = [k for k in ks if stab[k] >= min_stability] or ks
    return KChoice(max(stable, key=lambda k: sil[k]), sil, stab)


def gallery_members(clusters: np.ndarray, per_cluster: int = 6) -> np.ndarray:
    """Positions of the first ``per_cluster`` synapses of each cluster, in ascending order."""
    c = np.asarray(clusters)
    picks = [np.flatnonzero(c == v)[:per_cluster] for v in np.unique(c)]
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, np.int64)


def pca_codes(patches: np.ndarray, n_components: int = 16, seed: int = 0) -> np.ndarray:
    """Baseline codes: PCA of standardised raw patches (channel 0 of multi-channel patches)."""
    from sklearn.decomposition import PCA

    p = np.asarray(patches, np.float32)
    p = p[:, 0] if p.ndim == 5 else p
    x = standardise(p).reshape(len(p), -1)
    n = max(1, min(n_components, len(x) - 1, x.shape[1]))
    return PCA(n_components=n, random_state=seed).fit_transform(x)


def summary(choice: KChoice | None) -> dict[str, Any]:
    if choice is None:
        return {}
    return {"k": choice.k, "silhouette": choice.silhouette, "stability": choice.stability}
