"""EMSynConn synapse candidates from a signed-proximity map and a neuron segmentation.

1. Threshold the proximity map: ``> +threshold`` is pre-synaptic, ``< -threshold`` post-synaptic.
2. Split each side by segment and take 26-connected components (cc3d, one component never spans
   two segments); keep components of at least ``min_voxels`` voxels. With ``grow_threshold``
   (hysteresis), components are those of ``> +grow_threshold`` (``< -grow_threshold``) that
   contain a voxel beyond ``threshold``: no new components, larger ones.
3. Pair every pre component with every post component that lies in a *different*, *touching*
   segment, whose closest approach is at most ``max_gap_nm`` and whose centroids are at most
   ``max_centroid_distance_nm`` apart. One pre component may pair with several post components
   (polyadic synapses).

Each candidate's pre/post location is the component voxel nearest to the component's centroid,
so the location always lies inside the component's segment (what the CREMI evaluation checks).
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import edt
import numpy as np
from scipy import ndimage

from synapse_toolkit.data import PartnerTable
from synapse_toolkit.errors import DataError
from synapse_toolkit.synapses.targets import Grid


@dataclass(frozen=True)
class CandidateSettings:
    """Parameters of candidate generation (distances in nm). The defaults were chosen with
    ``benchmarks/tune_candidates.py`` on development seeds for the shipped pruning CNN, on
    ground-truth and predicted segmentations alike (0.2 is slightly better with the truth, 0.3
    clearly better on a predicted segmentation); without pruning, 0.4 is more precise."""

    threshold: float = 0.3
    #: hysteresis: grow components down to this |proximity| (None: no growing)
    grow_threshold: float | None = None
    min_voxels: int = 50
    max_gap_nm: float = 60.0
    max_centroid_distance_nm: float = 400.0
    contact_tolerance_nm: float = 24.0


@dataclass(frozen=True)
class Component:
    """A thresholded proximity component inside one segment."""

    label: int
    segment: int
    size: int
    centroid_vox: np.ndarray
    anchor_vox: np.ndarray  # component voxel nearest to the centroid
    bbox: tuple[slice, slice, slice]
    mean_abs_proximity: float


@dataclass(frozen=True)
class Candidates:
    """Candidate pre→post pairs with their components (voxel indices on ``grid``)."""

    grid: Grid
    pre_labels: np.ndarray  # (z, y, x) component labels of the pre side (0 = none)
    post_labels: np.ndarray
    pre: dict[int, Component]
    post: dict[int, Component]
    pairs: list[tuple[int, int, float]]  # (pre label, post label, closest approach nm)

    def __len__(self) -> int:
        return len(self.pairs)

    def to_table(self, scores: np.ndarray | None = None) -> PartnerTable:
        """One row per pair; synapse id = pre component label (polyadic rows share it)."""
        n = len(self.pairs)
        if n == 0:
            return PartnerTable.empty()
        pre_vox = np.stack([self.pre[p].anchor_vox for p, _, _ in self.pairs])
        post_vox = np.stack([self.post[q].anchor_vox for _, q, _ in self.pairs])
        if scores is None:
            scores = np.asarray(
                [min(self.pre[p].mean_abs_proximity, self.post[q].mean_abs_proximity)
                 for p, q, _ in self.pairs]
            )  # fmt: skip
        return PartnerTable(
            self.grid.to_world(pre_vox),
            self.grid.to_world(post_vox),
            np.asarray([self.pre[p].segment for p, _, _ in self.pairs], np.uint64),
            np.asarray([self.post[q].segment for _, q, _ in self.pairs], np.uint64),
            np.asarray(scores, np.float64),
            np.asarray([p for p, _, _ in self.pairs], np.uint64),
        )


def _components(
    mask: np.ndarray,
    segmentation: np.ndarray,
    proximity: np.ndarray,
    min_voxels: int,
    seeds: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[int, Component]]:
    """Components of ``mask`` split by segment, of at least ``min_voxels`` voxels (and, with
    ``seeds``, holding a seed voxel)."""
    seg_in = np.where(mask, segmentation, 0)
    labels, n = cc3d.connected_components(seg_in, connectivity=26, return_N=True)
    labels = labels.astype(np.uint32)
    comps: dict[int, Component] = {}
    if n == 0:
        return labels, comps
    sizes = np.bincount(labels.reshape(-1), minlength=n + 1)
    seeded = np.ones(n + 1, bool)
    if seeds is not None:
        seeded[:] = False
        seeded[labels[seeds & (labels > 0)]] = True
    objects = ndimage.find_objects(labels)
    keep = np.zeros(n + 1, bool)
    for lab in range(1, n + 1):
        if sizes[lab] < min_voxels or not seeded[lab] or objects[lab - 1] is None:
            continue
        box = objects[lab - 1]
        local = labels[box] == lab
        coords = np.argwhere(local)
        centroid = coords.mean(axis=0)
        anchor = coords[np.argmin(((coords - centroid) ** 2).sum(axis=1))]
        starts = np.asarray([s.start for s in box])
        seg_id = int(segmentation[box][local][0])
        comps[lab] = Component(
            label=lab,
            segment=seg_id,
            size=int(sizes[lab]),
            centroid_vox=centroid + starts,
            anchor_vox=anchor + starts,
            bbox=box,
            mean_abs_proximity=float(np.abs(proximity[box][local]).mean()),
        )
        keep[lab] = True
    labels[~keep[labels]] = 0
    return labels, comps


def _grow(box: tuple[slice, ...], margin: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, s.start - int(m)), min(n, s.stop + int(m)))
        for s, m, n in zip(box, margin, shape, strict=True)
    )


def _segments_touch(seg_crop: np.ndarray, a: int, b: int, tolerance_vox: np.ndarray) -> bool:
    """True if segment ``b`` lies within the tolerance of segment ``a`` inside the crop
    (in-plane dilation by the tolerance, plus one section in z)."""
    grown = ndimage.binary_dilation(
        seg_crop == a, structure=np.ones((1, 3, 3), bool), iterations=int(max(1, tolerance_vox[1]))
    )
    grown |= ndimage.binary_dilation(grown, structure=np.ones((3, 1, 1), bool))
    return bool(np.any(grown & (seg_crop == b)))


def find_candidates(
    proximity: np.ndarray,
    segmentation: np.ndarray,
    grid: Grid,
    settings: CandidateSettings | None = None,
) -> Candidates:
    """EMSynConn candidates (see the module docstring) on ``grid``.

    ``proximity`` is the signed-proximity map (z, y, x) in [-1, 1]; ``segmentation`` the neuron
    ids (0 = background / boundary, never a partner).
    """
    s = settings or CandidateSettings()
    prox = np.asarray(proximity, np.float32)
    seg = np.asarray(segmentation)
    if prox.shape != seg.shape or prox.shape != tuple(grid.shape):
        raise DataError(
            f"proximity {prox.shape}, segmentation {seg.shape} and grid {grid.shape} must match"
        )
    if s.grow_threshold is None:
        pre_labels, pre = _components(prox > s.threshold, seg, prox, s.min_voxels)
        post_labels, post = _components(prox < -s.threshold, seg, prox, s.min_voxels)
    else:
        if not 0 <= s.grow_threshold <= s.threshold:
            raise DataError(
                f"candidate grow_threshold {s.grow_threshold} must lie in [0, threshold "
                f"{s.threshold}]"
            )
        low = s.grow_threshold
        pre_labels, pre = _components(prox > low, seg, prox, s.min_voxels, prox > s.threshold)
        post_labels, post = _components(prox < -low, seg, prox, s.min_voxels, prox < -s.threshold)
    vs = np.asarray(grid.voxel_size_nm)
    margin = np.ceil(s.max_gap_nm / vs).astype(int) + 1
    tol = np.ceil(s.contact_tolerance_nm / vs).astype(int)
    pairs: list[tuple[int, int, float]] = []
    post_centroids = {q: c.centroid_vox * vs for q, c in post.items()}
    for p, comp in pre.items():
        box = _grow(comp.bbox, margin, seg.shape)
        crop_post = post_labels[box]
        near = [int(q) for q in np.unique(crop_post) if q != 0]
        near = [
            q for q in near
            if post[q].segment != comp.segment
            and np.linalg.norm(post_centroids[q] - comp.centroid_vox * vs)
            <= s.max_centroid_distance_nm
        ]  # fmt: skip
        if not near:
            continue
        dist = edt.edt(
            (pre_labels[box] != p).astype(np.uint8), anisotropy=tuple(float(v) for v in vs)
        )
        seg_crop = seg[box]
        for q in near:
            gap = float(dist[crop_post == q].min())
            if gap > s.max_gap_nm:
                continue
            if not _segments_touch(seg_crop, comp.segment, post[q].segment, tol):
                continue
            pairs.append((p, q, gap))
    return Candidates(grid, pre_labels, post_labels, pre, post, pairs)
