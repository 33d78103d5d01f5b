"""OME-Zarr (NGFF 0.5) views of volume artifacts: group metadata with nm scale and translation,
the same data (hard-linked), labels marked as labels, refs and groups left alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from synapse_toolkit.artifacts import ArtifactStore
from synapse_toolkit.data import Volume
from synapse_toolkit.io.ngff import ngff_attributes, view_path, write_ngff_view


def _save(tmp_path: Path, vol: Volume, type_name: str, port: str) -> Path:
    store = ArtifactStore(tmp_path / "run")
    scratch = tmp_path / "run" / ".scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    record = store.save("stage", port, vol, scratch, type_name)
    assert store.problem(record) is None
    return tmp_path / "run" / record["path"]


def test_labels_view_has_nm_scale_translation_and_the_same_data(tmp_path: Path) -> None:
    seg = np.random.default_rng(0).integers(0, 5, size=(6, 20, 30)).astype(np.uint64)
    art = _save(tmp_path, Volume(seg, (40.0, 4.0, 2.0), (80.0, 12.0, 6.0), "seg"), "labels", "seg")
    view = view_path(art)
    assert view.name == "seg.ome.zarr" and view.is_dir()
    group = zarr.open_group(str(view), mode="r")
    ome = dict(group.attrs)["ome"]
    assert ome["version"] == "0.5" and "image-label" in ome
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert {a["unit"] for a in ms["axes"]} == {"nanometer"}
    transforms = ms["datasets"][0]["coordinateTransformations"]
    assert transforms == [
        {"type": "scale", "scale": [40.0, 4.0, 2.0]},
        {"type": "translation", "translation": [80.0, 12.0, 6.0]},
    ]
    level = group["0"]
    assert isinstance(level, zarr.Array)
    np.testing.assert_array_equal(level[...], seg)
    assert level.metadata.dimension_names == ("z", "y", "x")
    assert dict(level.attrs)["voxel_size_nm"] == [40.0, 4.0, 2.0]  # syntk's attributes kept
    # the syntk artifact itself is unchanged: still an array syntk reads
    assert zarr.open_array(str(art), mode="r").shape == seg.shape
    chunk = next(p for p in (view / "0").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert chunk.stat().st_nlink == 2  # hard-linked, not copied


def test_channel_volume_and_ome_zarr_reader(tmp_path: Path) -> None:
    affs = np.random.default_rng(1).random((3, 4, 16, 16)).astype(np.float32)
    art = _save(tmp_path, Volume(affs, (40.0, 4.0, 4.0), (0.0, 8.0, 8.0), "a"), "affinities", "a")
    ome = json.loads((view_path(art) / "zarr.json").read_text())["attributes"]["ome"]
    assert "image-label" not in ome
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 40.0, 4.0, 4.0]
    reader = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    nodes = list(reader.Reader(parse_url(str(view_path(art))))())
    assert nodes and nodes[0].data[0].shape == affs.shape
    assert nodes[0].metadata["coordinateTransformations"][0][1]["translation"] == [0, 0, 8, 8]


def test_rewrite_replaces_the_view_and_non_arrays_get_none(tmp_path: Path) -> None:
    a = np.zeros((2, 4, 4), np.uint8)
    art = _save(tmp_path, Volume(a, (1.0, 1.0, 1.0), (0, 0, 0), "x"), "intensity", "x")
    art2 = _save(tmp_path, Volume(a + 7, (1.0, 1.0, 1.0), (0, 0, 0), "x"), "intensity", "x")
    assert art2 == art
    np.testing.assert_array_equal(zarr.open_group(str(view_path(art)))["0"][...], a + 7)
    assert not list(art.parent.glob(".*"))  # no temporary directories left
    group = tmp_path / "g.zarr"
    zarr.open_group(str(group), mode="w")
    assert write_ngff_view(group, "labels") is None
    assert write_ngff_view(tmp_path / "raw.ref.json", "intensity") is None


def test_bad_dimensions_are_refused() -> None:
    with pytest.raises(Exception, match="z, y, x volume"):
        ngff_attributes(2, (1.0, 1.0), (0.0, 0.0))


def test_export_copies_volumes_read_in_place(tmp_path: Path, cremi_file: Path) -> None:
    from typer.testing import CliRunner

    from synapse_toolkit.cli.main import app
    from synapse_toolkit.io.cremi import open_cremi

    run = tmp_path / "run"
    store = ArtifactStore(run)
    (run / ".scratch").mkdir(parents=True)
    with open_cremi(cremi_file) as data:
        assert data.raw is not None and data.neuron_ids is not None
        raw_rec = store.save("load", "raw", data.raw, run / ".scratch", "intensity")
        ids_rec = store.save("load", "neuron_ids", data.neuron_ids, run / ".scratch", "labels")
        assert raw_rec["path"].endswith(".ref.json")  # read in place: no view yet
        expected = np.asarray(data.raw.data[...])
    manifest = {"stages": {"load": {"outputs": {"raw": raw_rec, "neuron_ids": ids_rec}}}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    res = CliRunner().invoke(app, ["export", "ome-zarr", str(run)])
    assert res.exit_code == 0, res.output
    raw_view = run / "artifacts/load/raw.ome.zarr"
    assert res.stdout.split() == [str(raw_view), str(run / "artifacts/load/neuron_ids.ome.zarr")]
    group = zarr.open_group(str(raw_view), mode="r")
    np.testing.assert_array_equal(group["0"][...], expected)
    ms = dict(group.attrs)["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [40.0, 4.0, 4.0]},
        {"type": "translation", "translation": [40.0, 0.0, 8.0]},
    ]
    ids_ome = json.loads((run / "artifacts/load/neuron_ids.ome.zarr/zarr.json").read_text())
    assert "image-label" in ids_ome["attributes"]["ome"]


def test_pyramid_factors_halve_the_fine_axes_first() -> None:
    from synapse_toolkit.io.ngff import pyramid_factors

    assert pyramid_factors((40.0, 4.0, 4.0), (20, 256, 256), 4) == [
        (1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 8, 8), (2, 16, 16)
    ]  # fmt: skip
    assert pyramid_factors((8.0, 8.0, 8.0), (64, 64, 64), 1) == [(1, 1, 1), (2, 2, 2)]
    # an axis of one voxel stays; nothing left to halve ends the pyramid early
    assert pyramid_factors((40.0, 4.0, 4.0), (1, 2, 2), 3) == [(1, 1, 1), (1, 2, 2)]


def test_downsample_mean_for_intensity_and_mode_for_labels() -> None:
    from synapse_toolkit.io.ngff import downsample_block

    img = np.arange(2 * 4 * 6, dtype=np.uint8).reshape(2, 4, 6)
    out = downsample_block(img, (1, 2, 2), labels=False)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == round((0 + 1 + 6 + 7) / 4)  # mean of the 2x2 block, rounded
    lab = np.array([[[5, 5, 1], [2, 5, 1], [7, 7, 7]]], np.uint64)  # 1 x 3 x 3: odd edges padded
    out = downsample_block(lab, (1, 2, 2), labels=True)
    assert out.dtype == np.uint64 and out.shape == (1, 2, 2)
    assert out[0, 0, 0] == 5  # 5, 5, 2, 5 -> 5
    assert out[0, 0, 1] == 1  # edge: 1, 1 repeated
    assert out[0, 1, 0] == 7
    tie = np.array([[[3, 9], [9, 3]]], np.uint64)
    assert downsample_block(tie, (1, 2, 2), labels=True)[0, 0, 0] == 3  # tie: the smaller id
    affs = np.ones((3, 2, 4, 4), np.float32)
    assert downsample_block(affs, (1, 2, 2), labels=False).shape == (3, 2, 2, 2)


def test_pyramid_levels_read_by_the_ome_zarr_reader_with_nm_scales(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    seg = np.repeat(np.repeat(rng.integers(1, 6, size=(4, 10, 10)), 4, axis=1), 4, axis=2)
    seg = seg.astype(np.uint64)  # 4 x 40 x 40 of 4x4 blocks: mode downsampling keeps ids exact
    art = _save(tmp_path, Volume(seg, (40.0, 4.0, 4.0), (0.0, 8.0, 8.0), "seg"), "labels", "seg")
    raw = rng.random((4, 40, 40)).astype(np.float32)
    art_raw = _save(tmp_path, Volume(raw, (40.0, 4.0, 4.0), (0.0, 8.0, 8.0), "raw"), "intensity",
                    "raw")  # fmt: skip
    assert write_ngff_view(art, "labels", levels=2) == view_path(art)
    write_ngff_view(art_raw, "intensity", levels=2)
    group = zarr.open_group(str(view_path(art)), mode="r")
    np.testing.assert_array_equal(group["1"][...], seg[:, ::2, ::2])
    np.testing.assert_array_equal(group["2"][...], seg[:, ::4, ::4])
    raw1 = zarr.open_group(str(view_path(art_raw)), mode="r")["1"][...]
    np.testing.assert_allclose(raw1, raw.reshape(4, 20, 2, 20, 2).mean(axis=(2, 4)), rtol=1e-6)
    reader = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    for path, is_labels in ((view_path(art), True), (view_path(art_raw), False)):
        node = next(iter(reader.Reader(parse_url(str(path)))()))
        assert [tuple(d.shape) for d in node.data] == [(4, 40, 40), (4, 20, 20), (4, 10, 10)]
        transforms = node.metadata["coordinateTransformations"]
        assert [t[0]["scale"] for t in transforms] == [[40, 4, 4], [40, 8, 8], [40, 16, 16]]
        # coarse voxel centres sit on the centres of the fine voxels they cover
        assert [t[1]["translation"] for t in transforms] == [[0, 8, 8], [0, 10, 10], [0, 14, 14]]
        assert ("image-label" in json.loads((path / "zarr.json").read_text())["attributes"]["ome"]
                ) is is_labels  # fmt: skip
    assert chunk_links(view_path(art)) == 2  # level 0 still hard-linked


def chunk_links(view: Path) -> int:
    chunk = next(p for p in (view / "0").rglob("*") if p.is_file() and p.name != "zarr.json")
    return chunk.stat().st_nlink


def test_export_cli_levels(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from synapse_toolkit.cli.main import app

    seg = np.ones((2, 16, 16), np.uint32)
    art = _save(tmp_path, Volume(seg, (40.0, 4.0, 4.0), (0, 0, 0), "s"), "labels", "seg")
    rec = {"type": "labels", "path": str(art.relative_to(tmp_path / "run"))}
    manifest = {"stages": {"segment": {"outputs": {"segmentation": rec}}}}
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    res = CliRunner().invoke(app, ["export", "ome-zarr", str(tmp_path / "run"), "--levels", "3"])
    assert res.exit_code == 0, res.output
    ms = zarr.open_group(str(view_path(art)), mode="r").attrs["ome"]["multiscales"][0]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2", "3"]
    assert ms["datasets"][3]["coordinateTransformations"][0]["scale"] == [40.0, 32.0, 32.0]
