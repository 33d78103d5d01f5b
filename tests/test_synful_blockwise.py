"""Synful partners block by block equal the whole-volume extraction (any block shape, including
blocks smaller than a synapse and no context), resume skips finished blocks with identical
output, and the stored prediction equals the in-memory one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND
from synapse_toolkit.data import PartnerTable
from synapse_toolkit.errors import DataError
from synapse_toolkit.synapses.synful import SynfulSettings, extract_partners
from synapse_toolkit.synapses.synful_blockwise import head_channels, synful_blockwise
from synapse_toolkit.synapses.targets import Grid

VS = (40.0, 4.0, 4.0)
SHAPE = (10, 72, 90)


def _volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (7, z, y, x) prediction with smooth random mask blobs of many sizes (some crossing
    segment borders and block faces) and smooth vector fields, Voronoi segments, a few clefts."""
    rng = np.random.default_rng(seed)
    mask = ndimage.gaussian_filter(rng.random(SHAPE), (0.7, 4, 4))
    mask = (mask - mask.min()) / (mask.max() - mask.min())
    vec = np.stack([ndimage.gaussian_filter(rng.normal(0, 1, SHAPE), (1, 6, 6)) for _ in range(3)])
    vec = vec / np.abs(vec).max() * np.asarray([80.0, 150.0, 150.0])[:, None, None, None]
    unit = vec / np.maximum(np.linalg.norm(vec, axis=0), 1e-6)
    pred = np.concatenate([mask[None], vec, unit]).astype(np.float32)
    seeds = rng.random((12, 3)) * SHAPE
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1)
    d = (((grid[..., None, :] - seeds) * np.asarray(VS) / 4.0) ** 2).sum(-1)
    seg = (d.argmin(-1) + 1).astype(np.uint64)
    seg[:, :3] = 0  # some background
    clefts = np.full(SHAPE, CLEFT_BACKGROUND, np.uint64)
    clefts[4:6, 30:33, 10:40] = 1
    clefts[7, 60:62, 70:80] = 2
    return pred, seg, clefts


def _same(a: PartnerTable, b: PartnerTable) -> bool:
    keys = ("pre_nm", "post_nm", "pre_segment", "post_segment", "score", "synapse_id")
    return len(a) == len(b) and all(np.array_equal(getattr(a, k), getattr(b, k)) for k in keys)


_NEAR = {"dedup_distance_nm": 20.0, "group_distance_nm": 60.0}  # keep more rows in a small volume
SETTINGS = {
    "vector": SynfulSettings(threshold=0.6, min_voxels=15, vector_from="mean", **_NEAR),
    "vector-rejoin": SynfulSettings(
        threshold=0.6, min_voxels=20, vector_from="mean", rejoin_small_pieces=True, **_NEAR
    ),
    "vector-centre": SynfulSettings(
        threshold=0.65, min_voxels=5, location="centre", split_by_segment=False, **_NEAR
    ),
    "direction-clefts": SynfulSettings(head="direction", threshold=0.6, min_voxels=15, **_NEAR),
    "direction-segment": SynfulSettings(
        head="direction",
        distance="segment",
        threshold=0.6,
        min_voxels=15,
        snap_to_segment=True,
        **_NEAR,
    ),
}
#: the volume each setting is checked on (the default: 0); rejoining changes volume 1's table
VOLUME_SEED = {"vector-rejoin": 1}


@pytest.mark.parametrize("name", sorted(SETTINGS))
@pytest.mark.parametrize(
    ("block_shape", "context"),
    [((10, 72, 90), (0, 0, 0)), ((4, 24, 30), (0, 0, 0)), ((3, 16, 20), (1, 6, 6)),
     ((5, 36, 45), (2, 40, 40))],
)  # fmt: skip
def test_blocks_equal_the_whole_volume(name: str, block_shape, context) -> None:
    pred, seg, clefts = _volume(VOLUME_SEED.get(name, 0))
    s = SETTINGS[name]
    whole = extract_partners(pred, seg, Grid(SHAPE, VS, (80.0, 8.0, 4.0)), s, clefts)
    assert len(whole) >= 3
    table, info = synful_blockwise(
        pred, seg, VS, (80.0, 8.0, 4.0), settings=s, clefts=clefts, block_shape=block_shape,
        context=context, n_workers=2,
    )  # fmt: skip
    assert _same(table, whole) and info["n_sites"] >= 15
    if block_shape[1] < 30:  # blocks smaller than the blobs: some grown after the blocks
        assert info["n_partial"] > 0 and info["n_partial_sites"] > 0


def test_rejoining_changes_this_volume() -> None:
    """The rejoin setting above is exercised: its table differs from dropping small pieces."""
    pred, seg, clefts = _volume(VOLUME_SEED["vector-rejoin"])
    s = SETTINGS["vector-rejoin"]
    grid = Grid(SHAPE, VS, (80.0, 8.0, 4.0))
    plain = dataclasses.replace(s, rejoin_small_pieces=False)
    assert not _same(extract_partners(pred, seg, grid, s, clefts),
                     extract_partners(pred, seg, grid, plain, clefts))  # fmt: skip


def test_stored_channels_give_the_same_table() -> None:
    pred, seg, clefts = _volume(1)
    for name, s in SETTINGS.items():
        four = pred[head_channels(s.head)]
        a, _ = synful_blockwise(pred, seg, VS, settings=s, clefts=clefts, block_shape=(5, 36, 45))
        b, _ = synful_blockwise(four, seg, VS, settings=s, clefts=clefts, block_shape=(5, 36, 45))
        assert _same(a, b), name


def test_resume_skips_finished_blocks_with_identical_output(tmp_path: Path) -> None:
    import zarr

    pred, seg, _ = _volume(2)
    p = zarr.create_array(store=str(tmp_path / "p.zarr"), shape=pred.shape, dtype="float32",
                          chunks=(7, 5, 36, 45))  # fmt: skip
    p[...] = pred
    g = zarr.create_array(store=str(tmp_path / "s.zarr"), shape=seg.shape, dtype="uint64",
                          chunks=(5, 36, 45))  # fmt: skip
    g[...] = seg
    s = SETTINGS["vector"]
    kw = {"settings": s, "block_shape": (5, 36, 45), "context": (1, 8, 8), "n_workers": 2,
          "work_dir": tmp_path / "work"}  # fmt: skip
    first, info = synful_blockwise(p, g, VS, executor="processes", **kw)  # workers open zarr
    assert info["skipped_blocks"]["synful sites"] == 0 and info["n_partial"] > 0
    done = sorted((tmp_path / "work" / "done" / "synful").glob("*.json"))
    assert len(done) == info["n_blocks"] == 8
    for marker in done[:3]:  # as if killed before these blocks finished
        marker.unlink()
    again, info2 = synful_blockwise(p, g, VS, **kw)
    assert info2["skipped_blocks"]["synful sites"] == 5
    assert _same(first, again)
    assert _same(first, extract_partners(pred, seg, Grid(SHAPE, VS), s))
    g[0, 40:50, 40:50] = 99  # changed input: that block's fingerprint no longer matches
    _, info3 = synful_blockwise(p, g, VS, **kw)
    assert info3["skipped_blocks"]["synful sites"] < 8


def test_bad_shapes_are_one_error() -> None:
    pred, seg, _ = _volume()
    with pytest.raises(DataError, match="7 or 4"):
        synful_blockwise(pred[:5], seg, VS)
    with pytest.raises(DataError, match="segmentation"):
        synful_blockwise(pred, seg[:, :10], VS)


def test_prediction_is_stored_once_and_equals_the_in_memory_one(tmp_path: Path) -> None:
    from synapse_toolkit.synapses.synful_blockwise import predict_synful

    class Model:  # an OnnxModel stand-in: a fixed function of the raw tile, 7 channels
        path = tmp_path / "m.onnx"
        calls = 0

        def default_overlap(self) -> tuple[int, int, int]:
            return (1, 4, 4)

        def predict(self, raw, out=None, overlap=None, progress=None, channels=None,
                    block_shape=None, scratch_dir=None, intensity_scale=None):  # fmt: skip
            from synapse_toolkit.inference.tiled import predict_tiled

            scale = 1.0 if intensity_scale is None else intensity_scale

            Model.calls += 1
            keep = list(channels) if channels is not None else list(range(7))
            if out is None:
                out = np.zeros((len(keep), *raw.shape), np.float32)

            def f(x: np.ndarray) -> np.ndarray:
                y = np.concatenate([x * scale * (c + 1) for c in range(7)], axis=1)
                return y[:, keep]

            predict_tiled(f, raw, out, (4, 16, 16), (4, 16, 16), overlap=overlap,
                          block_shape=block_shape, scratch_dir=scratch_dir)  # fmt: skip
            return out

    Model.path.write_bytes(b"model")
    raw = np.random.default_rng(0).integers(0, 255, (9, 40, 50), np.uint8)
    a = predict_synful(Model(), raw, tmp_path / "w", "direction", block_shape=(4, 16, 32))
    assert a.shape == (4, *raw.shape) and Model.calls == 1
    ref = Model().predict(raw, channels=head_channels("direction"), overlap=(1, 4, 4))
    np.testing.assert_array_equal(a[...], ref)
    predict_synful(Model(), raw, tmp_path / "w", "direction", block_shape=(4, 16, 32))
    assert Model.calls == 2  # the stored prediction was reused (the other call made `ref`)
    predict_synful(Model(), raw, tmp_path / "w", "vector", block_shape=(4, 16, 32))
    assert Model.calls == 3  # another head: predicted again
    half = predict_synful(Model(), raw, tmp_path / "w", "vector", block_shape=(4, 16, 32),
                          intensity_scale=0.5)  # fmt: skip
    assert Model.calls == 4  # another input scale: predicted again, with that scale
    ref = Model().predict(raw, channels=head_channels("vector"), overlap=(1, 4, 4))
    np.testing.assert_allclose(half[...], ref * 0.5)
