"""Distance-transform seeded fragments (synapse_toolkit.inference.fragments) and the waterz
stage's ``fragments_from`` option, including the choice stored in a model's metadata."""

from __future__ import annotations

import numpy as np
import pytest

from synapse_toolkit.affinities import labels_to_affinities
from synapse_toolkit.data import Volume
from synapse_toolkit.inference.fragments import (
    boundary_map,
    distance_fragments_2d,
    flood_2d,
    make_fragments,
)


def _dumbbell(n: int = 3) -> np.ndarray:
    """(n, 40, 60) affinities of two discs joined by a 3-px neck with no membrane: 1 inside the
    shape and inside the background cell, 0 on the edges between them."""
    yy, xx = np.mgrid[:40, :60]
    shape = ((yy - 20) ** 2 + (xx - 15) ** 2 < 12**2) | ((yy - 20) ** 2 + (xx - 45) ** 2 < 12**2)
    shape |= (abs(yy - 20) <= 1) & (xx >= 15) & (xx <= 45)
    lab = np.where(shape, 1, 2).astype(np.uint64)
    affs = labels_to_affinities(np.repeat(lab[None], n, axis=0)).astype(np.float32)
    return affs


def test_boundary_map_is_high_on_edges_between_cells() -> None:
    affs = _dumbbell()
    b = boundary_map(affs)
    assert b.shape == affs.shape[1:] and b.dtype == np.float32
    assert b[1, 20, 15] == 0.0  # disc centre: every in-plane edge links
    assert b[1, 20, 2] == 0.0  # background cell
    assert b[1, 20, 3] > 0.2  # beside the disc's rim (x = 15 - 12 = 3)
    with pytest.raises(ValueError, match="affinities"):
        boundary_map(affs[:2])


def test_flood_2d_grows_seeds_up_to_the_ridge() -> None:
    cost = np.zeros((5, 9), np.uint8)
    cost[:, 6] = 200  # a ridge nearer the right seed
    markers = np.zeros((5, 9), np.int64)
    markers[2, 0], markers[2, 8] = 1, 2
    lab = flood_2d(cost, markers)
    assert (lab[:, :6] == 1).all() and (lab[:, 7:] == 2).all()
    assert set(np.unique(lab[:, 6])) <= {1, 2}  # the ridge goes to a side, nothing unlabelled
    assert markers[2, 0] == 1 and (markers[:, 1:8] == 0).all()  # markers left unchanged
    with pytest.raises(ValueError, match="same 2D shape"):
        flood_2d(cost, markers[:, :3])


def test_distance_seeds_split_a_neck_that_waterz_keeps_whole() -> None:
    affs = _dumbbell()
    frags = distance_fragments_2d(affs, boundary_threshold=0.5, dt_sigma=1.0, min_distance=3)
    assert frags.dtype == np.uint64 and (frags > 0).all()
    ids = [set(np.unique(frags[z]).tolist()) for z in range(frags.shape[0])]
    assert not ids[0] & ids[1] and not ids[1] & ids[2]  # each fragment within one section
    left, right = frags[1, 20, 15], frags[1, 20, 45]
    assert left != right  # one seed per disc: the neck does not join them
    assert make_fragments(affs, {"method": "affinities"}) is None
    assert make_fragments(affs, None) is None and make_fragments(affs, {}) is None
    with pytest.raises(ValueError, match="unknown fragment method"):
        make_fragments(affs, {"method": "voronoi"})
    with pytest.raises(ValueError, match="boundary_threshold"):
        distance_fragments_2d(affs, boundary_threshold=0.0)


def _waterz(tmp_path, affs: np.ndarray, attrs: dict | None = None, **options):
    import zarr
    from syntk_neurons.stages import WaterzAgglomerator

    from synapse_toolkit.stages import StageContext

    arr = zarr.create_array(store=str(tmp_path / "affs.zarr"), shape=affs.shape, dtype="f4")
    arr[...] = affs
    if attrs is not None:
        arr.attrs["agglomeration"] = attrs
    ctx = StageContext("agglo", tmp_path / "scratch")
    stage = WaterzAgglomerator(WaterzAgglomerator.Options(**options), ctx)
    out = stage.run({"affinities": Volume(arr, (50, 4, 4))})
    return out["segmentation"].read(), ctx


def test_waterz_takes_the_fragments_stored_by_the_model(tmp_path) -> None:
    affs = _dumbbell()
    setting = {"method": "distance_2d", "boundary_threshold": 0.5, "dt_sigma": 1.0,
               "min_distance": 3}  # fmt: skip
    meta = {"scoring": "quantile50", "threshold": 0.0, "fragments": setting}  # fragments only
    seg, ctx = _waterz(tmp_path / "a", affs, meta)
    assert ctx.notes["fragments"] == setting
    assert seg[1, 20, 15] != seg[1, 20, 45]  # a seed in each disc
    assert not set(np.unique(seg[0]).tolist()) & set(np.unique(seg[1]).tolist())
    # waterz's own watershed: the whole dumbbell is one basin
    seg, ctx = _waterz(tmp_path / "b", affs, meta, fragments_from="affinities")
    assert ctx.notes["fragments"] == {"method": "affinities"}
    assert seg[1, 20, 15] == seg[1, 20, 45]
    # the option without metadata
    seg, ctx = _waterz(
        tmp_path / "c", affs, None, fragments_from="distance_2d", thresholds=[0.0], threshold=0.0
    )
    assert ctx.notes["fragments"]["method"] == "distance_2d"
    assert seg[1, 20, 15] != seg[1, 20, 45]


@pytest.mark.parametrize("scoring", ["quantile50", "mean"])
def test_blockwise_waterz_makes_the_same_section_fragments(tmp_path, scoring) -> None:
    import zarr
    from syntk_neurons.blockwise_stage import BlockwiseWaterzAgglomerator
    from syntk_neurons.stages import WaterzAgglomerator

    from synapse_toolkit.stages import StageContext

    rng = np.random.default_rng(0)
    affs = np.clip(_dumbbell(4) * 0.8 + 0.1 + rng.normal(0, 0.1, (3, 4, 40, 60)), 0, 1)
    # chunks of 2 sections x 8 rows: the blockwise stage reads slabs of sections band by band
    arr = zarr.create_array(store=str(tmp_path / "affs.zarr"), shape=affs.shape, dtype="f4",
                            chunks=(3, 2, 8, 60))  # fmt: skip
    arr[...] = affs
    setting = {"method": "distance_2d", "boundary_threshold": 0.5, "dt_sigma": 1.0,
               "min_distance": 3}  # fmt: skip
    arr.attrs["agglomeration"] = {"scoring": scoring, "threshold": 0.3, "fragments": setting}
    res = {}
    for cls, extra in (
        (WaterzAgglomerator, {}),
        (BlockwiseWaterzAgglomerator, {"block_shape": (2, 24, 20), "executor": "threads"}),
    ):
        ctx = StageContext(cls.name, tmp_path / cls.name, run_dir=tmp_path)
        ctx.scratch_dir.mkdir()
        opts = cls.Options(thresholds=[0.1, 0.5], **extra)
        res[cls.name] = (cls(opts, ctx).run({"affinities": Volume(arr, (50, 4, 4))}), ctx)
    (a, ctx_a), (b, ctx_b) = res["waterz"], res["blockwise-waterz"]
    assert ctx_a.notes["fragments"] == ctx_b.notes["fragments"] == setting
    assert ctx_b.notes["agglomeration"]["threshold"] == 0.3
    sa, sb = a["segmentations"].read(), b["segmentations"].read()
    assert sa.shape == sb.shape == (3, 4, 40, 60)
    for t in range(3):  # the same partition (ids may differ)
        pairs = np.unique(np.stack([sa[t].ravel(), sb[t].ravel()]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.mark.parametrize("band_rows", [1, 2, 3, 7, 8, 40, 64])
def test_boundary_map_read_in_bands_is_the_whole_map(tmp_path, band_rows) -> None:
    import zarr

    from synapse_toolkit.inference.fragments import boundary_map, boundary_map_banded

    affs = np.random.default_rng(1).random((3, 5, 40, 33), dtype=np.float32)
    arr = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=affs.shape, dtype="f4",
                            chunks=(3, 2, 8, 33))  # fmt: skip
    arr[...] = affs
    for z0, z1 in ((0, 5), (1, 3), (4, 5)):
        want = boundary_map(affs[:, z0:z1])
        assert np.array_equal(boundary_map_banded(arr, z0, z1, band_rows), want)
        assert np.array_equal(boundary_map_banded(affs, z0, z1, band_rows), want)
