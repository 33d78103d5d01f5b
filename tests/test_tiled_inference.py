"""Tiled inference: equals whole-volume prediction, streams into zarr, handles any volume size."""

from __future__ import annotations

import numpy as np
import pytest

from synapse_toolkit.inference.tiled import (
    _normalised_windows,
    predict_tiled,
    read_padded,
    tile_starts,
)


def _valid_box_filter(context: int):
    """A 'valid' model: mean over a (2c+1)^3 box, 2 channels (x and x^2)."""

    def predict(x: np.ndarray) -> np.ndarray:
        from scipy.ndimage import uniform_filter

        v = x[0, 0]
        f = uniform_filter(v, size=2 * context + 1, mode="constant")
        c = context
        inner = f[c:-c, c:-c, c:-c] if c else f
        return np.stack([inner, inner**2])[None]

    return predict


@pytest.mark.parametrize("shape", [(7, 30, 41), (20, 20, 20), (3, 9, 50)])
@pytest.mark.parametrize("overlap", [0, 3])
def test_tiled_equals_direct_prediction(shape, overlap) -> None:
    rng = np.random.default_rng(0)
    vol = rng.random(shape).astype(np.float32)
    c = 2
    out_shape = (4, 8, 8)
    in_shape = tuple(o + 2 * c for o in out_shape)
    out = np.zeros((2, *shape), np.float32)
    predict_tiled(_valid_box_filter(c), vol, out, in_shape, out_shape, overlap=overlap)
    padded = np.pad(vol, c, mode="reflect")
    direct = _valid_box_filter(c)(padded[None, None])[0]
    np.testing.assert_allclose(out, direct, atol=1e-5)


def test_windows_partition_unity() -> None:
    for size, tile, ov in [(50, 8, 3), (9, 8, 0), (100, 32, 10), (5, 8, 2)]:
        starts = tile_starts(size, tile, ov)
        total = np.zeros(size)
        for s, w in zip(starts, _normalised_windows(size, tile, starts, ov), strict=True):
            total[s : s + len(w)] += w
        np.testing.assert_allclose(total, 1.0)
        assert starts[0] == 0 and starts[-1] + tile >= size


def test_streams_from_h5_into_zarr(tmp_path) -> None:
    h5py = pytest.importorskip("h5py")
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(1)
    raw = (rng.random((10, 33, 27)) * 255).astype(np.uint8)
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["raw"] = raw
    out = zarr.create_array(
        store=str(tmp_path / "out.zarr"),
        shape=(2, *raw.shape),
        dtype="float32",
        chunks=(2, 5, 16, 16),
        fill_value=0,
    )
    with h5py.File(tmp_path / "raw.h5") as f:
        predict_tiled(_valid_box_filter(1), f["raw"], out, (6, 12, 12), (4, 10, 10), overlap=2)
    direct = _valid_box_filter(1)(
        np.pad(raw / 255.0, 1, mode="reflect")[None, None].astype(np.float32)
    )[0]
    np.testing.assert_allclose(out[...], direct, atol=1e-5)


def test_read_padded_mirrors_and_rejects_outside() -> None:
    a = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    got = read_padded(a, [(-2, 7), (0, 6), (3, 9)])
    np.testing.assert_array_equal(
        got, np.pad(a, ((2, 2), (0, 0), (0, 2)), mode="reflect")[:, :, 3:]
    )
    with pytest.raises(ValueError, match="does not intersect"):
        read_padded(a, [(10, 12), (0, 1), (0, 1)])


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="spatial shape"):
        predict_tiled(
            _valid_box_filter(0), np.zeros((4, 4, 4)), np.zeros((1, 4, 4, 5)), (4, 4, 4), (4, 4, 4)
        )
