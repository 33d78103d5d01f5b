"""Cleft labels and EMSynConn partners block by block equal the whole-volume algorithms."""

from __future__ import annotations

import cc3d
import fastremap
import numpy as np
import pytest
from scipy import ndimage

from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND
from synapse_toolkit.synapses.blockwise import (
    cleft_labels_blockwise,
    emsynconn_blockwise,
    touching_pairs,
)
from synapse_toolkit.synapses.candidates import CandidateSettings


def _reference_clefts(prob: np.ndarray, threshold: float, min_voxels: int) -> np.ndarray:
    """cc3d 26-connected components, dust, renumber in order of appearance (the old in-memory
    implementation)."""
    lab = cc3d.connected_components(prob > threshold, connectivity=26).astype(np.uint64)
    lab = cc3d.dust(lab, threshold=min_voxels, connectivity=26, in_place=True)
    lab, _ = fastremap.renumber(lab, start=1, preserve_zero=True)
    out = np.full(lab.shape, CLEFT_BACKGROUND, np.uint64)
    out[lab > 0] = lab[lab > 0]
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("block_shape", [(20, 70, 90), (7, 16, 23), (5, 14, 18)])
def test_cleft_labels_equal_whole_volume_components_for_any_block_shape(seed, block_shape):
    rng = np.random.default_rng(seed)
    p = ndimage.gaussian_filter(rng.random((20, 70, 90)), (1, 2, 2))
    p = ((p - p.min()) / (p.max() - p.min())).astype(np.float32)[None]
    ref = _reference_clefts(p[0], 0.6, 10)
    out = np.zeros(ref.shape, np.uint64)
    res = cleft_labels_blockwise(p, out, 0.6, 10, block_shape=block_shape)
    assert res["n_clefts"] == int(ref[ref != CLEFT_BACKGROUND].max()) > 20
    assert np.array_equal(out, ref)


def test_touching_pairs_see_diagonal_neighbours_across_block_corners():
    grown = np.zeros((3, 3, 3), np.uint64)
    grown[0, 2, 0] = 7  # the lower z block, one row further in y: a corner neighbour
    grown[1, 1, 1] = 9  # the block's own voxel (write ROI = the centre voxel)
    pairs = touching_pairs(grown, [(1, 1), (1, 1), (1, 1)])
    assert pairs.tolist() == [[9, 7]]


def _synapse_volume() -> tuple[np.ndarray, np.ndarray]:
    """Segments in x stripes; pre/post proximity blobs on both sides of several boundaries, some
    of them on block faces."""
    shape = (12, 64, 96)
    seg = np.zeros(shape, np.uint64)
    for k, x0 in enumerate(range(0, 96, 16)):
        seg[:, :, x0 : x0 + 16] = k + 1
    prox = np.zeros(shape, np.float32)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    for z, y, xb in ((5, 20, 16), (6, 31, 48), (3, 45, 32), (8, 10, 80), (6, 32, 64)):
        for sign, dx in ((1.0, -3), (-1.0, 3)):
            d2 = ((zz - z) * 10) ** 2 + (yy - y) ** 2 + (xx - (xb + dx)) ** 2
            prox += sign * np.clip(1 - np.sqrt(d2) / 8, 0, None).astype(np.float32)
    return np.clip(prox, -1, 1), seg


def _rows(table) -> list[tuple]:
    return sorted(
        (tuple(np.round(a, 3)), tuple(np.round(b, 3)), int(p), int(q))
        for a, b, p, q in zip(
            table.pre_nm, table.post_nm, table.pre_segment, table.post_segment, strict=True
        )
    )


def test_partners_by_block_equal_one_block():
    prox, seg = _synapse_volume()
    settings = CandidateSettings(threshold=0.3, min_voxels=10)
    from synapse_toolkit.synapses.assigners import EMSynConnSettings

    s = EMSynConnSettings(candidates=settings, dedup_distance_nm=100.0)
    whole, info = emsynconn_blockwise(None, prox, seg, (40, 4, 4), settings=s)
    assert info["n_blocks"] == 1 and len(whole) >= 4
    blocks, info = emsynconn_blockwise(None, prox, seg, (40, 4, 4), settings=s,
                                       block_shape=(6, 32, 32), context=(4, 24, 24))  # fmt: skip
    assert info["n_blocks"] == 2 * 2 * 3
    assert _rows(blocks) == _rows(whole)
    assert len(set(blocks.synapse_id.tolist())) == len(set(whole.synapse_id.tolist()))
