"""EMSynConn candidates, the geometric baseline and cleft post-processing on synthetic volumes."""

from __future__ import annotations

import numpy as np
import pytest

from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND
from synapse_toolkit.data import Annotations
from synapse_toolkit.errors import DataError
from synapse_toolkit.synapses.assigners import assign_emsynconn, assign_geometric, cleft_labels
from synapse_toolkit.synapses.candidates import CandidateSettings, find_candidates
from synapse_toolkit.synapses.pruning import candidate_patches, label_candidates
from synapse_toolkit.synapses.targets import Grid, signed_proximity

GRID = Grid((10, 160, 160), (40.0, 4.0, 4.0), (400.0, 80.0, -40.0))
PRE, POST = Annotations.PRE, Annotations.POST


def _segments() -> np.ndarray:
    """Slabs along x: 1 (x<60), 2 (60<=x<110), 3 / 4 (x>=110, split at y=100)."""
    seg = np.ones(GRID.shape, np.uint64)
    seg[:, :, 60:] = 2
    seg[:, :, 110:] = 3
    seg[:, 100:, 110:] = 4
    return seg


def _world(z: float, y: float, x: float) -> list[float]:
    return list(GRID.to_world(np.array([z, y, x]))[0])


def _scene() -> tuple[np.ndarray, Annotations]:
    # synapse A: 1 -> 2 at y=30; polyadic B: 2 -> 3 and 2 -> 4 around y=100 at the x=110 border
    # a lone pre site (no partner region) in segment 1 far away: no candidate
    locs = [
        _world(5, 30, 52), _world(5, 30, 68),
        _world(5, 100, 102), _world(5, 88, 118), _world(5, 112, 118),
        _world(5, 140, 20),
    ]  # fmt: skip
    ann = Annotations(
        np.arange(6), (PRE, POST, PRE, POST, POST, PRE), np.asarray(locs),
        np.array([[0, 1], [2, 3], [2, 4]]),
    )  # fmt: skip
    return _segments(), ann


def test_candidates_pair_touching_segments_with_polarity_and_polyadic() -> None:
    seg, ann = _scene()
    prox = signed_proximity(ann, GRID, 100.0, seg)
    cands = find_candidates(prox, seg, GRID, CandidateSettings(min_voxels=50))
    table = cands.to_table()
    pairs = {(int(a), int(b)) for a, b in zip(table.pre_segment, table.post_segment, strict=True)}
    assert pairs == {(1, 2), (2, 3), (2, 4)}
    # polyadic: both rows of segment 2 share one synapse id (one pre component)
    rows = np.flatnonzero(table.pre_segment == 2)
    assert len(set(table.synapse_id[rows].tolist())) == 1
    # sites lie inside their segments
    for pts, segs in ((table.pre_nm, table.pre_segment), (table.post_nm, table.post_segment)):
        vox = GRID.nearest_voxel(pts)
        np.testing.assert_array_equal(seg[tuple(vox.T)], segs)
    # every candidate matches the truth the CREMI way
    assert label_candidates(cands, ann, seg, GRID).all()


def test_small_components_and_distant_segments_are_not_paired() -> None:
    seg, ann = _scene()
    prox = signed_proximity(ann, GRID, 100.0, seg)
    assert len(find_candidates(prox, seg, GRID, CandidateSettings(min_voxels=10**6))) == 0
    # a strong negative blob in segment 3, far (>> max gap) from every pre component
    far = prox.copy()
    far[:, :, :] = 0
    far[4:7, 20:40, 10:30] = 0.9  # pre in segment 1
    far[4:7, 20:40, 140:160] = -0.9  # post in segment 3, which does not touch segment 1
    assert len(find_candidates(far, seg, GRID, CandidateSettings(min_voxels=10))) == 0


def test_hysteresis_grows_seeded_components_and_adds_none() -> None:
    """grow_threshold: a faint rim joins a component that holds a seed above the threshold (so a
    component too small at the threshold passes min_voxels); a faint blob without a seed stays
    out; without grow_threshold nothing changes."""
    seg = _segments()
    prox = np.zeros(GRID.shape, np.float32)
    prox[4:6, 20:40, 50:60] = 0.2  # faint pre rim in segment 1 ...
    prox[4:6, 28:32, 56:60] = 0.6  # ... around a small seed (32 voxels)
    prox[4:6, 20:40, 60:70] = -0.2  # faint post rim in segment 2 ...
    prox[4:6, 28:32, 60:64] = -0.6  # ... around a small seed
    prox[4:6, 120:140, 50:60] = 0.2  # faint, unseeded pre blob in segment 1
    prox[4:6, 120:140, 60:70] = -0.2  # and its post, unseeded
    plain = find_candidates(prox, seg, GRID, CandidateSettings(min_voxels=50))
    assert len(plain) == 0  # the seeds alone are too small
    grown = find_candidates(prox, seg, GRID, CandidateSettings(min_voxels=50, grow_threshold=0.1))
    assert len(grown) == 1
    table = grown.to_table()
    assert (int(table.pre_segment[0]), int(table.post_segment[0])) == (1, 2)
    assert GRID.nearest_voxel(table.pre_nm)[0][1] < 60  # the seeded pair, not the faint one
    assert [c.size for c in grown.pre.values()] == [400]
    with pytest.raises(DataError, match="grow_threshold"):
        find_candidates(prox, seg, GRID, CandidateSettings(grow_threshold=0.5))


def test_emsynconn_without_pruning_and_patches() -> None:
    seg, ann = _scene()
    prox = signed_proximity(ann, GRID, 100.0, seg)
    raw = np.full(GRID.shape, 128, np.uint8)
    from synapse_toolkit.synapses.assigners import EMSynConnSettings

    settings = EMSynConnSettings(candidates=CandidateSettings(min_voxels=50))
    table = assign_emsynconn(raw, prox, seg, GRID, None, settings)
    assert len(table) == 3
    cands = find_candidates(prox, seg, GRID, settings.candidates)
    patches = candidate_patches(cands, raw, prox, seg)
    assert patches.shape == (3, 4, 8, 48, 48)
    assert patches[:, 2].max() == 1 and patches[:, 3].max() == 1  # segment masks present
    assert np.isclose(patches[:, 0].max(), 128 / 255)


def test_geometric_baseline_uses_clefts_and_polarity() -> None:
    seg, ann = _scene()
    prox = signed_proximity(ann, GRID, 100.0, seg)
    clefts = np.full(GRID.shape, CLEFT_BACKGROUND, np.uint64)
    clefts[4:7, 20:40, 59:61] = 0  # id 0 is a valid CREMI cleft id
    clefts[4:7, 90:110, 109:111] = 7
    table = assign_geometric(clefts, prox, seg, GRID)
    pairs = {(int(a), int(b)) for a, b in zip(table.pre_segment, table.post_segment, strict=True)}
    assert pairs == {(1, 2), (2, 3), (2, 4)}
    # a cleft without polarity around it yields nothing
    assert len(assign_geometric(clefts, np.zeros_like(prox), seg, GRID)) == 0


def test_cleft_labels_threshold_components_and_size_filter() -> None:
    prob = np.zeros((6, 40, 40), np.float32)
    prob[1:4, 5:15, 5:15] = 0.9  # 300 voxels
    prob[1:3, 30:33, 30:33] = 0.9  # 18 voxels: dropped
    prob[4, 20, 20:40] = 0.5  # exactly the threshold: not a cleft (strict >)
    lab = cleft_labels(prob, Grid(prob.shape, (40, 4, 4)), threshold=0.5, min_voxels=50)
    assert lab.dtype == np.uint64
    ids = np.unique(lab)
    assert set(ids.tolist()) == {1, int(CLEFT_BACKGROUND)}
    assert (lab == 1).sum() == 300


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(DataError, match="must match"):
        find_candidates(np.zeros((2, 3, 3)), np.zeros((2, 3, 4), np.uint64), GRID)
