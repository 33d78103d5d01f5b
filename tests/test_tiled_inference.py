"""Tiled inference: equals whole-volume prediction, streams into zarr, handles any volume size."""

from __future__ import annotations

import numpy as np
import pytest

from synapse_toolkit.inference.tiled import (
    TileGrid,
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


def _tiny_onnx(path, in_shape=(6, 10, 10)) -> np.ndarray:
    """A valid 3x3x3 conv (3 output channels) + sigmoid, written with onnx.helper (no torch)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(5).normal(0, 0.3, (3, 1, 3, 3, 3)).astype(np.float32)
    out_shape = tuple(s - 2 for s in in_shape)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["raw", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, 1, *in_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, *out_shape])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    entry = model.metadata_props.add()
    entry.key, entry.value = "out_channels", "3"
    onnx.save(model, str(path))
    return w


def test_affinity_detector_stage_streams_and_checks_sha(tmp_path) -> None:
    from scipy.ndimage import correlate
    from syntk_neurons.stages import AffinityDetector

    from synapse_toolkit.data import Volume
    from synapse_toolkit.errors import DataError
    from synapse_toolkit.nn.export import sha256_of
    from synapse_toolkit.stages import StageContext

    model = tmp_path / "tiny.onnx"
    w = _tiny_onnx(model)
    model.with_suffix(".sha256").write_text(f"{sha256_of(model)}  tiny.onnx\n")
    raw = (np.random.default_rng(2).random((9, 23, 17)) * 255).astype(np.uint8)
    ctx = StageContext("detect", tmp_path, block_shape=(4, 8, 8))
    stage = AffinityDetector(AffinityDetector.Options(model_path=model, overlap=(1, 2, 2)), ctx)
    out = stage.run({"raw": Volume(raw, (10, 4, 4), (5, 0, 0))})["affinities"]
    assert out.shape == (3, *raw.shape) and out.offset_nm == (5, 0, 0)
    padded = np.pad(raw / 255.0, 1, mode="reflect")
    ref = np.stack(
        [correlate(padded, w[c, 0], mode="constant")[1:-1, 1:-1, 1:-1] for c in range(3)]
    )
    np.testing.assert_allclose(out.read(), 1 / (1 + np.exp(-ref)), atol=1e-5)
    # `model = "X.onnx"` (what `syntk adapt` prints) runs the file, as `model_path` does
    as_name = AffinityDetector.Options(model=str(model), overlap=(1, 2, 2))
    assert as_name.model_path == model
    ctx2 = StageContext("detect2", tmp_path / "by-name", block_shape=(4, 8, 8))
    by_name = AffinityDetector(as_name, ctx2).run({"raw": Volume(raw, (10, 4, 4), (5, 0, 0))})
    np.testing.assert_array_equal(by_name["affinities"].read(), out.read())
    with pytest.raises(ValueError, match="not both"):
        AffinityDetector.Options(model=str(model), model_path=model)
    model.with_suffix(".sha256").write_text("0" * 64 + "  tiny.onnx\n")
    with pytest.raises(DataError, match="does not match its sha256"):
        AffinityDetector(AffinityDetector.Options(model_path=model), ctx).run(
            {"raw": Volume(raw, (1, 1, 1))}
        )


def test_flip_tta_is_exact_for_an_equivariant_affinity_model() -> None:
    """A model computing true affinities of a thresholded input is mirror-equivariant, so TTA
    (with the channel shift for mirrored axes) must return exactly the plain prediction."""
    from synapse_toolkit.affinities import NEAREST_NEIGHBOURS, labels_to_affinities
    from synapse_toolkit.inference.tiled import flip_tta

    def model(x: np.ndarray) -> np.ndarray:
        lab = (x[0, 0] > 0.5).astype(np.int64) + 1
        return labels_to_affinities(lab, background_is_boundary=False)[None]

    x = (np.random.default_rng(0).random((1, 1, 5, 6, 7)) > 0.5).astype(np.float32)
    plain = model(x)
    np.testing.assert_allclose(flip_tta(model, NEAREST_NEIGHBOURS)(x), plain, atol=1e-6)
    # without the shift the mirrored variants disagree
    assert not np.allclose(flip_tta(model, None)(x), plain)


def test_flip_tta_negates_vector_components_along_mirrored_axes() -> None:
    """A model returning its input and the input's gradient (a vector field) is
    mirror-equivariant once the gradient's component along each mirrored axis is negated, so
    TTA with that channel triplet returns exactly the plain prediction."""
    from synapse_toolkit.inference.tiled import flip_tta

    def model(x: np.ndarray) -> np.ndarray:
        v = x[0, 0].astype(np.float64)
        return np.stack([v, *np.gradient(v)])[None].astype(np.float32)

    x = np.random.default_rng(1).random((1, 1, 5, 6, 7)).astype(np.float32)
    plain = model(x)
    np.testing.assert_allclose(flip_tta(model, vectors=[(1, 2, 3)])(x), plain, atol=1e-5)
    # without negating, a mirrored variant's vectors point the other way
    assert not np.allclose(flip_tta(model)(x)[:, 1:], plain[:, 1:], atol=1e-3)


def test_dense_model_tta_matches_the_affinity_stage_with_tta(tmp_path) -> None:
    """The library's TTA path (used for predicted segmentations in pruner training and the
    benchmarks) gives the same affinities as the `affinity-unet` stage with ``tta = true``, and
    TTA really changes the prediction of a model that is not mirror-equivariant."""
    import onnx
    from syntk_neurons.stages import AffinityDetector

    from synapse_toolkit.affinities import NEAREST_NEIGHBOURS
    from synapse_toolkit.data import Volume
    from synapse_toolkit.inference.onnx_model import OnnxModel
    from synapse_toolkit.nn.export import sha256_of
    from synapse_toolkit.stages import StageContext

    model = tmp_path / "tiny.onnx"
    _tiny_onnx(model)
    proto = onnx.load(str(model))
    for key, value in (("input_shape", "[6, 10, 10]"), ("output_shape", "[4, 8, 8]")):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(model))
    model.with_suffix(".sha256").write_text(f"{sha256_of(model)}  tiny.onnx\n")
    raw = (np.random.default_rng(3).random((9, 23, 17)) * 255).astype(np.uint8)
    ctx = StageContext("detect", tmp_path, block_shape=(4, 8, 8))
    opts = AffinityDetector.Options(model_path=model, overlap=(1, 2, 2), tta=True)
    staged = AffinityDetector(opts, ctx).run({"raw": Volume(raw, (10, 4, 4))})["affinities"]
    dense = OnnxModel(model)
    tta = dense.predict(raw, overlap=(1, 2, 2), tta_offsets=NEAREST_NEIGHBOURS)
    np.testing.assert_allclose(tta, staged.read(), atol=1e-5)
    plain = dense.predict(raw, overlap=(1, 2, 2))
    assert np.abs(plain - tta).max() > 1e-3


def test_affinity_stage_resamples_to_the_models_voxel_size(tmp_path) -> None:
    """Raw at 10x4x4 nm under a model trained at 20x8x8 nm: the stage predicts on raw resampled
    to 20x8x8 and resamples the affinities back to raw's grid."""
    from scipy.ndimage import correlate
    from syntk_neurons.stages import AffinityDetector

    from synapse_toolkit.data import Volume
    from synapse_toolkit.inference.resample import resample_into
    from synapse_toolkit.nn.export import sha256_of
    from synapse_toolkit.stages import StageContext

    model = tmp_path / "tiny.onnx"
    w = _tiny_onnx(model)
    model.with_suffix(".sha256").write_text(f"{sha256_of(model)}  tiny.onnx\n")
    raw = (np.random.default_rng(6).random((12, 30, 22)) * 255).astype(np.uint8)

    def run(name: str, **options) -> np.ndarray:
        opts = AffinityDetector.Options(model_path=model, overlap=(1, 2, 2), **options)
        ctx = StageContext(name, tmp_path / name, block_shape=(4, 8, 8))
        out = AffinityDetector(opts, ctx).run({"raw": Volume(raw, (10, 4, 4))})["affinities"]
        assert out.shape == (3, *raw.shape) and out.voxel_size_nm == (10, 4, 4)
        return out.read()

    coarse = np.zeros((6, 15, 11), np.float32)
    resample_into(raw, coarse)
    padded = np.pad(coarse / 255.0, 1, mode="reflect")
    conv = np.stack(
        [correlate(padded, w[c, 0], mode="constant")[1:-1, 1:-1, 1:-1] for c in range(3)]
    )
    expected = np.zeros((3, *raw.shape), np.float32)
    resample_into((1 / (1 + np.exp(-conv))).astype(np.float32), expected)
    resampled = run("resampled", model_voxel_size_nm=(20, 8, 8))
    np.testing.assert_allclose(resampled, expected, atol=1e-5)
    same_size = run("same", model_voxel_size_nm=(10.3, 4, 4))  # within 5%: no resampling
    np.testing.assert_allclose(
        run("off", model_voxel_size_nm=(20, 8, 8), resample="never"), same_size
    )
    assert np.abs(resampled - same_size).mean() > 0.01
    # a finer model: "finer" does not interpolate raw up, "always" (the default) does
    np.testing.assert_allclose(
        run("coarse", model_voxel_size_nm=(5, 2, 2), resample="finer"), same_size
    )
    up = run("up", model_voxel_size_nm=(5, 2, 2))
    assert np.abs(up - same_size).mean() > 0.01


def _mixing_filter(x: np.ndarray) -> np.ndarray:
    """A 'valid' model (context 1, 2 in y, x) with two non-linear channels."""
    v = x[0, 0][1:-1, 2:-2, 2:-2]
    return np.stack([v * 1.3 + 0.1, np.sin(v * 7.0)])[None]


@pytest.mark.parametrize(
    ("shape", "chunks", "budget"),
    [((7, 30, 41), (3, 10, 14), 0), ((7, 30, 41), (7, 30, 41), 0),
     ((20, 33, 19), (4, 8, 8), 1 << 30), ((20, 33, 19), (5, 4, 50), 20_000)],
)  # fmt: skip
def test_blockwise_output_equals_in_memory_bit_for_bit(tmp_path, shape, chunks, budget) -> None:
    """A zarr output is written block by block (each block once) and equals the numpy path
    exactly, whether the waiting tile parts stay in memory or go to disk."""
    zarr = pytest.importorskip("zarr")
    vol = np.random.default_rng(3).random(shape).astype(np.float32)
    ref = np.zeros((2, *shape), np.float32)
    args = ((6, 12, 12), (4, 8, 8))
    predict_tiled(_mixing_filter, vol, ref, *args, overlap=(1, 3, 3))
    out = zarr.create_array(store=str(tmp_path / "o.zarr"), shape=(2, *shape), dtype="float32",
                            chunks=(2, *chunks), fill_value=0)  # fmt: skip
    spill = tmp_path / "spill"
    spill.mkdir()
    n_tiles: list[int] = []
    predict_tiled(_mixing_filter, vol, out, *args, overlap=(1, 3, 3), max_cached_bytes=budget,
                  scratch_dir=spill, progress=n_tiles.append)  # fmt: skip
    np.testing.assert_array_equal(out[...], ref)
    assert len(n_tiles) == len(TileGrid(shape, *args, (1, 3, 3)))  # each tile predicted once
    assert not any(spill.iterdir())  # spilled parts removed


def test_blockwise_output_writes_each_block_once() -> None:
    writes: list[tuple] = []

    class Recorder:
        shape = (1, 9, 20, 20)
        dtype = np.dtype(np.float32)
        chunks = (1, 4, 8, 8)

        def __setitem__(self, key, value) -> None:
            writes.append(tuple((s.start, s.stop) for s in key[1:]))

    predict_tiled(lambda x: x[:, :, 1:-1, 1:-1, 1:-1], np.ones((9, 20, 20), np.float32),
                  Recorder(), (6, 10, 10), (4, 8, 8), overlap=2)  # fmt: skip
    assert len(writes) == len(set(writes)) == 3 * 3 * 3


def test_every_model_stage_takes_an_onnx_file_as_model() -> None:
    """`model = "X.onnx"` is `model_path` in every stage that runs a model (one validator)."""
    from pathlib import Path

    from syntk_calcium.stages import NeurofinderCnnDetector
    from syntk_neurons.stages import AffinityDetector
    from syntk_synapses import _OnnxDetector
    from syntk_synapses.clustering import AutoencoderKMeans
    from syntk_synapses.synful import Synful

    for stage in (AffinityDetector, _OnnxDetector, Synful, AutoencoderKMeans,
                  NeurofinderCnnDetector):  # fmt: skip
        opts = stage.Options(model="runs/mine.onnx")
        assert opts.model_path == Path("runs/mine.onnx"), stage.name
        assert stage.Options().model_path is None
        with pytest.raises(ValueError, match="not both"):
            stage.Options(model="a.onnx", model_path=Path("b.onnx"))
