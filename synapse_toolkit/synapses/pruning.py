"""EMSynConn candidate pruning, numpy side: patches around candidates, labels, ONNX inference.

A candidate's patch is centred between its pre and post anchor voxels and has four channels:

0. EM intensities (scaled to [0, 1]),
1. the signed-proximity map,
2. the mask of the pre-synaptic segment,
3. the mask of the post-synaptic segment.

Patches are cut at full resolution and average-pooled in-plane by ``downsample`` (default 2), so a
(8, 48, 48) patch covers 320 × 384 × 384 nm on 40 × 4 × 4 nm data. Outside the volume the patch
is zero. The CNN itself (torch) lives in :mod:`synapse_toolkit.nn.pruner`; here it is run through
ONNX Runtime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synapse_toolkit.data import Annotations, ArrayLike, PartnerTable
from synapse_toolkit.errors import DataError
from synapse_toolkit.inference.intensity import unit_scale
from synapse_toolkit.synapses.candidates import Candidates
from synapse_toolkit.synapses.targets import Grid

N_CHANNELS = 4


@dataclass(frozen=True)
class PatchSettings:
    """Patch shape (after in-plane pooling by ``downsample``), in voxels (z, y, x), and the
    factor raw is multiplied by (None: :func:`unit_scale` of its dtype)."""

    shape: tuple[int, int, int] = (8, 48, 48)
    downsample: int = 2
    intensity_scale: float | None = None


def _crop(arr: ArrayLike, start: np.ndarray, size: np.ndarray) -> np.ndarray:
    """The (z, y, x) box of ``arr`` ((z, y, x) or (1, z, y, x)), zero outside the volume."""
    out = np.zeros(tuple(int(s) for s in size), arr.dtype)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + size, arr.shape[-3:])
    if np.any(hi <= lo):
        return out
    src = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    dst = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start, strict=True))
    out[dst] = arr[(0, *src)] if len(arr.shape) == 4 else arr[src]
    return out


def _pool(x: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return x
    z, y, xx = x.shape
    return x.reshape(z, y // f, f, xx // f, f).mean(axis=(2, 4))


def extract_patch(
    raw: ArrayLike,
    proximity: ArrayLike,
    segmentation: ArrayLike,
    center_vox: np.ndarray,
    pre_segment: int,
    post_segment: int,
    settings: PatchSettings | None = None,
) -> np.ndarray:
    """The (4, *shape) float32 patch for one candidate centred at ``center_vox``; ``proximity``
    is (z, y, x) or (1, z, y, x). Only the patch's box is read from the arrays."""
    s = settings or PatchSettings()
    f = int(s.downsample)
    full = np.asarray([s.shape[0], s.shape[1] * f, s.shape[2] * f])
    start = np.round(np.asarray(center_vox, np.float64)).astype(int) - full // 2
    scale = unit_scale(raw.dtype) if s.intensity_scale is None else s.intensity_scale
    em = _crop(raw, start, full).astype(np.float32) * np.float32(scale)
    prox = _crop(proximity, start, full).astype(np.float32)
    seg = _crop(segmentation, start, full)
    pre = (seg == np.uint64(pre_segment)).astype(np.float32)
    post = (seg == np.uint64(post_segment)).astype(np.float32)
    return np.stack([_pool(c, f) for c in (em, prox, pre, post)]).astype(np.float32)


def row_scores(
    table: PartnerTable,
    raw: ArrayLike,
    proximity: ArrayLike,
    segmentation: ArrayLike,
    grid: Grid,
    pruner: PrunerONNX,
) -> np.ndarray:
    """The pruning CNN's keep probability of each row of ``table`` (any assigner's), on the
    candidate patch centred midway between the row's pre and post sites with its two segments.
    Only the patches are read from the volumes."""
    if len(table) == 0:
        return np.zeros(0, np.float64)
    centres = grid.to_voxel((table.pre_nm + table.post_nm) / 2.0)
    patches = np.stack([
        extract_patch(raw, proximity, segmentation, c, int(a), int(b), pruner.patch_settings)
        for c, a, b in zip(centres, table.pre_segment, table.post_segment, strict=True)
    ])  # fmt: skip
    return pruner.scores(patches)


def candidate_patches(
    candidates: Candidates,
    raw: np.ndarray,
    proximity: np.ndarray,
    segmentation: np.ndarray,
    settings: PatchSettings | None = None,
) -> np.ndarray:
    """Patches (N, 4, *shape) for all candidate pairs, in ``candidates.pairs`` order."""
    s = settings or PatchSettings()
    if len(candidates) == 0:
        return np.zeros((0, N_CHANNELS, *s.shape), np.float32)
    patches = []
    for p, q, _ in candidates.pairs:
        pre, post = candidates.pre[p], candidates.post[q]
        centre = (pre.anchor_vox + post.anchor_vox) / 2.0
        patches.append(
            extract_patch(raw, proximity, segmentation, centre, pre.segment, post.segment, s)
        )
    return np.stack(patches)


def label_candidates(
    candidates: Candidates,
    truth: Annotations,
    truth_segmentation: np.ndarray,
    grid: Grid,
    max_distance_nm: float = 400.0,
) -> np.ndarray:
    """Training labels: True if a ground-truth pair matches the candidate the CREMI way.

    A match needs the same (pre, post) labels in the ground-truth segmentation at the candidate's
    and the truth pair's locations, and both distances at most ``max_distance_nm``.
    """
    table = candidates.to_table()
    if len(table) == 0:
        return np.zeros(0, bool)
    world = truth.world_locations()
    index = {int(i): k for k, i in enumerate(truth.ids.tolist())}
    if len(truth.partners) == 0:
        return np.zeros(len(table), bool)
    gt_pre = world[[index[int(p)] for p, _ in truth.partners]]
    gt_post = world[[index[int(q)] for _, q in truth.partners]]

    def labels_at(points: np.ndarray) -> np.ndarray:
        idx = np.clip(grid.nearest_voxel(points), 0, np.asarray(grid.shape) - 1)
        return truth_segmentation[tuple(idx.T)]

    gl = np.stack([labels_at(gt_pre), labels_at(gt_post)], 1)
    cl = np.stack([labels_at(table.pre_nm), labels_at(table.post_nm)], 1)
    d_pre = np.linalg.norm(table.pre_nm[:, None] - gt_pre[None], axis=2)
    d_post = np.linalg.norm(table.post_nm[:, None] - gt_post[None], axis=2)
    same = np.all(cl[:, None, :] == gl[None, :, :], axis=2)
    ok = same & (d_pre <= max_distance_nm) & (d_post <= max_distance_nm)
    return ok.any(axis=1)


class PrunerONNX:
    """The pruning CNN exported to ONNX: ``scores(patches) -> keep probability``."""

    def __init__(self, path: str | os.PathLike[str], n_threads: int = 2) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: pruning model not found")
        from synapse_toolkit.onnx_runtime import create_session, model_metadata

        self.session = create_session(self.path, num_threads=n_threads)
        self.input_name = self.session.get_inputs()[0].name
        meta = model_metadata(self.session)
        shape = meta.get("input_shape")
        down = meta.get("downsample", 2)
        self.patch_settings = PatchSettings(tuple(shape), int(down)) if shape else PatchSettings()
        batch = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None

    def scores(self, patches: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Keep probabilities (sigmoid of the CNN's logit) for patches (N, 4, z, y, x)."""
        if len(patches) == 0:
            return np.zeros(0, np.float64)
        if self.fixed_batch is not None:
            batch_size = self.fixed_batch
        out = []
        for i in range(0, len(patches), batch_size):
            batch = np.ascontiguousarray(patches[i : i + batch_size], np.float32)
            logits = self.session.run(None, {self.input_name: batch})[0].reshape(-1)
            out.append(1.0 / (1.0 + np.exp(-logits.astype(np.float64))))
        return np.concatenate(out)
