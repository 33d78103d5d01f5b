"""Pictures of a synapse clustering (PNG, matplotlib Agg): the embedding in 2D coloured by
cluster (and by true type when known), and a gallery of central sections per cluster."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def embedding_2d(codes: np.ndarray, method: str = "pca") -> np.ndarray:
    """2D projection of z-scored codes: ``pca`` or ``umap`` (needs umap-learn)."""
    from synapse_toolkit.synapses.clustering import zscore

    x = zscore(codes)
    if len(x) < 3 or x.shape[1] < 2:
        return np.pad(x[:, :2], ((0, 0), (0, max(0, 2 - x.shape[1]))))
    if method == "umap":
        import umap  # optional (umap-learn), untyped

        return np.asarray(umap.UMAP(random_state=0).fit_transform(x))
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=0).fit_transform(x)


def plot_embedding(
    codes: np.ndarray,
    clusters: np.ndarray,
    path: str | Path,
    truth: np.ndarray | None = None,
    method: str = "pca",
) -> Path:
    """Scatter of the 2D embedding coloured by cluster (left) and true type (right, if given)."""
    plt = _pyplot()
    xy = embedding_2d(codes, method)
    panels = [("cluster", clusters)] + ([("true type", truth)] if truth is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2), squeeze=False)
    for ax, (title, lab) in zip(axes[0], panels, strict=True):
        lab = np.asarray(lab)
        for v in np.unique(lab):
            m = lab == v
            ax.scatter(xy[m, 0], xy[m, 1], s=12, label=str(int(v)), alpha=0.8)
        ax.set_title(f"synapses by {title} ({method.upper()})")
        ax.set_xlabel(f"{method.upper()} 1")
        ax.set_ylabel(f"{method.upper()} 2")
        ax.legend(fontsize=7, markerscale=1.5, title=title, title_fontsize=7)
    return _save(plt, fig, path)


def plot_gallery(
    patches: np.ndarray,
    clusters: np.ndarray,
    path: str | Path,
    per_cluster: int = 6,
    sizes: Mapping[int, int] | None = None,
) -> Path:
    """Central sections of up to ``per_cluster`` patches per cluster, one row per cluster
    (pre-synaptic side left, post-synaptic side right). ``sizes`` gives the clusters' sizes
    when ``patches`` are only a sample of each (default: counted in ``clusters``)."""
    plt = _pyplot()
    labs = np.unique(clusters)
    rows = max(1, len(labs))
    fig, axes = plt.subplots(rows, per_cluster, figsize=(1.3 * per_cluster, 1.4 * rows),
                             squeeze=False)  # fmt: skip
    for ax in axes.ravel():
        ax.axis("off")
    zc = patches.shape[1] // 2 if len(patches) else 0
    for r, v in enumerate(labs):
        members = np.flatnonzero(clusters == v)[:per_cluster]
        n = int(np.sum(clusters == v)) if sizes is None else int(sizes[int(v)])
        axes[r, 0].set_title(f"cluster {int(v)} (n={n})", fontsize=7, loc="left")
        for c, i in enumerate(members):
            axes[r, c].imshow(patches[i, zc], cmap="gray")
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: str | Path) -> Path:
    """Lay out, write as PNG (folders made) and close ``fig``."""
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
