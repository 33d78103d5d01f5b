"""Synful partners: training targets, extraction on a hand-made prediction, the ``synful`` stage's
contract, and a tiny end to end run (train → ONNX → stage → CREMI partner score)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND
from synapse_toolkit.data import Annotations, PartnerTable, Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.synapses.synful import (
    SynfulSettings,
    SynfulTargetSettings,
    extract_partners,
    group_synapses,
    synful_targets,
)
from synapse_toolkit.synapses.targets import Grid
from tests.conftest import make_cremi_data

VS = (40.0, 4.0, 4.0)
SHAPE = (8, 64, 64)
PRE_VOX = np.array([4, 24, 32])  # in segment 1


def _segmentation() -> np.ndarray:
    seg = np.ones(SHAPE, np.uint64)  # 1: y < 32 (pre neuron)
    seg[:, 32:, :32] = 2
    seg[:, 32:, 32:] = 3
    return seg


def _blob(pred: np.ndarray, grid: Grid, centre: tuple[int, int, int], half: tuple[int, int, int],
          target_vox: np.ndarray, peak: float = 0.9) -> None:  # fmt: skip
    """A mask blob whose vectors / directions point at ``target_vox``."""
    box = tuple(slice(c - h, c + h + 1) for c, h in zip(centre, half, strict=True))
    coords = np.argwhere(np.ones([2 * h + 1 for h in half], bool)) + [b.start for b in box]
    d = ((coords - centre) / np.maximum(np.asarray(half), 1)) ** 2
    prob = peak - 0.2 * d.sum(1) / 3  # highest at the centre
    pred[0][tuple(coords.T)] = prob
    vec = grid.to_world(target_vox) - grid.to_world(coords)
    for a in range(3):
        pred[1 + a][tuple(coords.T)] = vec[:, a]
        pred[4 + a][tuple(coords.T)] = vec[:, a] / np.linalg.norm(vec, axis=1)


def _scene() -> tuple[np.ndarray, np.ndarray, Grid]:
    grid = Grid(SHAPE, VS)
    pred = np.zeros((7, *SHAPE), np.float32)
    _blob(pred, grid, (4, 44, 16), (1, 4, 4), PRE_VOX)  # post in segment 2
    _blob(pred, grid, (4, 44, 48), (1, 4, 4), PRE_VOX, peak=0.8)  # post in segment 3: polyadic
    return pred, _segmentation(), grid


def test_targets_point_from_post_voxels_to_the_pre_partner() -> None:
    data = make_cremi_data(shape=(6, 40, 50))
    grid = Grid.of(data.raw)
    seg = data.neuron_ids.read()
    t = synful_targets(data.annotations, grid, seg, SynfulTargetSettings(40.0, 60.0))
    assert t["mask"].any() and not (t["mask"] & ~t["vectors_mask"]).any()
    types = np.asarray(data.annotations.types, dtype=object)
    pre = data.annotations.world_locations()[types == Annotations.PRE]
    pts = grid.to_world(np.argwhere(t["vectors_mask"])) + t["vectors"][:, t["vectors_mask"]].T
    # every voxel's vector ends exactly on one of the pre sites
    d = np.linalg.norm(pts[:, None, :] - pre[None], axis=2).min(axis=1)
    np.testing.assert_allclose(d, 0.0, atol=1e-3)
    norms = np.linalg.norm(t["directions"][:, t["vectors_mask"]], axis=0)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert not t["directions"][:, ~t["vectors_mask"]].any()
    # restricted to the post site's segment (the post sites are in segment 7)
    assert set(np.unique(seg[t["vectors_mask"]]).tolist()) == {7}
    with pytest.raises(DataError, match="vector_radius_nm"):
        synful_targets(data.annotations, grid, seg, SynfulTargetSettings(80.0, 40.0))


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("flips", [(True, False, False), (False, True, True), (True, True, True)])
def test_flips_and_transposes_keep_vectors_pointing_at_the_partner(
    flips: tuple[bool, bool, bool], swap: bool
) -> None:
    from synapse_toolkit.synapses.train_synful import flip_transpose, pack_targets

    data = make_cremi_data(shape=(6, 40, 40))
    grid = Grid.of(data.raw)
    t = synful_targets(data.annotations, grid, data.neuron_ids.read(), SynfulTargetSettings(40, 60))
    packed = pack_targets(t)
    vs = np.asarray(VS)

    def ends(p: np.ndarray) -> np.ndarray:
        m = p[7] > 0
        return np.argwhere(m) * vs + p[1:4][:, m].T

    before = ends(packed)
    raw2, p2 = flip_transpose(data.raw.read(), packed, flips, swap)
    after = ends(p2)
    if swap:
        after = after[:, [0, 2, 1]]
    for a, f in enumerate(flips):
        if f:
            after[:, a] = (packed.shape[1 + a] - 1) * vs[a] - after[:, a]
    key = {tuple(np.round(x, 2)) for x in before}
    assert {tuple(np.round(x, 2)) for x in after} == key
    np.testing.assert_allclose(np.linalg.norm(p2[4:7][:, p2[7] > 0], axis=0), 1.0, atol=1e-5)
    assert raw2.shape == (6, 40, 40)


def test_type_weighted_crops_centre_on_the_kept_types_post_sites(tmp_path: Path) -> None:
    """With a weight of 0 for every phantom synapse type but one, synful's synapse-centred crops
    sit on that type's post sites; without weights the centres are drawn as before."""
    pytest.importorskip("torch")
    from synapse_toolkit.io.cremi import read_cremi
    from synapse_toolkit.nn.augment import AugmentConfig
    from synapse_toolkit.phantom.em import EMPhantom
    from synapse_toolkit.phantom.params import EMPhantomParams
    from synapse_toolkit.phantom.store import site_types, write_phantom
    from synapse_toolkit.synapses.train_synful import SynfulCropSampler, _post_centres

    params = EMPhantomParams(shape=(8, 96, 96), seed=5, n_synapses=9, n_types=3,
                             polyadic_fraction=0.5)  # fmt: skip
    path = write_phantom(EMPhantom(params), tmp_path / "p.h5")
    data = read_cremi(path)
    assert data.annotations is not None and data.raw is not None
    ann, grid = data.annotations, Grid.of(data.raw)
    post = np.asarray(ann.types, dtype=object) == ann.POST
    types = site_types(path, np.asarray(ann.ids)[post])
    keep = int(types[0])
    centres, chance = _post_centres(ann, grid, path, {t: 0.0 for t in range(3) if t != keep})
    assert chance is not None and np.isclose(chance.sum(), 1.0)
    assert len(centres) == post.sum() and (chance > 0).sum() == (types == keep).sum() < len(types)
    uniform, none = _post_centres(ann, grid, path, {})
    assert none is None and np.array_equal(uniform, centres)

    raw = data.raw.read()
    packed = np.zeros((8, *raw.shape), np.float32)
    packed[(0, *centres[chance > 0].T)] = 1.0  # marks the kept type's post sites
    plain = AugmentConfig.from_table({"intensity_scale": 0.0, "intensity_shift": 0.0})
    sampler = SynfulCropSampler([(raw, packed, centres, chance)], (3, 9, 9), plain, 1.0, seed=0)
    assert min(sampler.sample()[1][0].max() for _ in range(40)) == 1.0
    # the unweighted stream: choice(n) draws what integers(n) drew before weights existed
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert [int(a.choice(7)) for _ in range(20)] == [int(b.integers(7)) for _ in range(20)]


def test_extraction_finds_a_polyadic_synapse() -> None:
    pred, seg, grid = _scene()
    table = extract_partners(pred, seg, grid, SynfulSettings())
    assert len(table) == 2
    assert table.pre_segment.tolist() == [1, 1]
    assert sorted(table.post_segment.tolist()) == [2, 3]
    assert len(set(table.synapse_id.tolist())) == 1  # one pre site, two posts
    np.testing.assert_allclose(table.pre_nm, grid.to_world(np.stack([PRE_VOX, PRE_VOX])),
                               atol=1e-3)  # fmt: skip
    posts = {tuple(p) for p in np.round(table.post_nm, 3)}
    assert posts == {tuple(grid.to_world(np.array([4, 44, 16]))[0]),
                     tuple(grid.to_world(np.array([4, 44, 48]))[0])}  # fmt: skip
    ann = table.to_annotations()
    assert len(ann.partners) == 2 and len(ann) == 3


@pytest.mark.parametrize("location", ["edt-max", "centre"])
@pytest.mark.parametrize("vector_from", ["location", "mean"])
def test_extraction_options_agree_on_a_clean_field(location: str, vector_from: str) -> None:
    pred, seg, grid = _scene()
    s = SynfulSettings(location=location, vector_from=vector_from)  # type: ignore[arg-type]
    table = extract_partners(pred, seg, grid, s)
    assert sorted(table.post_segment.tolist()) == [2, 3]
    np.testing.assert_allclose(table.pre_nm[0], grid.to_world(PRE_VOX)[0], atol=1e-2)


def test_threshold_size_and_score() -> None:
    pred, seg, grid = _scene()
    # the segment-3 blob peaks at 0.8: a threshold above it leaves one row
    assert extract_partners(pred, seg, grid, SynfulSettings(threshold=0.85)).post_segment.tolist() \
        == [2]  # fmt: skip
    assert len(extract_partners(pred, seg, grid, SynfulSettings(min_voxels=300))) == 0
    tiny = pred.copy()
    tiny[0, 6, 50, 10:12] = 0.99  # a 2-voxel component, also pointing at the pre site
    tiny[1:4, 6, 50, 10:12] = 1.0
    assert len(extract_partners(tiny, seg, grid, SynfulSettings(min_voxels=5))) == 2
    sums = extract_partners(pred, seg, grid, SynfulSettings(score="sum")).score
    maxes = extract_partners(pred, seg, grid, SynfulSettings(score="max")).score
    assert sums.max() > 10 and np.all(maxes <= 0.9 + 1e-6)
    assert len(extract_partners(pred, seg, grid, SynfulSettings(min_score=1e6))) == 0


def test_rows_in_one_segment_are_dropped_and_duplicates_merged() -> None:
    pred, seg, grid = _scene()
    # a vector that stays inside the post segment: no partner
    same = pred.copy()
    same[1:4] = 0.0
    assert len(extract_partners(same, seg, grid, SynfulSettings())) == 0
    # two components in segment 2 pointing at the same pre site: one row survives
    dup = pred.copy()
    _blob(dup, grid, (4, 56, 8), (1, 2, 2), PRE_VOX, peak=0.7)
    table = extract_partners(dup, seg, grid, SynfulSettings())
    assert sorted(table.post_segment.tolist()) == [2, 3]
    kept = extract_partners(dup, seg, grid, SynfulSettings(dedup_distance_nm=0.0))
    assert len(kept) == 3


def test_components_split_at_segment_borders() -> None:
    grid = Grid(SHAPE, VS)
    pred = np.zeros((7, *SHAPE), np.float32)
    _blob(pred, grid, (4, 44, 32), (1, 4, 6), PRE_VOX)  # straddles segments 2 | 3
    seg = _segmentation()
    assert len(extract_partners(pred, seg, grid, SynfulSettings(split_by_segment=True))) == 2
    assert len(extract_partners(pred, seg, grid, SynfulSettings(split_by_segment=False))) == 1


def test_small_split_pieces_rejoin_their_component() -> None:
    grid = Grid(SHAPE, VS)
    pred = np.zeros((7, *SHAPE), np.float32)
    _blob(pred, grid, (4, 44, 35), (1, 4, 6), PRE_VOX)  # 81 voxels in segment 2, 270 in 3
    seg = _segmentation()

    def rows(min_voxels: int, rejoin: bool) -> PartnerTable:
        s = SynfulSettings(min_voxels=min_voxels, rejoin_small_pieces=rejoin, score="sum")
        return extract_partners(pred, seg, grid, s)

    total = float(pred[0][pred[0] > 0.5].sum())
    dropped, joined = rows(100, False), rows(100, True)
    assert len(dropped) == len(joined) == 1
    assert dropped.score[0] < joined.score[0] == pytest.approx(total, rel=1e-5)
    # every piece below min_voxels: the whole component is one piece
    assert len(rows(300, False)) == 0 and len(rows(300, True)) == 1
    assert len(rows(400, True)) == 0
    # no piece below min_voxels: the same rows as without rejoining
    assert len(rows(50, True)) == len(rows(50, False)) == 2


def test_direction_head_takes_the_distance_from_the_clefts() -> None:
    pred, seg, grid = _scene()
    clefts = np.full(SHAPE, CLEFT_BACKGROUND, np.uint64)
    clefts[:, 31:33, :] = 5  # the cleft between the pre neuron and both posts
    s = SynfulSettings(head="direction", cleft_width_nm=20.0)
    table = extract_partners(pred, seg, grid, s, clefts)
    row = int(np.flatnonzero(table.post_segment == 2)[0])
    loc = grid.to_world(np.array([4, 44, 16]))[0]
    u = grid.to_world(PRE_VOX)[0] - loc
    u /= np.linalg.norm(u)
    expected = loc + (2 * (44 - 32) * 4.0 + 20.0) * u  # 12 voxels to the nearest cleft voxel
    np.testing.assert_allclose(table.pre_nm[row], expected, atol=1e-3)
    assert table.pre_segment[row] == 1
    fixed_distance = SynfulSettings(head="direction", direction_distance_nm=90.0)
    fixed = extract_partners(pred, seg, grid, fixed_distance)
    row = int(np.flatnonzero(fixed.post_segment == 2)[0])
    np.testing.assert_allclose(fixed.pre_nm[row], loc + 90.0 * u, atol=1e-3)


def test_segment_distance_and_snapping_land_in_the_neighbour() -> None:
    pred, seg, grid = _scene()
    s = SynfulSettings(head="direction", distance="segment", segment_depth_nm=40.0)
    table = extract_partners(pred, seg, grid, s)
    assert table.pre_segment.tolist() == [1, 1]
    loc = grid.to_world(np.array([4, 44, 16]))[0]
    row = int(np.flatnonzero(table.post_segment == 2)[0])
    reach = np.linalg.norm(table.pre_nm[row] - loc)
    u = grid.to_world(PRE_VOX)[0] - loc
    u /= np.linalg.norm(u)
    # the boundary is 12.5 voxels (50 nm) away in y; then 40 nm deeper (2 nm ray steps)
    assert abs(reach - (50.0 / abs(u[1]) + 40.0)) <= 4.0
    short = pred.copy()
    short[1:4] *= 0.2  # vectors too short: the pre sites fall in the post segments
    assert len(extract_partners(short, seg, grid, SynfulSettings())) == 0
    snapped = extract_partners(short, seg, grid, SynfulSettings(snap_to_segment=True))
    assert snapped.pre_segment.tolist() == [1, 1]
    assert sorted(snapped.post_segment.tolist()) == [2, 3]


def test_bad_prediction_shapes_are_one_error() -> None:
    pred, seg, grid = _scene()
    with pytest.raises(DataError, match=r"\(7, z, y, x\)"):
        extract_partners(pred[:4], seg, grid)
    with pytest.raises(DataError, match="different grids"):
        extract_partners(pred, seg[:, :32], grid)


def test_grouping_links_nearby_pre_sites_of_one_segment() -> None:
    pre = np.array([[0, 0, 0], [0, 0, 100.0], [0, 0, 220.0], [0, 0, 5000.0], [0, 0, 10.0]])
    ids = group_synapses(pre, np.array([1, 1, 1, 1, 2], np.uint64), 150.0)
    assert ids[0] == ids[1] == ids[2] and ids[3] != ids[0] and ids[4] != ids[0]


# -- training, ONNX and the stage ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two training iterations of a tiny network through the CLI, exported to ONNX."""
    pytest.importorskip("torch")
    from typer.testing import CliRunner

    from synapse_toolkit.cli.main import app
    from synapse_toolkit.io.cremi import write_cremi

    tmp = tmp_path_factory.mktemp("synful")
    data_path = write_cremi(tmp / "s.hdf", make_cremi_data(shape=(8, 64, 64)))
    cfg = tmp / "synful.toml"
    cfg.write_text(
        f'kind = "synful"\n[data]\nfiles = ["{data_path}"]\n'
        '[model]\nscale = 2\npool = "space-to-depth"\ninit = "kaiming"\npadding = "same"\n'
        "num_fmaps = 2\ndownsample_factors = [[1, 2, 2]]\n"
        "[targets]\nmask_radius_nm = 40.0\nvector_radius_nm = 60.0\n"
        f"[training]\niterations = 2\ninput_shape = [4, 32, 32]\nnum_threads = 1\nlog_every = 1\n"
        "batch_size = 2\ncheckpoint_every = 1\nkeep_checkpoints = true\n"
        f'out_dir = "{tmp / "run"}"\n'
    )
    res = CliRunner().invoke(app, ["train-synapses", "synful", str(cfg)])
    assert res.exit_code == 0, res.output
    onnx = tmp / "run" / "model.onnx"
    from synapse_toolkit.fsio import sha256_file

    return {"path": onnx, "sha256": sha256_file(onnx), "dir": tmp, "log": res.output}


def test_training_logs_three_losses_and_exports_seven_channels(tiny_model: dict[str, Any]) -> None:
    import json

    from synapse_toolkit.inference.onnx_model import OnnxModel

    rows = [json.loads(x) for x in (tiny_model["dir"] / "run" / "metrics.jsonl").open()]
    assert [r["iteration"] for r in rows] == [1, 2]
    from synapse_toolkit.nn.checkpoint import load_state

    for it in (1, 2):  # keep_checkpoints: one file per checkpoint, to choose one on validation
        assert load_state(tiny_model["dir"] / "run" / f"it{it:06d}.pt")["iteration"] == it
    assert all(np.isfinite([r["bce"], r["mse"], r["cos"]]).all() for r in rows)
    model = OnnxModel(tiny_model["path"], n_threads=1)
    assert model.kind == "synful" and model.out_channels == 7
    out = model.predict(np.random.default_rng(0).integers(0, 255, (4, 32, 32), np.uint8))
    assert out.shape == (7, 4, 32, 32)
    assert out[0].min() >= 0 and out[0].max() <= 1
    np.testing.assert_allclose(np.linalg.norm(out[4:7], axis=0), 1.0, atol=1e-3)


def test_training_continues_from_an_exported_model(tiny_model: dict[str, Any]) -> None:
    import onnx
    from onnx import numpy_helper

    from synapse_toolkit.errors import ConfigError
    from synapse_toolkit.synapses.train_synful import (
        build_network,
        init_from_model,
        load_synful_config,
    )

    cfg = load_synful_config(tiny_model["dir"] / "synful.toml")
    head = build_network(cfg)[0]
    n = init_from_model(head, str(tiny_model["path"]))
    exported = {t.name: numpy_helper.to_array(t)
                for t in onnx.load(str(tiny_model["path"])).graph.initializer}  # fmt: skip
    state = head.state_dict()
    assert n == len(state) and any(".head." in k for k in state)
    for k, v in state.items():  # the output layer included, unlike init_trunk_from
        np.testing.assert_array_equal(v.numpy(), exported[k])
    wider = cfg.model_copy(update={"model": {**cfg.model, "num_fmaps": 4}})
    with pytest.raises(ConfigError, match="training.init_from_model"):
        init_from_model(build_network(wider)[0], str(tiny_model["path"]))


def test_stage_contract_and_end_to_end(tiny_model: dict[str, Any], tmp_path: Path) -> None:
    from synapse_toolkit.api import run_stage
    from synapse_toolkit.plugin_manager import load_plugins

    registered = load_plugins().stages.get("partner-assigner", "synful")
    cls = registered.cls
    assert set(cls.inputs) == {"raw", "segmentation", "clefts", "proximity", "coarse_segmentation"}
    assert not any(cls.inputs[k].required for k in ("clefts", "proximity", "coarse_segmentation"))
    assert set(cls.outputs) == {"partners", "annotations"}
    data = make_cremi_data(shape=(8, 64, 64))
    opts = {"model_path": str(tiny_model["path"]), "sha256": tiny_model["sha256"],
            "threshold": 0.01, "min_voxels": 1, "overlap": (0, 8, 8)}  # fmt: skip
    inputs = {"raw": data.raw, "segmentation": data.neuron_ids}
    out = run_stage("partner-assigner", "synful", inputs, opts, scratch_dir=tmp_path / "a")
    table = out["partners"]
    assert isinstance(table, PartnerTable)
    assert np.all(table.pre_segment != table.post_segment)
    assert len(out["annotations"].partners) == len(table)
    # the table scores with the CREMI partner scorer (end to end, numbers not asserted)
    from synapse_toolkit.synapses.partners import evaluate_partners

    rec = evaluate_partners(table, data.annotations, data.neuron_ids)
    assert 0.0 <= rec.values["fscore"] <= 1.0
    direction = run_stage("partner-assigner", "synful",
                          {**inputs, "clefts": data.clefts}, {**opts, "head": "direction"},
                          scratch_dir=tmp_path / "b")  # fmt: skip
    assert isinstance(direction["partners"], PartnerTable)


def test_stage_combined_with_emsynconn_keeps_its_rows(
    tiny_model: dict[str, Any], tmp_path: Path
) -> None:
    from synapse_toolkit.api import run_stage
    from synapse_toolkit.synapses.targets import signed_proximity

    data = make_cremi_data(shape=(8, 64, 64))
    grid = Grid.of(data.raw)
    prox = signed_proximity(data.annotations, grid, 100.0, data.neuron_ids.read())
    proximity = Volume(prox[None], VS, data.raw.offset_nm)
    inputs = {"raw": data.raw, "segmentation": data.neuron_ids, "proximity": proximity}
    ems = run_stage("partner-assigner", "emsynconn", inputs, {}, scratch_dir=tmp_path / "e")
    opts = {"model_path": str(tiny_model["path"]), "sha256": tiny_model["sha256"],
            "overlap": (0, 8, 8), "threshold": 0.999, "combine": "emsynconn"}  # fmt: skip
    both = run_stage("partner-assigner", "synful", inputs, opts, scratch_dir=tmp_path / "s")
    pairs = set(zip(both["partners"].pre_segment.tolist(), both["partners"].post_segment.tolist(),
                    strict=True))  # fmt: skip
    for a, b in zip(ems["partners"].pre_segment, ems["partners"].post_segment, strict=True):
        assert (int(a), int(b)) in pairs
    with pytest.raises(DataError, match="needs the `proximity` input"):
        run_stage("partner-assigner", "synful", {k: inputs[k] for k in ("raw", "segmentation")},
                  opts, scratch_dir=tmp_path / "m")  # fmt: skip


def test_row_scores_are_the_pruners_scores_of_each_rows_patch(tmp_path: Path) -> None:
    import h5py

    from synapse_toolkit.datasets import model_path
    from synapse_toolkit.synapses.pruning import PrunerONNX, extract_patch, row_scores

    data = make_cremi_data(shape=(8, 64, 64))
    grid = Grid.of(data.raw)
    raw = data.raw.read()
    seg = np.repeat(np.arange(1, 4, dtype=np.uint64), [22, 21, 21])[None, None].repeat(8, 0)
    seg = np.ascontiguousarray(np.broadcast_to(seg, raw.shape))
    prox = np.random.default_rng(1).uniform(-1, 1, seg.shape).astype(np.float32)
    ids = np.arange(1, 4, dtype=np.uint64)
    pre = np.array([[120.0, 100.0, 100.0], [200.0, 60.0, 180.0]])
    post = np.array([[120.0, 140.0, 120.0], [160.0, 120.0, 200.0]])
    table = PartnerTable(pre, post, ids[[0, 1]], ids[[1, 2]], np.ones(2), np.arange(1, 3))
    pruner = PrunerONNX(model_path("synapses/pruner"), n_threads=1)
    want = pruner.scores(np.stack([
        extract_patch(raw, prox, seg, grid.to_voxel((a + b) / 2)[0], int(i), int(j),
                      pruner.patch_settings)
        for a, b, i, j in zip(pre, post, table.pre_segment, table.post_segment, strict=True)
    ]))  # fmt: skip
    # read patch by patch from a file, proximity with its channel axis, as a stage gets them
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["raw"], f["prox"], f["seg"] = raw, prox[None], seg
    with h5py.File(tmp_path / "v.h5", "r") as f:
        got = row_scores(table, f["raw"], f["prox"], f["seg"], grid, pruner)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    swapped = PartnerTable(pre, post, ids[[1, 2]], ids[[0, 1]], np.ones(2), np.arange(1, 3))
    assert not np.allclose(row_scores(swapped, raw, prox, seg, grid, pruner), want)
    assert row_scores(table.select(np.zeros(2, bool)), raw, prox, seg, grid, pruner).shape == (0,)


def test_stage_verified_adds_the_synful_rows_the_pruner_keeps(
    tiny_model: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import synapse_toolkit.synapses.pruning as pruning
    import synapse_toolkit.synapses.synful_blockwise as blockwise
    from synapse_toolkit.api import run_stage

    data = make_cremi_data(shape=(8, 64, 64))
    seg = np.repeat(np.arange(1, 4, dtype=np.uint64), [22, 21, 21])[None, None].repeat(8, 0)
    seg = np.ascontiguousarray(np.broadcast_to(seg, data.raw.spatial_shape))
    ids = np.arange(1, 4, dtype=np.uint64)
    # two synful rows far from each other (and from any emsynconn row: no proximity, none)
    pre = np.array([[40.0, 20.0, 20.0], [280.0, 230.0, 230.0]])
    post = np.array([[40.0, 40.0, 20.0], [280.0, 250.0, 230.0]])
    found = PartnerTable(pre, post, ids[[0, 1]], ids[[1, 2]], np.array([5.0, 9.0]),
                         np.array([1, 2], np.uint64))  # fmt: skip
    monkeypatch.setattr(blockwise, "synful_blockwise", lambda *a, **k: (found, {}))
    seen: dict[str, Any] = {}

    def fake_scores(table: PartnerTable, raw: Any, prox: Any, s: Any, grid: Grid,
                    pruner: Any) -> np.ndarray:  # fmt: skip
        seen["rows"], seen["scale"] = len(table), pruner.patch_settings.intensity_scale
        return np.array([0.7, 0.3])

    monkeypatch.setattr(pruning, "row_scores", fake_scores)
    proximity = Volume(np.zeros((1, *seg.shape), np.float32), VS, data.raw.offset_nm)
    segmentation = Volume(seg, VS, data.raw.offset_nm)
    inputs = {"raw": data.raw, "segmentation": segmentation, "proximity": proximity}
    opts = {"model_path": str(tiny_model["path"]), "sha256": tiny_model["sha256"],
            "overlap": (0, 8, 8), "combine": "verified", "intensity_scale": 0.5}  # fmt: skip

    def rows(keep: float) -> list[tuple[int, int]]:
        out = run_stage("partner-assigner", "synful", inputs, {**opts, "verify_keep": keep},
                        scratch_dir=tmp_path / str(keep))["partners"]  # fmt: skip
        return sorted(zip(out.pre_segment.tolist(), out.post_segment.tolist(), strict=True))

    assert rows(0.5) == [(int(ids[0]), int(ids[1]))]
    assert seen == {"rows": 2, "scale": 0.5}
    assert rows(0.2) == sorted([(int(ids[0]), int(ids[1])), (int(ids[1]), int(ids[2]))])
    assert rows(0.8) == []


def test_stage_deduplicates_by_a_coarse_segmentation(
    tiny_model: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import synapse_toolkit.synapses.synful_blockwise as blockwise
    from synapse_toolkit.api import run_stage

    data = make_cremi_data(shape=(8, 64, 64))
    # two rows from one pre site to two fine segments, 80 nm apart (what extraction found)
    pre = np.array([[160.0, 96.0, 96.0], [160.0, 96.0, 96.0]])
    post = np.array([[160.0, 160.0, 100.0], [160.0, 160.0, 180.0]])
    found = PartnerTable(pre, post, np.array([1, 1], np.uint64), np.array([2, 3], np.uint64),
                         np.array([5.0, 9.0]), np.array([1, 1], np.uint64))  # fmt: skip
    monkeypatch.setattr(blockwise, "synful_blockwise", lambda *a, **k: (found, {}))
    opts = {"model_path": str(tiny_model["path"]), "sha256": tiny_model["sha256"],
            "overlap": (0, 8, 8)}  # fmt: skip
    inputs = {"raw": data.raw, "segmentation": data.neuron_ids}
    assert len(run_stage("partner-assigner", "synful", inputs, opts,
                         scratch_dir=tmp_path / "a")["partners"]) == 2  # fmt: skip
    one = Volume(np.ones_like(data.neuron_ids.read()), VS, data.neuron_ids.offset_nm)
    out = run_stage("partner-assigner", "synful", {**inputs, "coarse_segmentation": one}, opts,
                    scratch_dir=tmp_path / "b")["partners"]  # fmt: skip
    # one synapse in the coarse segmentation: the higher-scoring row, with its own segment ids
    assert len(out) == 1 and out.score[0] == 9.0 and out.post_segment[0] == 3
    half = Volume(data.neuron_ids.read()[:, :32], VS, data.neuron_ids.offset_nm)
    with pytest.raises(DataError, match="coarse_segmentation"):
        run_stage("partner-assigner", "synful", {**inputs, "coarse_segmentation": half}, opts,
                  scratch_dir=tmp_path / "c")  # fmt: skip


def test_stage_refuses_a_model_that_is_not_synful(tmp_path: Path) -> None:
    from synapse_toolkit.api import run_stage

    data = make_cremi_data(shape=(8, 64, 64))
    with pytest.raises(DataError, match="not a synful model"):
        run_stage("partner-assigner", "synful",
                  {"raw": data.raw, "segmentation": data.neuron_ids},
                  {"model": "synapses/polarity"}, scratch_dir=tmp_path)  # fmt: skip


def test_segmentation_on_another_grid_is_refused(tmp_path: Path) -> None:
    from synapse_toolkit.api import run_stage
    from synapse_toolkit.errors import SyntkError

    data = make_cremi_data(shape=(8, 64, 64))
    seg = Volume(data.neuron_ids.read()[:, :32], VS, data.neuron_ids.offset_nm)
    with pytest.raises(SyntkError):
        run_stage("partner-assigner", "synful", {"raw": data.raw, "segmentation": seg},
                  {"model": "synapses/polarity"}, scratch_dir=tmp_path)  # fmt: skip


def test_stage_tta_is_on_for_the_main_job_and_equals_the_library_prediction(
    tiny_model: dict[str, Any], tmp_path: Path
) -> None:
    from syntk_synapses.synful import uses_tta

    from synapse_toolkit.inference.onnx_model import OnnxModel
    from synapse_toolkit.plugin_manager import load_plugins
    from synapse_toolkit.synapses.synful import tta_arguments
    from synapse_toolkit.synapses.synful_blockwise import head_channels, predict_synful

    cls = load_plugins().stages.get("partner-assigner", "synful").cls
    assert uses_tta(cls.Options())  # the vector head alone: the main job
    assert not uses_tta(cls.Options(combine="verified"))
    assert not uses_tta(cls.Options(head="direction"))
    assert uses_tta(cls.Options(head="direction", tta=True))
    raw = make_cremi_data(shape=(8, 64, 64)).raw.read()
    model = OnnxModel(tiny_model["path"])
    keep = head_channels("vector")
    # the stage's stored prediction is the library's (what the benchmarks score) ...
    tta = np.asarray(predict_synful(model, raw, tmp_path, overlap=(0, 8, 8), tta=True))
    want = model.predict(raw, overlap=(0, 8, 8), **tta_arguments())[keep]
    np.testing.assert_allclose(tta, want, atol=1e-6)
    # ... and the same work folder without TTA is predicted anew, not reused
    plain = np.asarray(predict_synful(model, raw, tmp_path, overlap=(0, 8, 8), tta=False))
    np.testing.assert_allclose(plain, model.predict(raw, overlap=(0, 8, 8))[keep], atol=1e-6)
    assert not np.allclose(plain, tta, atol=1e-4)


def test_unset_stage_options_take_the_tuned_values_of_their_head() -> None:
    import dataclasses

    from synapse_toolkit.plugin_manager import load_plugins
    from synapse_toolkit.synapses.synful import TUNED_DEFAULTS

    cls = load_plugins().stages.get("partner-assigner", "synful").cls
    opts = cls.Options()
    fields = {f.name for f in dataclasses.fields(SynfulSettings)}
    for tuned in TUNED_DEFAULTS.values():
        assert set(tuned) <= fields
        assert all(getattr(opts, k) is None for k in tuned)  # unset: the head's tuned value


def test_focal_mask_loss_moves_weight_to_badly_classified_voxels(
    tiny_model: dict[str, Any],
) -> None:
    import torch

    from synapse_toolkit.synapses.train_synful import build_network, load_synful_config, synful_loss

    cfg = load_synful_config(tiny_model["dir"] / "synful.toml")
    head = build_network(cfg)[0]
    torch.manual_seed(0)
    x = torch.rand(1, 1, *cfg.training.input_shape)
    with torch.no_grad():
        logit = head.parts(x)[0]
    t = torch.zeros(1, 8, *cfg.training.input_shape)
    good = (logit > logit.median()).float()  # targets the model gets right for most voxels
    t[:, 0:1] = good
    plain = synful_loss(head, x, t, 100.0, 1.0, 1.0)[1]["bce"]
    assert synful_loss(head, x, t, 100.0, 1.0, 1.0, focal_gamma=0.0)[1]["bce"] == plain
    # the total weight is kept, so the focal term is larger exactly when it weighs the voxels
    # with the larger BCE (the badly classified ones) more
    assert synful_loss(head, x, t, 100.0, 1.0, 1.0, focal_gamma=2.0)[1]["bce"] > plain
    t[:, 0:1] = 1 - good  # now most voxels are wrong; focal still favours the worst
    worse = synful_loss(head, x, t, 100.0, 1.0, 1.0)[1]["bce"]
    assert synful_loss(head, x, t, 100.0, 1.0, 1.0, focal_gamma=2.0)[1]["bce"] > worse


def test_an_interrupted_synful_run_resumes_exactly(
    tiny_model: dict[str, Any], tmp_path: Path
) -> None:
    """``--resume`` continues from latest.pt: 2 + 2 iterations give the weights of 4."""
    import torch
    from typer.testing import CliRunner

    from synapse_toolkit.cli.main import app
    from synapse_toolkit.nn.checkpoint import load_state

    text = (tiny_model["dir"] / "synful.toml").read_text()
    finals = []
    plans = {
        "straight": [["--iterations", "4"]],
        "stopped": [["--iterations", "2"], ["--iterations", "4", "--resume"]],
    }
    for name, runs in plans.items():
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(text.replace(str(tiny_model["dir"] / "run"), str(tmp_path / name)))
        for extra in runs:
            res = CliRunner().invoke(app, ["train-synapses", "synful", str(cfg), *extra])
            assert res.exit_code == 0, res.output
        finals.append(load_state(tmp_path / name / "final.pt")["state_dict"])
    assert "resuming from" in res.output
    for key, value in finals[0].items():
        torch.testing.assert_close(value, finals[1][key], rtol=0, atol=0, msg=key)
