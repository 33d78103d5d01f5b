"""CREMI neuron-segmentation metrics: VOI split/merge, adapted Rand error, CREMI score.

Semantics are those of the CREMI reference evaluator (cremi_python, 2018):

- Only the truth id ``0xffffffffffffffff`` is ignored; truth id 0 is an ordinary object.
  Nothing in the prediction is ignored.
- Optional border mask, given in nm (the challenge used 25 nm): in every z-section, a pixel is
  *interior* when its four neighbours (edge-padded at the image border) carry its truth id;
  pixels whose 2D Euclidean distance (pixels) to the nearest non-interior pixel is
  ``<= border_threshold_nm / voxel_size[y]`` are ignored. A threshold of 0 or None means no mask.
  A section holding a single truth id has no non-interior pixel; the reference (scipy's EDT of
  an all-True image) then measures distances to a virtual pixel at (-1, 0) and masks the pixels
  within the threshold of it. This is reproduced (``reference_single_label_sections=True``)
  so scores equal the challenge's; pass False to mask nothing in such sections.
- VOI split = H(pred | truth), merge = H(truth | pred), in bits, over evaluated voxels.
- Adapted Rand error (SNEMI3D): prediction id 0 counts as singletons, entering the sums as
  ``c / n`` where ``c`` = evaluated voxels with prediction 0 and ``n`` = *all* voxels
  (ignored ones included, as in the reference). Precision/recall as in the reference.
- CREMI score = sqrt((VOI split + VOI merge) * adapted Rand error).

Where the reference raises — no evaluated voxel (empty volume or everything ignored) — every
metric is NaN (nothing was scored), with ``n_voxels``/``n_ignored_voxels`` telling why.

Everything derives from the (truth, prediction) contingency table
(:mod:`~synapse_toolkit.metrics.contingency`), counted block by block for h5py/zarr volumes
(tables of blocks add up). The entropy sums are accumulated in fixed point and the Rand sums as
exact integers, so the scores do not depend on block or row order: blockwise scoring equals
in-memory scoring bit for bit. Speed: a compiled run-length/hash counter (numba) with a
partitioned aggregation; see ``benchmarks/bench_cremi_neurons.py``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from synapse_toolkit.blockwise import iter_blocks
from synapse_toolkit.cremi_ids import NO_LABEL
from synapse_toolkit.errors import DataError
from synapse_toolkit.metrics._bordermask import border_section, border_sections
from synapse_toolkit.metrics._volumes import check_labels, resolve_voxel_size, unwrap
from synapse_toolkit.metrics.contingency import (
    Contingency,
    ContingencyCounter,
    NeuronSums,
    count_arrays,
    table_neuron_sums,
)

#: Truth id ignored by the evaluation (unlabelled voxels).
IGNORE_LABEL = NO_LABEL


@dataclass(frozen=True)
class NeuronScores:
    """CREMI neuron-id scores (VOI in bits)."""

    voi_split: float
    voi_merge: float
    adapted_rand: float
    adapted_rand_precision: float
    adapted_rand_recall: float
    n_voxels: int
    n_ignored_voxels: int

    @property
    def voi_total(self) -> float:
        return self.voi_split + self.voi_merge

    @property
    def cremi_score(self) -> float:
        return math.sqrt(self.voi_total * self.adapted_rand)

    def as_dict(self) -> dict[str, float]:
        d: dict[str, Any] = asdict(self)
        d["voi_total"] = self.voi_total
        d["cremi_score"] = self.cremi_score
        return d


def scores_from_sums(sums: NeuronSums) -> NeuronScores:
    """VOI and adapted Rand from the order-independent sums (see the module docstring)."""
    nan = float("nan")
    n_eval = sums.n_total - sums.n_ignored
    if n_eval <= 0:
        return NeuronScores(nan, nan, nan, nan, nan, sums.n_total, sums.n_ignored)
    n = float(n_eval)
    c_over_n = float(sums.n_pred_zero) / float(sums.n_total)
    sum_b = float(sums.sum_pred_sq) + c_over_n
    sum_ab = float(sums.sum_pair_sq) + c_over_n
    precision = sum_ab / sum_b
    recall = sum_ab / float(sums.sum_truth_sq)
    fscore = 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return NeuronScores(
        voi_split=sums.split_bits / n,
        voi_merge=sums.merge_bits / n,
        adapted_rand=1.0 - fscore,
        adapted_rand_precision=precision,
        adapted_rand_recall=recall,
        n_voxels=sums.n_total,
        n_ignored_voxels=sums.n_ignored,
    )


def scores_from_contingency(table: Contingency, n_threads: int = 2) -> NeuronScores:
    """VOI and adapted Rand from a contingency table (see the module docstring)."""
    if table.n_evaluated <= 0 or len(table) == 0:
        return scores_from_sums(NeuronSums(0.0, 0.0, 0, 0, 0, 0, table.n_total, table.n_ignored))
    return scores_from_sums(table_neuron_sums(table, n_threads))


# -- border mask ---------------------------------------------------------------------------------


def _max_squared(max_dist: float) -> int:
    """Largest integer k with float64 sqrt(k) <= max_dist (the reference compares sqrt(k))."""
    k = int(math.floor(max_dist * max_dist)) + 2
    while k >= 0 and math.sqrt(k) > max_dist:
        k -= 1
    return k


def border_mask_2d(
    section: np.ndarray,
    max_dist_px: float,
    origin: tuple[int, int] = (0, 0),
    section_is_single_label: bool | None = None,
    reference_single_label_sections: bool = True,
) -> np.ndarray:
    """Pixels of one z-section within ``max_dist_px`` of a truth label boundary (True = ignore).

    ``section`` may be a crop of a larger section (``origin`` = its (y, x) position) with at
    least ``floor(max_dist_px) + 2`` pixels of context on sides that are not image borders.
    ``section_is_single_label`` (for crops) tells whether the *whole* section
    holds one id, for the reference's single-label behaviour (see the module docstring).
    """
    max_dist = max(float(max_dist_px), 0.0)
    img = np.ascontiguousarray(section)
    if img.dtype.kind not in "ui":
        raise DataError(f"border mask needs integer labels, got dtype {img.dtype}")
    out = np.empty(img.shape, dtype=bool)
    n_border = border_section(img, int(math.floor(max_dist)), _max_squared(max_dist), out)
    if n_border == 0:
        return _single_label_mask(img.shape, origin, max_dist, section_is_single_label,
                                  reference_single_label_sections)  # fmt: skip
    return out


def _single_label_mask(
    shape: tuple[int, ...], origin: tuple[int, int], max_dist: float,
    single: bool | None, reference_single_label_sections: bool,
) -> np.ndarray:  # fmt: skip
    """Mask of a (crop of a) section without boundary: empty, or the reference's corner when
    the whole section holds one id (scipy's EDT of an all-True image: distance to (-1, 0))."""
    if not ((single is None or single) and reference_single_label_sections):
        return np.zeros(shape, dtype=bool)
    yy = np.arange(origin[0], origin[0] + shape[0], dtype=np.float64)[:, None] + 1.0
    xx = np.arange(origin[1], origin[1] + shape[1], dtype=np.float64)[None, :]
    return np.sqrt(yy * yy + xx * xx) <= max_dist


def border_mask(
    truth: Any,
    max_dist_px: float,
    roi: tuple[slice, ...] | None = None,
    reference_single_label_sections: bool = True,
) -> np.ndarray:
    """Border ignore mask (z, y, x) of ``truth`` inside ``roi``, reading only what it needs
    (the roi plus a margin of ``floor(max_dist_px) + 2`` pixels in y and x)."""
    shape = tuple(int(s) for s in truth.shape)
    if roi is None:
        roi = (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    m = int(math.floor(max(max_dist_px, 0.0))) + 2
    ys = slice(max(0, roi[1].start - m), min(shape[1], roi[1].stop + m))
    xs = slice(max(0, roi[2].start - m), min(shape[2], roi[2].stop + m))
    block = np.asarray(truth[roi[0], ys, xs])
    whole_section = ys.stop - ys.start == shape[1] and xs.stop - xs.start == shape[2]
    inner = (slice(roi[1].start - ys.start, roi[1].stop - ys.start),
             slice(roi[2].start - xs.start, roi[2].stop - xs.start))  # fmt: skip
    out = np.zeros((block.shape[0], *(s.stop - s.start for s in inner)), dtype=bool)
    for k in range(block.shape[0]):
        sec = block[k]
        single: bool | None = None
        if not whole_section and sec.min() == sec.max():
            full = np.asarray(truth[roi[0].start + k])
            single = bool(full.min() == full.max())
        mask = border_mask_2d(
            sec, max_dist_px, origin=(ys.start, xs.start), section_is_single_label=single,
            reference_single_label_sections=reference_single_label_sections,
        )  # fmt: skip
        out[k] = mask[inner]
    return out


def _border_mask_threaded(
    truth: np.ndarray, max_dist: float, reference_single_label_sections: bool, n_threads: int
) -> np.ndarray:
    """Border mask of a whole in-memory volume, sections split over ``n_threads`` threads."""
    vol = np.ascontiguousarray(truth)
    out = np.empty(vol.shape, dtype=bool)
    r, k_max = int(math.floor(max_dist)), _max_squared(max_dist)
    nz = vol.shape[0]
    k = max(1, min(int(n_threads), nz))
    bounds = np.linspace(0, nz, k + 1).astype(np.int64)
    ranges = [(int(bounds[i]), int(bounds[i + 1])) for i in range(k)]
    if k == 1:
        counts = [border_sections(vol, 0, nz, r, k_max, out)]
    else:
        with ThreadPoolExecutor(k) as pool:
            counts = list(pool.map(lambda z: border_sections(vol, z[0], z[1], r, k_max, out),
                                   ranges))  # fmt: skip
    for z in np.flatnonzero(np.concatenate(counts) == 0) if nz else []:
        out[z] = _single_label_mask(vol.shape[1:], (0, 0), max_dist, True,
                                    reference_single_label_sections)  # fmt: skip
    return out


# -- scoring -------------------------------------------------------------------------------------


def _neuron_counter(
    truth: Any,
    pred: Any,
    *,
    border_threshold_nm: float | None = None,
    voxel_size_nm: tuple[float, float, float] | None = None,
    block_shape: tuple[int, int, int] | None = None,
    n_threads: int = 2,
    reference_single_label_sections: bool = True,
) -> ContingencyCounter:
    """The counter of the (truth, pred) contingency table with the CREMI ignore rules applied.

    ``truth``/``pred``: numpy arrays, h5py/zarr datasets or :class:`~synapse_toolkit.data.Volume`.
    In-memory arrays without ``block_shape`` are counted directly (multi-threaded); otherwise the
    volumes are read block by block (``block_shape`` default: 16 full sections).
    """
    t_arr, t_vs = unwrap(truth, "truth")
    p_arr, p_vs = unwrap(pred, "prediction")
    check_labels(t_arr, "truth")
    check_labels(p_arr, "prediction")
    if tuple(t_arr.shape) != tuple(p_arr.shape):
        raise DataError(
            f"truth shape {tuple(t_arr.shape)} != prediction shape {tuple(p_arr.shape)}"
        )
    if len(t_arr.shape) != 3:
        raise DataError(f"neuron ids must be 3D (z, y, x), got shape {tuple(t_arr.shape)}")
    vs = resolve_voxel_size(voxel_size_nm, t_vs, p_vs)
    max_dist: float | None = None
    if border_threshold_nm:
        if vs is None:
            raise DataError("a border mask in nm needs the voxel size (voxel_size_nm)")
        if vs[1] != vs[2]:
            raise DataError(f"border mask needs equal y and x voxel sizes, got {vs}")
        max_dist = float(border_threshold_nm) / vs[1]

    shape = tuple(int(s) for s in t_arr.shape)
    in_memory = isinstance(t_arr, np.ndarray) and isinstance(p_arr, np.ndarray)
    if in_memory and block_shape is None:
        mask = None
        if max_dist is not None:
            mask = _border_mask_threaded(t_arr, max_dist, reference_single_label_sections,
                                         n_threads)  # fmt: skip
        return count_arrays(
            t_arr, p_arr, mask, ignore_truth=IGNORE_LABEL, n_threads=n_threads, as_counter=True
        )

    bs = block_shape or (16, shape[1], shape[2])
    counter = ContingencyCounter(IGNORE_LABEL, n_threads)
    for block in iter_blocks(shape, bs):
        roi = block.write
        tb = np.asarray(t_arr[roi])
        pb = np.asarray(p_arr[roi])
        mask = None
        if max_dist is not None:
            mask = border_mask(t_arr, max_dist, roi, reference_single_label_sections)
        counter.update(tb, pb, mask)
    return counter


def neuron_contingency(
    truth: Any,
    pred: Any,
    *,
    border_threshold_nm: float | None = None,
    voxel_size_nm: tuple[float, float, float] | None = None,
    block_shape: tuple[int, int, int] | None = None,
    n_threads: int = 2,
    reference_single_label_sections: bool = True,
) -> Contingency:
    """The (truth, pred) contingency table with the CREMI ignore rules applied.

    ``truth``/``pred``: numpy arrays, h5py/zarr datasets or :class:`~synapse_toolkit.data.Volume`.
    In-memory arrays without ``block_shape`` are counted directly (multi-threaded); otherwise the
    volumes are read block by block (``block_shape`` default: 16 full sections).
    """
    return _neuron_counter(
        truth, pred, border_threshold_nm=border_threshold_nm, voxel_size_nm=voxel_size_nm,
        block_shape=block_shape, n_threads=n_threads,
        reference_single_label_sections=reference_single_label_sections,
    ).result()  # fmt: skip


def score_neuron_ids(
    truth: Any,
    pred: Any,
    *,
    border_threshold_nm: float | None = None,
    voxel_size_nm: tuple[float, float, float] | None = None,
    block_shape: tuple[int, int, int] | None = None,
    n_threads: int = 2,
    reference_single_label_sections: bool = True,
) -> NeuronScores:
    """CREMI neuron scores of ``pred`` against ``truth`` (see the module docstring)."""
    counter = _neuron_counter(
        truth, pred, border_threshold_nm=border_threshold_nm, voxel_size_nm=voxel_size_nm,
        block_shape=block_shape, n_threads=n_threads,
        reference_single_label_sections=reference_single_label_sections,
    )  # fmt: skip
    if counter.n_total - counter.n_ignored <= 0:
        return scores_from_sums(
            NeuronSums(0.0, 0.0, 0, 0, 0, 0, counter.n_total, counter.n_ignored)
        )
    return scores_from_sums(counter.neuron_sums(n_threads))
