"""The one partner representation: every assigner emits a :class:`PartnerTable`.

This module is the single place where partner tables are

- completed with segment ids (:func:`lookup_segments`, CREMI's nm → voxel rounding; points read
  in few boxes, not one by one: :func:`segment_ids_at`, :func:`read_points`),
- de-duplicated (:func:`deduplicate`: one row per (pre segment, post segment) and place;
  :func:`deduplicate_by` with another segmentation's ids),
- moved between frames (:func:`transform_partners`, e.g. back through an aligner's inverse),
- written to / read from CREMI files (:func:`write_partners_cremi`, :func:`read_partners_cremi`;
  ``PartnerTable.to_annotations`` + :func:`synapse_toolkit.io.cremi.write_cremi`),
- scored (:func:`evaluate_partners`, the CREMI synaptic-partner F-score of
  :mod:`synapse_toolkit.metrics.cremi_partners`).

EMSynConn, the geometric baseline and later heads (Synful) all go through these functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.data import Annotations, PartnerTable, ScoreRecord, SectionTransform, Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.io.cremi import CremiData, read_cremi, write_cremi
from synapse_toolkit.synapses.alignment import transform_points
from synapse_toolkit.synapses.targets import Grid


def segment_ids_at(segmentation: Volume, points_nm: np.ndarray) -> np.ndarray:
    """Segment ids under world points (CREMI rounding); 0 outside the volume."""
    data = segmentation.data
    if len(data.shape) == 3:
        return segment_ids_in(data, Grid.of(segmentation), points_nm)
    grid = Grid.of(segmentation)  # (c, z, y, x): the first channel, point by point
    idx = grid.nearest_voxel(points_nm)
    out = np.zeros(len(idx), np.uint64)
    inside = np.all((idx >= 0) & (idx < np.asarray(grid.shape)), axis=1)
    for k in np.flatnonzero(inside):
        z, y, x = (int(v) for v in idx[k])
        out[k] = np.asarray(segmentation.read((slice(z, z + 1), slice(y, y + 1), slice(x, x + 1))))[
            (0,) * len(data.shape)
        ]
    return out


def segment_ids_in(seg: Any, grid: Grid, points_nm: np.ndarray) -> np.ndarray:
    """Segment ids at world points in a (z, y, x) array on ``grid`` (numpy, zarr or h5py;
    CREMI rounding; 0 outside the volume), read with :func:`read_points`."""
    idx = grid.nearest_voxel(points_nm)
    out = np.zeros(len(idx), np.uint64)
    inside = np.all((idx >= 0) & (idx < np.asarray(grid.shape)), axis=1)
    out[inside] = read_points(seg, idx[inside])
    return out


def read_points(
    arr: Any, idx: np.ndarray, max_box_voxels: int = 1 << 22, cell: Any = None
) -> np.ndarray:
    """``arr`` (numpy, zarr or h5py; (z, y, x)) at integer voxels ``idx`` (N, 3): one read of
    the points' bounding box when it is small, else one read per cell that holds points (cells
    of shape ``cell``, default the array's chunks)."""
    if isinstance(arr, np.ndarray) or len(idx) == 0:
        return np.asarray(arr)[tuple(idx.T)]
    lo, hi = idx.min(0), idx.max(0) + 1
    if int(np.prod(hi - lo)) <= max_box_voxels:
        box = np.asarray(arr[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))])
        return box[tuple((idx - lo).T)]
    cell = cell or getattr(arr, "chunks", None) or (32, 256, 256)
    keys = idx // np.asarray(cell[-3:])
    out = np.empty(len(idx), np.dtype(arr.dtype))
    _, group = np.unique(keys, axis=0, return_inverse=True)
    for g in range(int(group.max()) + 1):
        sel = np.flatnonzero(group.reshape(-1) == g)
        out[sel] = read_points(arr, idx[sel], max_box_voxels, cell)
    return out


def lookup_segments(table: PartnerTable, segmentation: Volume) -> PartnerTable:
    """The table with ``pre_segment``/``post_segment`` read from ``segmentation``."""
    return PartnerTable(
        table.pre_nm, table.post_nm,
        segment_ids_at(segmentation, table.pre_nm), segment_ids_at(segmentation, table.post_nm),
        table.score, table.synapse_id, table.synapse_type,
    )  # fmt: skip


def deduplicate(
    table: PartnerTable,
    distance_nm: float = 400.0,
    segments: tuple[np.ndarray, np.ndarray] | None = None,
) -> PartnerTable:
    """Drop rows that repeat a higher-scoring row's (pre segment, post segment) nearby.

    Two rows are duplicates when their segment pairs are equal (and known, non-zero) and both
    their pre and post locations lie within ``distance_nm``; the higher score is kept.
    ``segments``: the (pre, post) segment ids to compare instead of the table's own, e.g. those
    of a coarser segmentation in which two rows of split segments are one synapse (the kept
    rows keep their own ids).
    """
    if len(table) == 0:
        return table
    pre_seg, post_seg = (
        segments if segments is not None else (table.pre_segment, table.post_segment)
    )
    order = np.argsort(-table.score, kind="stable")
    keep = np.zeros(len(table), bool)
    kept: list[int] = []
    for i in order:
        dup = False
        for j in kept:
            if (
                pre_seg[i] != 0
                and pre_seg[i] == pre_seg[j]
                and post_seg[i] == post_seg[j]
                and np.linalg.norm(table.pre_nm[i] - table.pre_nm[j]) <= distance_nm
                and np.linalg.norm(table.post_nm[i] - table.post_nm[j]) <= distance_nm
            ):
                dup = True
                break
        if not dup:
            keep[i] = True
            kept.append(int(i))
    return table.select(keep)


def deduplicate_by(
    table: PartnerTable, segmentation: Volume, distance_nm: float = 400.0
) -> PartnerTable:
    """:func:`deduplicate` comparing the segment ids of ``segmentation`` (e.g. a coarser one
    than the table's: rows of split segments of one neuron are one synapse there)."""
    ids = (segment_ids_at(segmentation, table.pre_nm), segment_ids_at(segmentation, table.post_nm))
    return deduplicate(table, distance_nm, segments=ids)


def transform_partners(
    table: PartnerTable, transform: SectionTransform, volume: Volume
) -> PartnerTable:
    """Move pre and post locations by the per-section shifts (sections of ``volume``)."""
    return PartnerTable(
        transform_points(table.pre_nm, transform, volume),
        transform_points(table.post_nm, transform, volume),
        table.pre_segment, table.post_segment, table.score, table.synapse_id, table.synapse_type,
    )  # fmt: skip


def partners_to_annotations(
    table: PartnerTable, offset_nm: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> Annotations:
    """CREMI annotations (ids, types, locations relative to ``offset_nm``, partners)."""
    return table.to_annotations(offset_nm)


def write_partners_cremi(
    path: str | os.PathLike[str],
    table: PartnerTable,
    *,
    offset_nm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    neuron_ids: Volume | None = None,
    clefts: Volume | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the partners as a CREMI file (annotations; optionally the segmentation and clefts)."""
    data = CremiData(
        neuron_ids=neuron_ids, clefts=clefts, annotations=partners_to_annotations(table, offset_nm)
    )
    return write_cremi(path, data, overwrite=overwrite)


def read_partners_cremi(
    path: str | os.PathLike[str], segmentation: Volume | None = None
) -> PartnerTable:
    """Partner table from a CREMI file's annotations (segment ids from ``segmentation``, else
    from the file's own neuron_ids, else 0)."""
    data = read_cremi(path)
    if data.annotations is None:
        raise DataError(f"{path}: no annotations to read partners from")
    table = PartnerTable.from_annotations(data.annotations)
    seg = segmentation if segmentation is not None else data.neuron_ids
    return lookup_segments(table, seg) if seg is not None and len(table) else table


def evaluate_partners(
    prediction: PartnerTable | Annotations,
    truth: Annotations,
    truth_neuron_ids: Volume,
    matching_threshold_nm: float = 400.0,
) -> ScoreRecord:
    """CREMI synaptic-partner F-score of ``prediction`` against ``truth``.

    Delegates to :func:`synapse_toolkit.metrics.cremi_partners.score_partners` (the exact
    reimplementation of the CREMI evaluation). Values: fscore, precision, recall, tp, fp, fn.
    """
    from synapse_toolkit.metrics.cremi_partners import score_partners

    pred = (
        prediction.to_annotations(truth.offset_nm)
        if isinstance(prediction, PartnerTable)
        else prediction
    )
    scores = score_partners(pred, truth, truth_neuron_ids, matching_threshold=matching_threshold_nm)
    return ScoreRecord("cremi-partners", scores.as_dict(), {"matches": scores.matches})
