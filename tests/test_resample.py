"""Block-by-block linear resampling: exact on linear ramps, independent of the block size, and
streamed between zarr arrays with channels."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from synapse_toolkit.inference.resample import (
    model_grid_voxel_size,
    resample_into,
    resampled_shape,
)


def _ramp(shape, coef=(3.0, -2.0, 0.5), offset=7.0) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    return coef[0] * z + coef[1] * y + coef[2] * x + offset


def test_which_grid_a_model_runs_on() -> None:
    model = (10.0, 10.0, 10.0)
    assert model_grid_voxel_size((10.3, 9.8, 10), model) is None  # within 5%
    assert model_grid_voxel_size((8, 8, 8), model) == model  # default "always"
    assert model_grid_voxel_size((12.5, 12.5, 12.5), model) == model
    assert model_grid_voxel_size((12.5, 12.5, 12.5), model, "finer") is None  # coarser: kept
    assert model_grid_voxel_size((40, 8, 8), model, "finer") == (40, 10, 10)  # finer axes only
    assert model_grid_voxel_size((8, 8, 8), model, "never") is None
    assert model_grid_voxel_size((8, 8, 8), None) is None  # unknown model voxel size


def test_shape_from_voxel_sizes() -> None:
    assert resampled_shape((50, 100, 200), (8, 8, 8), (10, 10, 10)) == (40, 80, 160)
    assert resampled_shape((3, 10, 10), (40, 4, 4), (40, 8, 8)) == (3, 5, 5)


@pytest.mark.parametrize("out_shape", [(12, 30, 25), (5, 13, 40)])
def test_linear_ramps_are_reproduced_exactly(out_shape) -> None:
    """Linear interpolation is exact on a linear function; away from the clamped borders the
    output is the ramp at the centre-aligned source coordinates."""
    src_shape = (8, 20, 32)
    out = np.zeros(out_shape, np.float32)
    resample_into(_ramp(src_shape).astype(np.float32), out, block=(4, 7, 9))
    coords = [
        (np.arange(n) + 0.5) * (m / n) - 0.5 for m, n in zip(src_shape, out_shape, strict=True)
    ]
    inside = [(c >= 0) & (c <= m - 1) for c, m in zip(coords, src_shape, strict=True)]
    z, y, x = np.meshgrid(*coords, indexing="ij")
    expected = 3.0 * z - 2.0 * y + 0.5 * x + 7.0
    mask = np.ix_(*inside)
    np.testing.assert_allclose(out[mask], expected[mask], atol=1e-3)


def test_block_size_does_not_matter_and_channels_stream(tmp_path) -> None:
    rng = np.random.default_rng(0)
    src = zarr.create_array(store=str(tmp_path / "s.zarr"), shape=(3, 9, 21, 17),
                            dtype="float32", chunks=(3, 4, 8, 8))  # fmt: skip
    src[...] = rng.random((3, 9, 21, 17), dtype=np.float32)
    whole = np.zeros((3, 11, 26, 14), np.float32)
    resample_into(src, whole, block=(64, 256, 256))
    streamed = zarr.create_array(store=str(tmp_path / "o.zarr"), shape=whole.shape,
                                 dtype="float32", chunks=(3, 4, 8, 8))  # fmt: skip
    calls = []
    resample_into(src, streamed, block=(4, 8, 8), progress=calls.append)
    np.testing.assert_allclose(streamed[...], whole, atol=1e-6)
    assert len(calls) == 3 * 4 * 2
    assert whole.min() >= 0 and whole.max() <= 1  # interpolation stays within the data range


def test_same_shape_is_the_identity() -> None:
    x = np.random.default_rng(1).random((4, 6, 5)).astype(np.float32)
    out = np.zeros_like(x)
    resample_into(x, out, block=(2, 2, 2))
    np.testing.assert_allclose(out, x, atol=1e-6)
