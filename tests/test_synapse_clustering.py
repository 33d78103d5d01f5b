"""Synapse clustering: oriented patches, encoder ONNX == torch, the autoencoder-kmeans stage
end-to-end on a tiny phantom with the clustering scorer, pictures are valid PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synapse_toolkit.data import ClusterAssignments, PartnerTable, Volume
from synapse_toolkit.synapses.patches import (
    PatchSpec,
    centre_rows_on_map,
    contact_patches,
    extract_patches,
    patch_coordinates,
    straighten_rows,
    synapse_sites,
)


def _blobs(pre_nm: np.ndarray, post_nm: np.ndarray, vs: tuple[float, float, float],
           off: tuple[float, float, float], shape: tuple[int, int, int]) -> Volume:  # fmt: skip
    """Grey volume with a bright disc (in every section) at pre and a dark one at post."""
    _, y, x = np.meshgrid(*[np.arange(s) * v + o for s, v, o in zip(shape, vs, off, strict=True)],
                          indexing="ij")  # fmt: skip
    arr = np.full(shape, 128.0)
    for p, val in ((pre_nm, 250.0), (post_nm, 5.0)):
        arr[(y - p[1]) ** 2 + (x - p[2]) ** 2 < 40.0**2] = val
    return Volume(arr.astype(np.uint8), vs, off)


class _CountingArray:
    """An array that records the size of every region read from it."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr
        self.reads: list[int] = []

    @property
    def shape(self) -> tuple[int, ...]:
        return self.arr.shape

    @property
    def dtype(self) -> Any:
        return self.arr.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        out = self.arr[key]
        self.reads.append(int(out.size))
        return out

    def __setitem__(self, key: Any, value: Any) -> None:
        self.arr[key] = value


@pytest.mark.parametrize("angle_deg", [0.0, 37.0, 90.0, 180.0, 251.0])
@pytest.mark.parametrize(
    "vs,off", [((40.0, 4.0, 4.0), (0.0, 0.0, 0.0)), ((30.0, 5.0, 6.0), (90.0, -40.0, 1000.0))]
)
def test_patches_point_pre_to_post_along_x(angle_deg: float, vs: Any, off: Any) -> None:
    shape = (9, 160, 160)
    centre = np.asarray(off) + np.asarray(vs) * (4, 80, 80)
    a = np.deg2rad(angle_deg)
    d = 120.0 * np.asarray([0.0, np.sin(a), np.cos(a)])  # (z, y, x): pre->post at angle a
    pre, post = centre - d / 2, centre + d / 2
    vol = _blobs(pre, post, vs, off, shape)
    counting = _CountingArray(np.asarray(vol.data))
    vol = vol.with_data(counting)
    table = PartnerTable(pre[None], post[None], np.ones(1, np.uint64), np.full(1, 2, np.uint64),
                         np.ones(1), np.asarray([7], np.uint64))  # fmt: skip
    spec = PatchSpec((90.0, 320.0, 320.0), (30.0, 8.0, 8.0))
    p = extract_patches(vol, synapse_sites(table), spec)[0]
    assert p.shape == spec.shape == (3, 40, 40)
    mid = p[1, 20]  # central row of the central section, along patch x
    assert mid[: 20 - 8].max() > 240 and mid[20 - 10 : 20 - 5].mean() > 200  # pre on the left
    assert mid[20 + 5 : 20 + 10].mean() < 20  # post on the right
    assert abs(float(p[1, 5:15, 20].mean()) - 128) < 2  # nothing above the pre-post axis
    # only the bounding box of the samples was read, not the volume
    assert counting.reads and max(counting.reads) < 0.5 * np.prod(shape)


def test_polyadic_rows_form_one_synapse_and_rotation_is_proper() -> None:
    pre = np.asarray([[0.0, 0, 0], [0, 0, 0], [0, 50, 50]])
    post = np.asarray([[0.0, 0, 100], [0, 100, 0], [0, 50, 150]])
    t = PartnerTable(pre, post, np.zeros(3, np.uint64), np.zeros(3, np.uint64), np.ones(3),
                     np.asarray([5, 5, 9], np.uint64))  # fmt: skip
    s = synapse_sites(t)
    assert s.synapse_id.tolist() == [5, 9]
    np.testing.assert_allclose(s.post_nm[0], [0, 50, 50])
    np.testing.assert_allclose(np.rad2deg(s.angles), [45.0, 0.0])
    w = patch_coordinates(np.zeros(3), np.pi / 2, PatchSpec((1.0, 3.0, 3.0), (1.0, 1.0, 1.0)))
    # patch +x -> world +y, patch +y -> world -x (rotation, determinant +1)
    np.testing.assert_allclose(w[1, 0, 1, 2], 1.0, atol=1e-12)
    np.testing.assert_allclose(w[2, 0, 2, 1], -1.0, atol=1e-12)


def test_straighten_rows_puts_the_boundary_at_the_centre() -> None:
    # 3 rows of width 10 + 2 * 3: pre (1) left of a boundary at 6, 9, and none
    lab = np.array([[1] * 6 + [2] * 10, [1] * 9 + [2] * 7, [1] * 16])
    raw = np.tile(np.arange(16.0), (3, 1))
    out, found = straighten_rows(raw, lab, 1, 2, 10)
    assert found.tolist() == [True, True, False]
    assert out.shape == (3, 10)
    # first post column (6, 9) lands at column 10 // 2 = 5; the unaligned row is the centre crop
    assert out[0, 5] == 6.0 and out[1, 5] == 9.0 and out[2].tolist() == list(range(3, 13))
    none, found0 = straighten_rows(raw, lab, 0, 2, 10)  # unknown segment: nothing aligned
    assert not found0.any() and none[0].tolist() == list(range(3, 13))


def _curved_contact() -> tuple[np.ndarray, np.ndarray, Any, PatchSpec]:
    """A wavy pre/post boundary (x of the first post voxel per y) with a dark 3-voxel band
    behind it on the post side; raw, boundary, the synapse's sites and a patch spec."""
    vs, shape = (40.0, 4.0, 4.0), (5, 120, 120)
    _, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    boundary = 60 + np.round(6 * np.sin(y / 9.0)).astype(int)
    raw = np.full(shape, 150.0)
    raw[(x >= boundary) & (x < boundary + 3)] = 20.0
    centre = np.array([2 * 40.0, 60 * 4.0, 60 * 4.0])
    step = np.array([0.0, 0.0, 60.0])
    table = PartnerTable((centre - step)[None], (centre + step)[None],
                         np.ones(1, np.uint64), np.full(1, 2, np.uint64), np.ones(1),
                         np.asarray([3], np.uint64))  # fmt: skip
    return raw.astype(np.uint8), boundary, synapse_sites(table), PatchSpec((120.0, 160.0, 64.0), vs)


def _band_lines_up(p: np.ndarray) -> None:
    assert p.shape == (1, 2, 3, 40, 16)
    assert p[0, 1].min() == 1.0  # every row of the contact was aligned
    dark = p[0, 0] < 100  # (samples fall between voxels: the band may blur or move by one)
    assert dark[..., 9].all() and not dark[..., :7].any() and not dark[..., 12:].any()


def test_contact_patches_straighten_a_curved_contact() -> None:
    """Straightened on the labels, the dark band sits at the same columns in every row of the
    contact; without straightening it wanders."""
    raw, boundary, sites, spec = _curved_contact()
    x = np.arange(raw.shape[2])[None, None, :]
    labels = np.where(x < boundary, 1, 2).astype(np.uint64)
    vs = spec.voxel_size_nm
    _band_lines_up(contact_patches(Volume(raw, vs), Volume(labels, vs), sites, spec, 40.0))
    flat = extract_patches(Volume(raw, vs), sites, spec)
    assert not (flat[0] < 100)[..., 9].all()


def test_centre_rows_on_map_puts_the_cleft_centre_at_the_centre() -> None:
    # 4 rows of width 10 + 2 * 3: a cleft over columns 5-7, over 8-10, none, and one beyond reach
    cleft = np.zeros((4, 16))
    cleft[0, 5:8] = 0.9
    cleft[1, 8:11] = 0.8
    cleft[3, 13:16] = 0.9
    cleft[2, 4] = 0.4  # below the threshold: not a cleft
    raw = np.tile(np.arange(16.0), (4, 1))
    out, found = centre_rows_on_map(raw, cleft, 10, threshold=0.5)
    assert found.tolist() == [True, True, False, False]
    # the cleft's centre (6, 9) lands at column 10 // 2 = 5; unaligned rows are the centre crop
    assert out[0, 5] == 6.0 and out[1, 5] == 9.0
    assert out[2].tolist() == out[3].tolist() == list(range(3, 13))
    _, found_high = centre_rows_on_map(raw, cleft, 10, threshold=0.85)  # row 1's 0.8 is below
    assert found_high.tolist() == [True, False, False, False]


def test_contact_patches_on_a_cleft_map_straighten_a_curved_contact() -> None:
    """The same contact straightened on a 3-voxel cleft map (1, z, y, x) around the boundary
    instead of on the labels: the band lines up the same way, and no segmentation is read."""
    raw, boundary, sites, spec = _curved_contact()
    x = np.arange(raw.shape[2])[None, None, :]
    cleft = ((x >= boundary - 1) & (x <= boundary + 1)).astype(np.float32)[None]
    vs = spec.voxel_size_nm
    _band_lines_up(contact_patches(Volume(raw, vs), None, sites, spec, 40.0,
                                   cleft=Volume(cleft, vs)))  # fmt: skip


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A small random-weight encoder exported once (export is the slow part)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from synapse_toolkit.nn.cluster_encoder import ClusterEncoder, EncoderConfig
    from synapse_toolkit.nn.export import export_model

    torch.manual_seed(0)
    spec = PatchSpec((120.0, 256.0, 256.0), (40.0, 16.0, 16.0))
    net = ClusterEncoder(EncoderConfig(spec.shape, channels=(4, 8), latent=4))
    out = tmp_path_factory.mktemp("encoder") / "enc.onnx"
    export_model(net, spec.shape, out, metadata={
        "patch_size_nm": list(spec.size_nm), "patch_voxel_size_nm": list(spec.voxel_size_nm),
        "latent": 4, "variational": False,
    })  # fmt: skip
    return net, out


def test_onnx_encoder_equals_torch(tiny_encoder: tuple[Any, Path]) -> None:
    from synapse_toolkit.synapses.clustering import PatchEncoder
    from synapse_toolkit.synapses.train_cluster_encoder import encode_torch

    net, path = tiny_encoder
    rng = np.random.default_rng(1)
    patches = rng.integers(0, 255, (5, 3, 16, 16)).astype(np.float32)
    got = PatchEncoder(path).encode(patches)
    want = encode_torch(net, patches)
    assert got.shape == (5, 4)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(got - got[0]).max() > 1e-3  # different patches, different codes


def test_contact_encoder_onnx_equals_torch_and_needs_a_contact(tmp_path: Path) -> None:
    """A contact-pooling encoder (2 channels: patch, contact mask) exports exactly; the stage
    refuses to run it without a segmentation, in one line."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from synapse_toolkit.api import run_stage
    from synapse_toolkit.errors import DataError
    from synapse_toolkit.nn.cluster_encoder import ClusterAutoencoder, EncoderConfig
    from synapse_toolkit.nn.export import export_model
    from synapse_toolkit.synapses.clustering import PatchEncoder
    from synapse_toolkit.synapses.train_cluster_encoder import encode_torch

    torch.manual_seed(0)
    spec = PatchSpec((120.0, 64.0, 32.0), (40.0, 4.0, 4.0))
    cfg = EncoderConfig(spec.shape, channels=(4, 8), latent=3, in_channels=2, contact_pool=True)
    ae = ClusterAutoencoder(cfg)
    x = torch.randn(2, 2, *spec.shape)
    rec, mu, _ = ae(x)
    assert rec.shape == (2, 1, *spec.shape) and mu.shape == (2, 3)
    # the decoder redraws one cross-section for all rows (away from the zero-padded ends)
    assert torch.allclose(rec[:, :, 1, 4], rec[:, :, 1, 8], atol=1e-5)
    path = tmp_path / "contact.onnx"
    export_model(ae.encoder, spec.shape, path, metadata={
        "patch_size_nm": list(spec.size_nm), "patch_voxel_size_nm": list(spec.voxel_size_nm),
        "latent": 3, "variational": False, "align": "contact", "reach_nm": 16.0,
    })  # fmt: skip
    enc = PatchEncoder(path)
    assert enc.aligns_on_contact and enc.in_channels == 2
    rng = np.random.default_rng(2)
    patches = np.concatenate([rng.integers(0, 255, (4, 1, *spec.shape)),
                              rng.integers(0, 2, (4, 1, 3, 16, 1)).repeat(8, 4)],
                             axis=1).astype(np.float32)  # fmt: skip
    np.testing.assert_allclose(enc.encode(patches), encode_torch(ae.encoder, patches), atol=1e-4)
    partners = PartnerTable(np.zeros((1, 3)), np.ones((1, 3)), np.ones(1, np.uint64),
                            np.ones(1, np.uint64), np.ones(1), np.ones(1, np.uint64))  # fmt: skip
    raw = Volume(np.zeros((4, 32, 32), np.uint8), (40.0, 4.0, 4.0))
    with pytest.raises(DataError, match="cleft probability .* or a segmentation"):
        run_stage("clusterer", "autoencoder-kmeans", {"raw": raw, "partners": partners},
                  {"model_path": str(path), "k": 1, "pictures": False},
                  scratch_dir=tmp_path / "s")  # fmt: skip
    # a cleft probability (1, z, y, x) alone is enough to straighten on
    cleft = Volume(np.zeros((1, 4, 32, 32), np.float32), (40.0, 4.0, 4.0))
    out = run_stage("clusterer", "autoencoder-kmeans",
                    {"raw": raw, "partners": partners, "clefts": cleft},
                    {"model_path": str(path), "k": 1, "pictures": False},
                    scratch_dir=tmp_path / "s2")  # fmt: skip
    assert out["clusters"].labels.tolist() == [0]


def test_clustering_scorer_matches_found_synapses_to_annotated() -> None:
    from synapse_toolkit.api import run_stage
    from synapse_toolkit.errors import DataError

    pre = np.array([[0.0, 0, 0], [0, 0, 1000], [0, 0, 2000]])
    post = pre + np.array([0.0, 0, 100])
    ann = PartnerTable(pre, post, np.zeros(3, np.uint64), np.zeros(3, np.uint64), np.ones(3),
                       np.arange(3, dtype=np.uint64)).to_annotations()  # fmt: skip
    ids = PartnerTable.from_annotations(ann).synapse_id  # synapse id = pre-site annotation id
    truth = ClusterAssignments(ids, np.array([0, 1, 1]))
    # found: near the 1st and the 3rd annotated synapse, and one far from all
    found = PartnerTable(np.array([[0.0, 0, 30], [0, 0, 1980], [0, 0, 5000]]),
                         np.array([[0.0, 0, 130], [0, 0, 2080], [0, 0, 5100]]),
                         np.zeros(3, np.uint64), np.zeros(3, np.uint64), np.ones(3),
                         np.array([7, 8, 9], np.uint64))  # fmt: skip
    pred = ClusterAssignments(np.array([7, 8, 9], np.uint64), np.array([5, 6, 6]))
    inputs = {"prediction": pred, "truth": truth, "partners": found, "truth_annotations": ann}
    rec = run_stage("scorer", "clustering", inputs)["scores"]
    assert rec.values["n_items"] == 2 and rec.values["ari"] == 1.0
    assert rec.details["n_found"] == 3 and rec.details["n_found_matched"] == 2
    wrong = ClusterAssignments(np.array([7, 8, 9], np.uint64), np.array([5, 5, 6]))
    assert run_stage("scorer", "clustering", {**inputs, "prediction": wrong})["scores"].values[
        "ari"
    ] == 0.0  # fmt: skip
    with pytest.raises(DataError, match="both"):
        run_stage("scorer", "clustering", {"prediction": pred, "truth": truth, "partners": found})


def test_stage_end_to_end_with_clustering_scorer(
    tmp_path: Path, tiny_encoder: tuple[Any, Path]
) -> None:
    from synapse_toolkit.api import run_stage
    from synapse_toolkit.fsio import sha256_file
    from synapse_toolkit.io.cremi import open_cremi
    from synapse_toolkit.phantom.em import EMPhantom
    from synapse_toolkit.phantom.params import EMPhantomParams
    from synapse_toolkit.phantom.store import write_phantom

    _, model = tiny_encoder
    ph_path = write_phantom(
        EMPhantom(EMPhantomParams(shape=(8, 160, 160), seed=5, n_synapses=6, n_types=3)),
        tmp_path / "ph.h5",
    )
    truth = run_stage("loader", "phantom-synapse-types", {}, {"path": str(ph_path)})["types"]
    assert isinstance(truth, ClusterAssignments) and len(truth.labels) >= 3
    with open_cremi(ph_path) as data:
        assert data.annotations is not None and data.raw is not None
        partners = PartnerTable.from_annotations(data.annotations)
        out = run_stage(
            "clusterer", "autoencoder-kmeans", {"raw": data.raw, "partners": partners},
            {"model_path": str(model), "sha256": sha256_file(model), "k": 2, "pictures": False},
            scratch_dir=tmp_path / "s",
        )["clusters"]  # fmt: skip
    assert sorted(out.synapse_ids.tolist()) == sorted(truth.synapse_ids.tolist())
    assert out.embedding is not None and out.embedding.shape == (len(out.labels), 4)
    assert set(out.labels.tolist()) == {0, 1}
    score = run_stage("scorer", "clustering", {"prediction": out, "truth": truth})["scores"]
    assert set(score.values) >= {"ari", "nmi", "ami"}
    assert -1.0 <= score.values["ari"] <= 1.0
    perfect = run_stage("scorer", "clustering", {"prediction": truth, "truth": truth})["scores"]
    assert perfect.values["ari"] == 1.0


def test_pictures_are_valid_pngs(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    from synapse_toolkit.synapses.cluster_pictures import plot_embedding, plot_gallery

    rng = np.random.default_rng(0)
    codes = rng.normal(size=(12, 5))
    labels = np.repeat([0, 1, 2], 4)
    a = plot_embedding(codes, labels, tmp_path / "e.png", truth=labels[::-1].copy())
    b = plot_gallery(rng.random((12, 3, 16, 16)), labels, tmp_path / "g.png", per_cluster=3)
    for path in (a, b):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(path)
        assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
        assert img.std() > 0.01  # not a blank image


def test_clustering_example_scores_and_pictures(tmp_path: Path) -> None:
    """examples/clustering.toml on the bundled demo phantom with the shipped encoder."""
    from synapse_toolkit.api import run_pipeline_file

    example = Path(__file__).resolve().parents[1] / "examples" / "clustering.toml"
    scores = run_pipeline_file(example, [f'output.dir="{tmp_path / "run"}"'])
    values = scores["score_clusters.scores"]["values"]
    for key in ("ari", "nmi", "ami"):
        assert -1.0 <= values[key] <= 1.0
    assert values["n_items"] == 15
    for name in ("clusters_embedding.png", "clusters_gallery.png"):
        assert (tmp_path / "run" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cluster_run_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from synapse_toolkit.cli.main import app

    demo = Path(__file__).resolve().parents[1] / "synapse_toolkit" / "demo" / "cremi_demo.hdf"
    res = CliRunner().invoke(app, ["cluster", "run", str(demo), "--out", str(tmp_path), "--k", "3"])
    assert res.exit_code == 0, res.output
    assert "15 synapses in 3 clusters" in res.output and "ARI" in res.output
    saved = json.loads((tmp_path / "clusters.json").read_text())
    from synapse_toolkit.datasets import model_path
    from synapse_toolkit.onnx_runtime import model_metadata
    from synapse_toolkit.synapses.clustering import PatchEncoder

    latent = int(
        model_metadata(PatchEncoder(model_path("synapses/cluster_encoder")).session)["latent"]
    )
    assert len(saved["labels"]) == 15 and len(saved["embedding"][0]) == latent
    monkeypatch.chdir(tmp_path)
    bad = CliRunner().invoke(app, ["cluster", "run", str(tmp_path / "missing.h5")])
    assert bad.exit_code == 1 and "error:" in bad.output
    assert not (tmp_path / "clusters").exists()  # no output folder for an input that failed


def test_cluster_run_straightens_on_the_files_clefts_without_neuron_ids(tmp_path: Path) -> None:
    """A CREMI file with cleft labels but no neuron ids (e.g. a user's predictions) clusters on
    its clefts, as `--straighten-on clefts` does on the full file; asking for the missing
    neuron ids is one error line naming the file."""
    import json
    import shutil

    import h5py
    from typer.testing import CliRunner

    from synapse_toolkit.cli.main import app

    demo = Path(__file__).resolve().parents[1] / "synapse_toolkit" / "demo" / "cremi_demo.hdf"
    copy = tmp_path / "no_neuron_ids.hdf"
    shutil.copy(demo, copy)
    with h5py.File(copy, "a") as f:
        del f["volumes/labels/neuron_ids"]
    runs = {}
    for name, path, extra in (("copy", copy, []), ("full", demo, ["--straighten-on", "clefts"]),
                              ("segments", demo, [])):  # fmt: skip
        out = tmp_path / name
        res = CliRunner().invoke(app, ["cluster", "run", str(path), "--out", str(out), "--k", "3",
                                       *extra])  # fmt: skip
        assert res.exit_code == 0, res.output
        runs[name] = json.loads((out / "clusters.json").read_text())["embedding"]
    assert np.allclose(runs["copy"], runs["full"])
    assert not np.allclose(runs["copy"], runs["segments"])  # the option changes what is encoded
    bad = CliRunner().invoke(app, ["cluster", "run", str(copy), "--out", str(tmp_path / "x"),
                                   "--straighten-on", "neuron_ids"])  # fmt: skip
    assert bad.exit_code == 1
    assert "no_neuron_ids.hdf" in bad.output and "neuron_ids" in bad.output
    assert not (tmp_path / "x").exists()


def test_cleft_mask_map_reads_blocks_of_the_cleft_labels() -> None:
    from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND
    from synapse_toolkit.data import Volume
    from synapse_toolkit.synapses.patches import cleft_mask_map

    labels = np.full((4, 6, 8), CLEFT_BACKGROUND, np.uint64)
    labels[1:3, 2:4, 3:7] = 0  # 0 is a valid CREMI cleft id
    labels[3, 5, 7] = 12
    m = cleft_mask_map(Volume(labels, (40.0, 4.0, 4.0), (80.0, 0.0, 4.0)))
    assert m.shape == (1, 4, 6, 8) and m.dtype == np.float32
    assert m.offset_nm == (80.0, 0.0, 4.0)
    full = np.asarray(m.data[:, :, :, :])
    assert np.array_equal(full[0], (labels != CLEFT_BACKGROUND).astype(np.float32))
    assert np.array_equal(m.data[0, 1:3, 2:5, 6:8], full[0, 1:3, 2:5, 6:8])
    assert np.array_equal(m.data[..., 6:8], full[..., 6:8])
    assert np.array_equal(m.data[0], full[0]) and np.array_equal(m.data[:, 2], full[:, 2])


def test_encode_sites_in_batches_equals_encoding_all_patches(tmp_path: Path) -> None:
    """The clusterer encodes synapses a batch at a time (bounded memory); the codes must not
    depend on the batch size, for the shipped contact-aligned encoder on the demo."""
    from synapse_toolkit.datasets import model_path
    from synapse_toolkit.io.cremi import open_cremi
    from synapse_toolkit.synapses.clustering import PatchEncoder, gallery_members
    from synapse_toolkit.synapses.patches import synapse_sites

    demo = Path(__file__).resolve().parents[1] / "synapse_toolkit" / "demo" / "cremi_demo.hdf"
    enc = PatchEncoder(model_path("synapses/cluster_encoder"))
    with open_cremi(demo) as data:
        assert data.annotations is not None and data.raw is not None
        sites = synapse_sites(PartnerTable.from_annotations(data.annotations))
        whole = enc.encode(enc.patches(data.raw, sites, data.neuron_ids))
        batched = enc.encode_sites(data.raw, sites, data.neuron_ids, batch=4)
        part = enc.encode(enc.patches(data.raw, sites.take(np.array([5, 2])), data.neuron_ids))
    assert len(sites) == 15 and whole.shape[0] == 15
    np.testing.assert_array_equal(batched, whole)
    np.testing.assert_array_equal(part, whole[[5, 2]])
    members = gallery_members(np.array([2, 0, 2, 1, 0, 0, 2]), per_cluster=2)
    assert members.tolist() == [0, 1, 2, 3, 4]


def test_predicted_cleft_marks_the_demo_clefts() -> None:
    """The cleft probability a cleft-straightened encoder trains on (the shipped cleft U-Net):
    high on the bundled demo's true clefts, low elsewhere."""
    from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND
    from synapse_toolkit.io.cremi import read_cremi
    from synapse_toolkit.synapses.train_cluster_encoder import predicted_cleft

    demo = read_cremi(Path(__file__).resolve().parents[1] / "synapse_toolkit/demo/cremi_demo.hdf")
    assert demo.raw is not None and demo.clefts is not None
    prob = predicted_cleft(demo.raw, "synapses/clefts")
    assert prob.shape == (1, *demo.raw.spatial_shape) and prob.voxel_size_nm == (40.0, 4.0, 4.0)
    cleft = np.asarray(demo.clefts.data) != CLEFT_BACKGROUND
    p = np.asarray(prob.data)[0]
    # above the alignment's threshold (0.9): most true cleft voxels, ~1 % of the others
    assert (p[cleft] > 0.9).mean() > 0.5 and (p[~cleft] > 0.9).mean() < 0.03
