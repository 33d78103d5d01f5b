"""Synapse training targets on the CREMI reference files (points, offsets, resolution)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND
from synapse_toolkit.data import Annotations, Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.io.cremi import CremiData, read_cremi, write_cremi
from synapse_toolkit.synapses.targets import (
    Grid,
    TargetSettings,
    cleft_mask,
    partner_vectors,
    point_mask,
    signed_proximity,
    targets_from_cremi,
)

DATA = Path(__file__).parent / "data" / "synapses"
P07 = DATA / "P07_polyadic_duplicates_misses.truth.hdf"
C05 = DATA / "C05_z_shift.truth.hdf"


def _voxels(ann: Annotations, grid: Grid, kind: str) -> np.ndarray:
    types = np.asarray(ann.types)
    want = Annotations.PRE if kind == "pre" else Annotations.POST
    return grid.nearest_voxel(ann.world_locations()[types == want])


def test_point_masks_land_on_the_annotated_voxels() -> None:
    data = read_cremi(P07)
    grid = Grid.of(data.neuron_ids)
    seg = data.neuron_ids.read()
    for kind in ("pre", "post"):
        mask = point_mask(data.annotations, grid, 50.0, kind, seg)
        vox = _voxels(data.annotations, grid, kind)
        assert mask[tuple(vox.T)].all()
        # restricted to the segment under each site
        labels_under = set(seg[tuple(vox.T)].tolist())
        assert set(np.unique(seg[mask]).tolist()) <= labels_under
    # radius in nm: 50 nm is 12 px in-plane but only 1 section in z (40 nm)
    one = Annotations(np.array([0]), ("presynaptic_site",), np.array([[400.0, 400.0, 400.0]]))
    m = point_mask(one, grid, 50.0, "pre")
    zs, ys, _ = np.nonzero(m)
    assert set(zs.tolist()) == {9, 10, 11}
    assert ys.max() - ys.min() == 24


def test_proximity_sign_and_decay() -> None:
    data = read_cremi(P07)
    grid = Grid.of(data.neuron_ids)
    seg = data.neuron_ids.read()
    prox = signed_proximity(data.annotations, grid, 120.0, seg)
    assert prox.dtype == np.float32 and prox.min() >= -1 and prox.max() <= 1
    pre = _voxels(data.annotations, grid, "pre")
    post = _voxels(data.annotations, grid, "post")
    assert (prox[tuple(pre.T)] > 0.8).all()
    assert (prox[tuple(post.T)] < -0.8).all()
    # zero far from every site
    far = np.ones(grid.shape, bool)
    far[point_mask(data.annotations, grid, 121.0)] = False
    assert np.all(prox[far] == 0)
    # decays with distance: mean magnitude drops away from a site
    z, y, x = pre[0]
    assert (
        abs(prox[z, y, x]) > abs(prox[z, y, min(x + 15, grid.shape[2] - 1)])
        or prox[z, y, min(x + 15, grid.shape[2] - 1)] == 0
    )


def test_vectors_point_to_the_pre_partner() -> None:
    data = read_cremi(P07)
    ann = data.annotations
    grid = Grid.of(data.neuron_ids)
    vec, mask = partner_vectors(ann, grid, 100.0, data.neuron_ids.read())
    world = ann.world_locations()
    index = {int(i): k for k, i in enumerate(ann.ids)}
    for pre_id, post_id in ann.partners[:8]:  # the non-polyadic pairs are separated
        v = grid.nearest_voxel(world[index[int(post_id)]])[0]
        assert mask[tuple(v)]
        pos = grid.to_world(v)[0]
        expected = world[index[int(pre_id)]] - pos
        np.testing.assert_allclose(vec[(slice(None), *v)], expected, atol=1e-3)
    assert np.all(vec[:, ~mask] == 0)


def test_offsets_and_resolution_are_respected(tmp_path: Path) -> None:
    data = read_cremi(P07)
    seg = data.neuron_ids.read()
    # same content placed at a volume offset, annotations at another offset
    vol_off = (80.0, 40.0, 20.0)
    ann_off = (40.0, 400.0, 4.0)
    ann = data.annotations
    moved = Annotations(
        ann.ids, ann.types,
        ann.world_locations() + np.asarray(vol_off) - np.asarray(ann_off),
        ann.partners, ann_off,
    )  # fmt: skip
    path = write_cremi(
        tmp_path / "shifted.hdf",
        CremiData(raw=Volume(np.zeros(seg.shape, np.uint8), (40, 4, 4), vol_off),
                  neuron_ids=Volume(seg, (40, 4, 4), vol_off), annotations=moved),
    )  # fmt: skip
    shifted = targets_from_cremi(read_cremi(path), TargetSettings())
    plain = targets_from_cremi(
        CremiData(raw=Volume(np.zeros(seg.shape, np.uint8), (40, 4, 4)),
                  neuron_ids=data.neuron_ids, annotations=ann)
    )  # fmt: skip
    for key in ("pre_mask", "post_mask", "proximity", "vectors", "vectors_mask"):
        np.testing.assert_allclose(shifted[key], plain[key], atol=1e-3, err_msg=key)
    assert plain["pre_mask"].any() and plain["post_mask"].any()


def test_cleft_mask_from_reference_file() -> None:
    data = read_cremi(C05)
    cl = data.clefts.read()
    m = cleft_mask(cl)
    assert m.sum() == np.count_nonzero(cl != CLEFT_BACKGROUND) > 0
    zero_is_cleft = np.full((2, 2, 2), CLEFT_BACKGROUND)
    zero_is_cleft[0, 0, 0] = 0
    assert cleft_mask(zero_is_cleft).sum() == 1


def test_bad_inputs_raise_clear_errors() -> None:
    grid = Grid((2, 4, 4), (40, 4, 4))
    with pytest.raises(DataError, match="radius"):
        point_mask(Annotations.empty(), grid, 0.0)
    with pytest.raises(DataError, match="segmentation shape"):
        signed_proximity(Annotations.empty(), grid, 50.0, np.zeros((1, 1, 1), np.uint64))
    with pytest.raises(DataError, match="no annotations"):
        targets_from_cremi(CremiData(raw=Volume(np.zeros((2, 4, 4)), (40, 4, 4))))


def test_only_the_named_targets_are_made_and_they_equal_the_full_set() -> None:
    from tests.conftest import make_cremi_data

    data = make_cremi_data()
    full = targets_from_cremi(data)
    assert full["proximity"].any() and full["cleft_mask"].any()
    some = targets_from_cremi(data, only=("proximity", "cleft_valid"))
    assert set(some) == {"proximity", "cleft_valid"}
    for key, value in some.items():
        np.testing.assert_array_equal(value, full[key], err_msg=key)
    # cleft targets need no annotations
    no_points = CremiData(raw=data.raw, clefts=data.clefts)
    np.testing.assert_array_equal(
        targets_from_cremi(no_points, only=("cleft_mask",))["cleft_mask"], full["cleft_mask"]
    )
    with pytest.raises(ValueError, match="unknown targets"):
        targets_from_cremi(data, only=("cleft",))
