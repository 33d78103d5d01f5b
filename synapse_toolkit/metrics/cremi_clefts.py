"""CREMI synaptic-cleft metrics: FP/FN counts, distance statistics, cleft score.

Semantics of the CREMI reference evaluator (cremi_python ``Clefts``):

- Cleft volumes mark "no cleft" with ``0xffffffffffffffff`` (background); every other id,
  including 0, is cleft. Truth ``0xfffffffffffffffe`` marks an invalid region, removed from
  *both* volumes (neither counted nor used as a target).
- Distances are Euclidean in nm with anisotropic voxels: a test cleft voxel's *FP distance* is
  its distance to the nearest truth cleft voxel, a truth cleft voxel's *FN distance* its
  distance to the nearest test cleft voxel (computed as scipy's EDT does:
  ``sqrt((dz*rz)**2 + (dy*ry)**2 + (dx*rx)**2)``).
- FP count = test cleft voxels with FP distance ``> threshold`` (strict; 200 nm default),
  FN count likewise. Statistics (mean, std, max, count, median) are over all test (FP) or truth
  (FN) cleft voxels. Cleft score = (mean FP distance + mean FN distance) / 2.

How it is computed: the volumes are read block by block and only the flat indices of cleft
voxels are kept (8 bytes each); a voxel that is a cleft voxel of both volumes has distance 0,
the others' nearest distances come from a k-d tree (scipy ``cKDTree``) over the other volume's
cleft voxels and are then recomputed exactly as above. No volume-sized distance
transform is built, so memory is O(cleft voxels) and *every* statistic (counts at any
threshold, mean, std, max, median) is exact blockwise, equal to the in-memory reference.

Empty sides (where the reference raises or measures a scipy artifact): by default the distance
to an empty set is ``+inf``: with no test clefts every truth cleft voxel is a false negative
(FN distances inf), with no truth clefts every test voxel is a false positive; the statistics
of an empty side are NaN with count 0; the cleft score is inf if exactly one side is empty and
0.0 if both are. ``reference_artifacts=True`` instead reproduces cremi_python: distances to an
empty set are measured to the virtual voxel (-1, 0, 0) (scipy's EDT of an all-background volume)
and the empty side's statistics are NaN (the reference raises).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from synapse_toolkit.blockwise import iter_blocks
from synapse_toolkit.cremi_ids import CLEFT_INVALID_ID, NO_LABEL
from synapse_toolkit.errors import DataError
from synapse_toolkit.metrics._volumes import check_labels, resolve_voxel_size, unwrap

#: Cleft id meaning "no cleft".
BACKGROUND = NO_LABEL
#: Truth cleft id marking a region excluded from evaluation.
INVALID = CLEFT_INVALID_ID


@dataclass(frozen=True)
class DistanceStats:
    """Summary of FP or FN distances (nm). Empty: NaN values, count 0."""

    mean: float
    std: float
    max: float
    count: int
    median: float

    @classmethod
    def of(cls, d: np.ndarray) -> DistanceStats:
        if d.size == 0:
            nan = float("nan")
            return cls(nan, nan, nan, 0, nan)
        with np.errstate(invalid="ignore"):
            return cls(float(np.mean(d)), float(np.std(d)), float(np.max(d)), int(d.size),
                       float(np.median(d)))  # fmt: skip

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std, "max": self.max, "count": self.count,
                "median": self.median}  # fmt: skip


@dataclass(frozen=True)
class CleftScores:
    """Cleft scores; ``fp_distances``/``fn_distances`` (nm) allow counts at other thresholds."""

    threshold_nm: float
    fp_distances: np.ndarray = field(repr=False)
    fn_distances: np.ndarray = field(repr=False)

    @property
    def false_positives(self) -> int:
        return self.count_false_positives(self.threshold_nm)

    @property
    def false_negatives(self) -> int:
        return self.count_false_negatives(self.threshold_nm)

    def count_false_positives(self, threshold_nm: float = 200.0) -> int:
        return int(np.count_nonzero(self.fp_distances > threshold_nm))

    def count_false_negatives(self, threshold_nm: float = 200.0) -> int:
        return int(np.count_nonzero(self.fn_distances > threshold_nm))

    @property
    def fp_stats(self) -> DistanceStats:
        return DistanceStats.of(self.fp_distances)

    @property
    def fn_stats(self) -> DistanceStats:
        return DistanceStats.of(self.fn_distances)

    @property
    def n_test_voxels(self) -> int:
        return int(self.fp_distances.size)

    @property
    def n_truth_voxels(self) -> int:
        return int(self.fn_distances.size)

    @property
    def cremi_score(self) -> float:
        """(mean FP distance + mean FN distance) / 2; see the module docstring for empty sides."""
        n_test, n_truth = self.n_test_voxels, self.n_truth_voxels
        if n_test == 0 and n_truth == 0:
            return 0.0
        if n_test == 0 or n_truth == 0:
            fp, fn = self.fp_stats.mean, self.fn_stats.mean
            if math.isnan(fp) or math.isnan(fn):
                return math.inf
        return (self.fp_stats.mean + self.fn_stats.mean) / 2.0

    @property
    def voxel_fscore(self) -> float:
        """Derived voxel F-score (not in cremi_python): P = (n_test - FP) / n_test,
        R = (n_truth - FN) / n_truth; 1.0 if both volumes are empty, 0.0 if one is."""
        n_test, n_truth = self.n_test_voxels, self.n_truth_voxels
        if n_test == 0 and n_truth == 0:
            return 1.0
        if n_test == 0 or n_truth == 0:
            return 0.0
        p = (n_test - self.false_positives) / n_test
        r = (n_truth - self.false_negatives) / n_truth
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        fp, fn = self.fp_stats, self.fn_stats
        return {
            "threshold_nm": self.threshold_nm,
            "false_positives": self.false_positives,
            "false_negatives": self.false_negatives,
            "fp_mean": fp.mean, "fp_std": fp.std, "fp_max": fp.max, "fp_count": fp.count,
            "fp_median": fp.median,
            "fn_mean": fn.mean, "fn_std": fn.std, "fn_max": fn.max, "fn_count": fn.count,
            "fn_median": fn.median,
            "cremi_score": self.cremi_score,
            "voxel_fscore": self.voxel_fscore,
            "n_test_voxels": self.n_test_voxels,
            "n_truth_voxels": self.n_truth_voxels,
        }  # fmt: skip


def cleft_voxels(
    truth: Any, pred: Any, block_shape: tuple[int, int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """(truth cleft voxels, test cleft voxels, shape): each side's voxels as sorted C-order flat
    indices (int64), read block by block; the truth invalid region is removed from both."""
    shape = tuple(int(s) for s in truth.shape)
    if tuple(pred.shape) != shape:
        raise DataError(f"truth shape {shape} != prediction shape {tuple(pred.shape)}")
    if len(shape) != 3:
        raise DataError(f"cleft volumes must be 3D (z, y, x), got shape {shape}")
    bs = block_shape or (max(1, min(shape[0], (1 << 24) // max(1, shape[1] * shape[2]))),
                         shape[1], shape[2])  # fmt: skip
    t_idx: list[np.ndarray] = []
    p_idx: list[np.ndarray] = []
    bg, inv = np.uint64(BACKGROUND), np.uint64(INVALID)
    for block in iter_blocks(shape, bs):
        roi = block.write
        tb = np.asarray(truth[roi]).astype(np.uint64, copy=False)
        pb = np.asarray(pred[roi]).astype(np.uint64, copy=False)
        valid = tb != inv
        t_idx.append(_global_index(np.flatnonzero((tb != bg) & valid), roi, shape))
        p_idx.append(_global_index(np.flatnonzero((pb != bg) & valid), roi, shape))
    out = []
    for parts in (t_idx, p_idx):
        flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        del parts[:]
        if flat.size > 1 and not bool(np.all(flat[1:] > flat[:-1])):
            flat.sort()  # C order (as the reference's boolean indexing), whatever the blocks
        out.append(flat)
    return out[0], out[1], (shape[0], shape[1], shape[2])


def _global_index(local: np.ndarray, roi: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Flat indices in a block (C order of the block) -> flat indices in the volume."""
    block_shape = tuple(s.stop - s.start for s in roi)
    zyx = np.unravel_index(local, block_shape)
    return np.ravel_multi_index(tuple(c + s.start for c, s in zip(zyx, roi, strict=True)), shape)


def _coords(flat: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(N, 3) int64 voxel coordinates of C-order flat indices."""
    return np.stack(np.unravel_index(flat, shape), axis=1)


def _edt_distance(delta: np.ndarray, res: np.ndarray) -> np.ndarray:
    """sqrt(sum((delta * res)**2)) summed z, y, x in order, as scipy's EDT does."""
    d = delta.astype(np.float64) * res
    d *= d
    return np.sqrt((d[:, 0] + d[:, 1]) + d[:, 2])


#: voxels per step when coordinates are materialised (bounds the temporaries)
_CHUNK = 1 << 18


def nearest_distances(
    src: np.ndarray,
    dst: np.ndarray,
    res: np.ndarray,
    shape: tuple[int, int, int],
) -> np.ndarray:
    """Distance (nm) from each voxel of ``src`` to the nearest voxel of ``dst`` (non-empty);
    both are sorted flat indices into ``shape``. Shared voxels get 0 without a tree query; the
    k-d tree over ``dst`` is built only if some voxel of ``src`` is not in ``dst``."""
    out = np.zeros(src.size, np.float64)
    tree: cKDTree | None = None
    for start in range(0, src.size, _CHUNK):
        s = src[start : start + _CHUNK]
        pos = np.minimum(np.searchsorted(dst, s), dst.size - 1)
        todo = np.flatnonzero(dst[pos] != s)
        if todo.size == 0:
            continue
        if tree is None:
            pts = np.empty((dst.size, 3), np.float64)
            for a in range(0, dst.size, _CHUNK):
                pts[a : a + _CHUNK] = _coords(dst[a : a + _CHUNK], shape) * res
            tree = cKDTree(pts)
        q = _coords(s[todo], shape)
        _, idx = tree.query(q.astype(np.float64) * res, k=1, workers=-1)
        out[start + todo] = _edt_distance(_coords(dst[idx], shape) - q, res)
    return out


def _to_empty(
    src: np.ndarray, res: np.ndarray, shape: tuple[int, int, int], reference_artifacts: bool
) -> np.ndarray:
    if not reference_artifacts:
        return np.full(src.size, np.inf)
    virtual = np.array([-1, 0, 0], dtype=np.int64)
    return _edt_distance(_coords(src, shape) - virtual, res)


def score_clefts(
    truth: Any,
    pred: Any,
    *,
    threshold_nm: float = 200.0,
    voxel_size_nm: tuple[float, float, float] | None = None,
    block_shape: tuple[int, int, int] | None = None,
    reference_artifacts: bool = False,
) -> CleftScores:
    """CREMI cleft scores of ``pred`` against ``truth`` (numpy, h5py, zarr or Volume)."""
    t_arr, t_vs = unwrap(truth, "truth clefts")
    p_arr, p_vs = unwrap(pred, "predicted clefts")
    check_labels(t_arr, "truth clefts")
    check_labels(p_arr, "predicted clefts")
    vs = resolve_voxel_size(voxel_size_nm, t_vs, p_vs)
    if vs is None:
        raise DataError("cleft scoring needs the voxel size (voxel_size_nm, z, y, x nm)")
    res = np.asarray(vs, dtype=np.float64)
    t_pts, p_pts, shape = cleft_voxels(t_arr, p_arr, block_shape)
    if t_pts.size == 0:
        fp = _to_empty(p_pts, res, shape, reference_artifacts)
    else:
        fp = nearest_distances(p_pts, t_pts, res, shape)
    if p_pts.size == 0:
        fn = _to_empty(t_pts, res, shape, reference_artifacts)
    else:
        fn = nearest_distances(t_pts, p_pts, res, shape)
    return CleftScores(float(threshold_nm), fp, fn)
