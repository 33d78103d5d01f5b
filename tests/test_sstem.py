"""Serial-section EM pieces: PNG reading without imageio, section-linked labels, 2D section
scores, per-level U-Net kernels, in-plane augmentation, and waterz reading its threshold from the
affinity model's metadata."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest

from synapse_toolkit.data import Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.io.image_stack import read_png_grey
from synapse_toolkit.metrics.sections import score_sections, section_truth, split_sections
from synapse_toolkit.nn.sections import link_sections


# -- PNG ----------------------------------------------------------------------------------------
def _encode_png(img: np.ndarray, filters: list[int]) -> bytes:
    """A greyscale PNG with the given filter type per row (an independent encoder)."""
    depth = 8 * img.dtype.itemsize
    rows = img.astype(">u2").view(np.uint8) if depth == 16 else img
    rows = rows.reshape(img.shape[0], -1).astype(np.int64)
    bpp = depth // 8
    out = bytearray()
    prev = np.zeros(rows.shape[1], np.int64)
    for y, f in enumerate(filters):
        cur = rows[y]
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        if f == 0:
            pred = np.zeros_like(cur)
        elif f == 1:
            pred = left
        elif f == 2:
            pred = prev
        elif f == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - up_left
            pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - up_left)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, up_left))
        out += bytes([f]) + ((cur - pred) & 0xFF).astype(np.uint8).tobytes()
        prev = cur

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", img.shape[1], img.shape[0], depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(out)))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_decoder_every_filter(tmp_path, dtype) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, np.iinfo(dtype).max, (10, 7), endpoint=True).astype(dtype)
    path = tmp_path / "a.png"
    path.write_bytes(_encode_png(img, [0, 1, 2, 3, 4, 4, 3, 2, 1, 0]))
    got = read_png_grey(path)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, img)


def test_png_decoder_rejects_colour_and_non_png(tmp_path) -> None:
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="not a PNG"):
        read_png_grey(bad)
    colour = _encode_png(np.zeros((2, 2), np.uint8), [0, 0]).replace(
        struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0), struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    )
    bad.write_bytes(colour)
    with pytest.raises(DataError, match="colour type 2"):
        read_png_grey(bad)


# -- labels and 2D scores -----------------------------------------------------------------------
def _cells() -> np.ndarray:
    """Three sections; a membrane line at x=10 splits each into two cells; the right cell moves
    far in section 2 (no overlap with section 1's right cell: not linked)."""
    c = np.ones((3, 20, 20), bool)
    c[:, :, 10] = False
    c[2, :, 10] = True
    c[2, :, 15] = False  # section 2: cells x<15 and x>15
    return c


def test_link_sections_links_good_overlaps_only() -> None:
    c = _cells()
    ids = link_sections(c, min_iou=0.5)
    assert (ids[~c] == 0).all() and (ids[c] > 0).all()
    assert ids[0, 0, 0] == ids[1, 0, 0]  # left cell continues
    assert ids[0, 0, 15] == ids[1, 0, 15]  # right cell continues in section 1
    # section 2's big left cell overlaps section 1's left cell with IoU 200/300: linked
    assert ids[2, 0, 0] == ids[1, 0, 0]
    # section 2's small right cell (x > 15) overlaps section 1's right cell with IoU 80/180
    assert ids[2, 0, 17] != ids[1, 0, 17]
    assert len(np.unique(section_truth(c)[c])) == 6  # six 2D components before linking


def test_split_and_score_sections() -> None:
    c = _cells()
    truth = section_truth(c)
    assert score_sections(truth, c)["cremi_score"] == 0.0
    # one 3D segment for everything: split into its 2D pieces, each section is one piece per
    # connected cell region: membrane pixels (ignored) do not separate labels in 2D here.
    merged = np.ones(c.shape, np.uint64)
    pieces = split_sections(merged)
    assert len(np.unique(pieces)) == 3  # one piece per section
    s = score_sections(merged, c)
    assert s["voi_merge"] > 0.9 and s["voi_split"] == 0 and len(s["sections"]) == 3
    # a segment that is two separate pieces in a section is split into two
    two = np.zeros(c.shape, np.uint64)
    two[:, :, :10] = 5
    two[:, :, 11:] = 5
    two[:, :, 10] = 7
    two[2] = truth[2]
    assert score_sections(two, c)["cremi_score"] == 0.0
    with pytest.raises(ValueError):
        score_sections(two[:2], c)


# -- U-Net kernels per level ------------------------------------------------------------------
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_level_kernel_sizes(padding) -> None:
    torch = pytest.importorskip("torch")
    from synapse_toolkit.nn.unet import UNet3D, UNetConfig

    cfg = UNetConfig(
        num_fmaps=2, fmap_inc_factor=2, downsample_factors=((1, 2, 2), (1, 2, 2)),
        level_kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)), padding=padding,
    )  # fmt: skip
    net = UNet3D(cfg)
    assert net.down[0].layers[0].kernel_size == (1, 3, 3)
    assert net.bottom.layers[0].kernel_size == (3, 3, 3)
    shape = net.valid_input_shape((6, 40, 40))
    out = net(torch.zeros(1, 1, *shape))
    assert tuple(out.shape[2:]) == net.output_shape(shape)
    if padding == "valid":  # z loses 4 per 3D level (2 convs), nothing at the (1,3,3) level
        assert shape[0] - net.output_shape(shape)[0] == 4 + 4 + 4
    again = UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert "level_kernel_sizes" not in UNetConfig().to_dict()  # old checkpoints unchanged
    with pytest.raises(ValueError, match="one per level"):
        UNetConfig(downsample_factors=((1, 2, 2),), level_kernel_sizes=((1, 3, 3),))


# -- augmentation -----------------------------------------------------------------------------
def test_in_plane_blur_and_section_intensity_keep_sections_apart() -> None:
    from synapse_toolkit.nn.augment import AugmentConfig, sample_augmented

    raw = np.zeros((5, 16, 16), np.float32)
    raw[2] = 1.0
    raw[2, 8, 8] = 0.0
    lab = np.ones(raw.shape, np.uint64)
    cfg = AugmentConfig(flip=False, transpose_axes=(), intensity_scale=0, intensity_shift=0,
                        elastic_sigma=0, margin=(0, 0, 0), blur_prob=1.0, blur_sigma=3.0,
                        blur_in_plane=True)  # fmt: skip
    for seed in range(3):
        r, _ = sample_augmented(raw, lab, (0, 0, 0), raw.shape, cfg, np.random.default_rng(seed))
        assert (r[[0, 1, 3, 4]] == 0).all()  # nothing leaks across sections
    cfg = AugmentConfig(flip=False, transpose_axes=(), intensity_scale=0, intensity_shift=0,
                        elastic_sigma=0, margin=(0, 0, 0), section_intensity=0.2)  # fmt: skip
    flat = np.full((4, 8, 8), 0.5, np.float32)
    r, _ = sample_augmented(flat, lab[:4, :8, :8], (0, 0, 0), flat.shape, cfg,
                            np.random.default_rng(0))  # fmt: skip
    per_section = r.reshape(4, -1)
    assert np.ptp(per_section, axis=1).max() < 1e-6  # uniform within a section
    assert np.ptp(per_section[:, 0]) > 1e-3  # but different between sections


# -- waterz threshold from the model's metadata -----------------------------------------------
def _affinity_volume(tmp_path, attrs: dict | None) -> tuple[Volume, np.ndarray]:
    import zarr

    from synapse_toolkit.affinities import labels_to_affinities

    lab = np.zeros((4, 20, 20), np.uint64)
    lab[:, :, :10], lab[:, :, 10:] = 1, 2
    affs = labels_to_affinities(lab).astype(np.float32)
    affs[:] = np.where(affs > 0, 0.9, 0.0)
    affs[2, :, :, 10] = 0.55  # the two cells touch with affinity 0.55 (a faint membrane)
    arr = zarr.create_array(store=str(tmp_path / "affs.zarr"), shape=affs.shape, dtype="f4")
    arr[...] = affs
    if attrs is not None:
        arr.attrs["agglomeration"] = attrs
    return Volume(arr, (50, 4, 4)), lab


def _agglomerate(tmp_path, affs: Volume, truth=None, **options):
    from syntk_neurons.stages import WaterzAgglomerator

    from synapse_toolkit.stages import StageContext

    ctx = StageContext("agglo", tmp_path / "scratch")
    inputs = {"affinities": affs} if truth is None else {"affinities": affs, "truth": truth}
    out = WaterzAgglomerator(WaterzAgglomerator.Options(**options), ctx).run(inputs)
    return out, ctx


def test_waterz_uses_the_models_threshold_without_truth(tmp_path) -> None:
    # merging the two cells needs a threshold above 1 - 0.55 = 0.45
    meta = {"scoring": "quantile50", "threshold": 0.47, "chosen_on": "validation sections"}
    affs, lab = _affinity_volume(tmp_path, meta)
    out, ctx = _agglomerate(tmp_path, affs, thresholds=[0.1, 0.2, 0.3])
    seg = out["segmentation"].read()
    assert len(np.unique(seg)) == 1  # 0.47 from the metadata, not the median 0.2 (no merge)
    assert dict(out["segmentations"].data.attrs)["thresholds"] == [0.1, 0.2, 0.3, 0.47]
    assert ctx.notes["agglomeration"] == {
        "scoring": "quantile50", "threshold": 0.47, "chosen_by": "model metadata",
    }  # fmt: skip
    # a threshold the user gives wins
    out, ctx = _agglomerate(tmp_path, affs, thresholds=[0.1, 0.2, 0.3], threshold=0.1)
    assert len(np.unique(out["segmentation"].read())) == 2
    assert ctx.notes["agglomeration"]["chosen_by"] == "option"
    # another scoring function set explicitly: the metadata threshold does not apply
    out, ctx = _agglomerate(tmp_path, affs, thresholds=[0.1, 0.2, 0.3], scoring="mean")
    assert ctx.notes["agglomeration"] == {
        "scoring": "mean", "threshold": 0.2, "chosen_by": "median of thresholds",
    }  # fmt: skip
    # with truth, truth selects
    out, ctx = _agglomerate(tmp_path, affs, truth=Volume(lab, (50, 4, 4)), thresholds=[0.1, 0.6])
    assert ctx.notes["agglomeration"]["chosen_by"] == "truth"
    assert len(np.unique(out["segmentation"].read())) == 2


def test_waterz_without_model_metadata_keeps_the_median(tmp_path) -> None:
    affs, _ = _affinity_volume(tmp_path, None)
    out, ctx = _agglomerate(tmp_path, affs, thresholds=[0.1, 0.2, 0.5])
    assert ctx.notes["agglomeration"]["threshold"] == 0.2
    assert len(np.unique(out["segmentation"].read())) == 2


def test_affinity_stage_passes_the_models_waterz_settings_and_domain_on(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    from syntk_neurons.stages import AffinityDetector

    from synapse_toolkit.nn.export import sha256_of
    from synapse_toolkit.stages import StageContext
    from tests.test_tiled_inference import _tiny_onnx

    model = tmp_path / "tiny.onnx"
    _tiny_onnx(model)
    proto = onnx.load(str(model))
    agg = {"scoring": "quantile50", "threshold": 0.35, "chosen_on": "validation"}
    meta = {"agglomeration": agg, "modality": "ssTEM", "training_data": "real"}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(proto, str(model))
    model.with_suffix(".sha256").write_text(f"{sha256_of(model)}  tiny.onnx\n")
    raw = np.random.default_rng(0).integers(0, 255, (6, 20, 20)).astype(np.uint8)
    ctx = StageContext("aff", tmp_path / "aff", block_shape=(4, 8, 8))
    opts = AffinityDetector.Options(model_path=model, overlap=(1, 2, 2), resample="never")
    affs = AffinityDetector(opts, ctx).run({"raw": Volume(raw, (50, 4, 4))})["affinities"]
    assert dict(affs.data.attrs)["agglomeration"] == agg
    assert ctx.notes["model_domain"] == {"modality": "ssTEM", "training_data": "real"}
    _, wctx = _agglomerate(tmp_path, affs, thresholds=[0.1, 0.9])
    assert wctx.notes["agglomeration"]["threshold"] == 0.35


def test_training_validates_by_section_scores(tmp_path) -> None:
    pytest.importorskip("torch")
    from synapse_toolkit.nn.training import load_config, train
    from tests.test_training import _config

    path = _config(tmp_path, loss="bce")
    path.write_text(path.read_text() + 'validation_metric = "sections"\n')
    cfg = load_config(path)
    train(cfg, log=lambda _: None)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["validation"] for r in records if "validation" in r][-1]
    assert {"voi", "arand", "cremi_score", "threshold"} <= set(val["best"])
    assert "sections" not in val["best"]  # means only; per-section rows stay out of the log


def test_shipped_sstem_config_is_valid() -> None:
    pytest.importorskip("torch")
    from pathlib import Path

    from synapse_toolkit.nn.training import load_config
    from synapse_toolkit.nn.unet import UNet3D, UNetConfig

    cfg = load_config(Path(__file__).parents[1] / "examples" / "train" / "sstem_affinities.toml")
    assert cfg.training.validation_metric == "sections"
    assert cfg.domain["modality"] == "ssTEM" and cfg.domain["voxel_size_nm"] == [50.0, 4.0, 4.0]
    model = {k: v for k, v in cfg.model.items() if k != "init"}
    net = UNet3D(UNetConfig.from_dict(model))
    assert net.is_valid_input_shape(cfg.training.input_shape)
    # sections 20-23 are held out: no training or validation ROI reaches them
    assert all(spec.roi[0][1] <= 20 for spec in cfg.data.volumes + cfg.data.validation)
    train_z = {z for spec in cfg.data.volumes for z in range(*spec.roi[0])}
    val_z = {z for spec in cfg.data.validation for z in range(*spec.roi[0])}
    assert not train_z & val_z


def test_training_continues_from_a_checkpoint(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    from synapse_toolkit.errors import ConfigError
    from synapse_toolkit.nn.training import load_config, train
    from tests.test_training import _config

    cfg = load_config(_config(tmp_path, loss="bce"))
    first = train(cfg, log=lambda _: None)
    state = torch.load(first["latest"], weights_only=True)
    assert state["iteration"] == 4 and "optimizer" in state
    more = cfg.training.model_copy(
        update={"init_from": first["latest"], "iterations": 2, "out_dir": str(tmp_path / "b")}
    )
    lines: list[str] = []
    second = train(cfg.model_copy(update={"training": more}), log=lines.append)
    assert second["iterations"] == 6
    assert any("continuing from" in x and "with its optimizer state" in x for x in lines)
    fresh = more.model_copy(update={"out_dir": str(tmp_path / "c")})
    other = cfg.model_copy(update={"model": {**cfg.model, "num_fmaps": 3}, "training": fresh})
    with pytest.raises(ConfigError, match="init_from"):
        train(other, log=lambda _: None)
