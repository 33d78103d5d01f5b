"""`syntk evaluate fib`: the shipped FIB model at the threshold stored in its metadata, beside its
best-on-test row and the classical baselines; bad input gives one error line. Small crops of the
bundled gala FIB-SEM test volume (registry group `gala-fib`, BSD-3-style licence)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from synapse_toolkit.cli.main import app
from synapse_toolkit.datasets import resolve_dataset
from synapse_toolkit.errors import SyntkError
from synapse_toolkit.evaluation import fib

CROP = "0:24,0:48,0:48"  # one 72^3 model tile after padding


def _run(args: list[str]) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, args)
    return res.exit_code, res.stdout, res.stderr


def _model_agglomeration() -> dict:
    from synapse_toolkit.datasets import model_path
    from synapse_toolkit.onnx_runtime import create_session, model_metadata

    return model_metadata(create_session(model_path(fib.DEFAULT_MODEL)))["agglomeration"]


def test_shipped_model_carries_a_threshold_chosen_on_validation_data() -> None:
    agg = _model_agglomeration()
    assert agg["scoring"] in fib.SCORINGS and 0 < agg["threshold"] < 1
    assert "validation" in agg["chosen_on"] and "test" not in agg["chosen_on"]


@pytest.fixture(scope="module")
def crop_report() -> dict:
    code, out, err = _run(["evaluate", "fib", "--crop", CROP, "--no-baselines", "--json"])
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def test_evaluate_fib_reports_the_metadata_threshold_on_a_crop(crop_report) -> None:
    rep = crop_report
    agg, m = _model_agglomeration(), rep["model"]
    assert m["agglomeration"]["threshold"] == agg["threshold"]
    main = m["at_model_threshold"]
    assert (main["scoring"], main["threshold"]) == (agg["scoring"], agg["threshold"])
    assert rep["shape"] == [24, 48, 48] and rep["border_threshold_nm"] == 25.0
    # the best-on-test row comes from the same sweep, so it can only be as good or better
    assert m["best_on_test"]["cremi_score"] <= main["cremi_score"] + 1e-9
    # a working model on real FIB-SEM (the default merges one pair of cells on this small crop
    # at its stored setting: 0.62); broken wiring: > 1
    assert main["cremi_score"] < 0.8
    assert rep["baselines"] == {}


def test_evaluate_fib_agglomerates_from_the_models_stored_fragments(crop_report) -> None:
    """As the waterz stage does with fragments_from = "auto": the stored fragments, not waterz's
    own watershed (the two give different segmentations on this crop)."""
    agg = _model_agglomeration()
    assert agg["fragments"]["method"] == "distance_2d"
    vol = fib.gala_volume("test")
    crop = tuple(slice(int(a), int(b)) for a, b in (p.split(":") for p in CROP.split(",")))
    m = fib.model_affinities(fib.DEFAULT_MODEL, vol.raw[crop], vol.voxel_size_nm, n_threads=1)
    score = fib.make_scorer(vol.voxel_size_nm, 25.0)
    args = (m.affinities, vol.truth[crop], score, agg["scoring"], agg["threshold"])
    seeded, own = fib.at(*args, fragments=agg["fragments"]), fib.at(*args)
    reported = crop_report["model"]["at_model_threshold"]
    assert reported["cremi_score"] == pytest.approx(seeded["cremi_score"], abs=1e-9)
    assert own["cremi_score"] != pytest.approx(seeded["cremi_score"], abs=1e-6)


def test_evaluate_fib_table_labels_the_optimistic_rows(crop_report, capsys) -> None:
    from synapse_toolkit.cli.evaluate import print_report

    print_report(crop_report)
    out = capsys.readouterr().out
    agg = crop_report["model"]["agglomeration"]
    assert "model metadata (no test labels)" in out
    assert f"{agg['scoring']} @ {agg['threshold']:.2f}" in out
    assert "best on test (optimistic)" in out and "lower is better" in out


def _other_volume(tmp_path: Path) -> Path:
    """A crop of the gala test volume under other dataset names, as 16-bit counts."""
    with h5py.File(resolve_dataset("gala-fib/test-image")) as f:
        raw = f["stack"][:24, :48, :96]
    with h5py.File(resolve_dataset("gala-fib/test-gt")) as f:
        gt = f["stack"][:24, :48, :96]
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["em/raw"] = raw.astype(np.uint16) * 100 + 500
        f["em/labels"] = gt
        f["sel/raw"] = f["em/raw"][:, :, 48:]  # for selection: beside the evaluated crop
        f["sel/labels"] = gt[:, :, 48:]
    return path


def test_your_volume_baselines_chosen_on_your_labels_are_marked_optimistic(tmp_path) -> None:
    path = _other_volume(tmp_path)
    args = ["evaluate", "fib", "--raw", f"{path}:em/raw", "--truth", f"{path}:em/labels",
            "--voxel-size", "10", "10", "10", "--crop", "0:24,0:48,0:48", "--json"]  # fmt: skip
    code, out, err = _run(args)
    assert code == 0, err
    rep = json.loads(out)
    assert set(rep["baselines"]) == {"raw intensity"}  # no boundary map given
    raw_b = rep["baselines"]["raw intensity"]
    assert raw_b["optimistic"] and raw_b["held_out"] == raw_b["best_on_test"]
    assert rep["model"]["at_model_threshold"]["cremi_score"] < 0.8  # 16-bit input is matched
    # with selection data (x in [48, 96), beside the evaluated crop) the raw baseline is held out
    sel = ["--select-raw", f"{path}:sel/raw", "--select-truth", f"{path}:sel/labels"]
    code, out, err = _run([*args, *sel])
    assert code == 0, err
    raw_b = json.loads(out)["baselines"]["raw intensity"]
    assert not raw_b["optimistic"] and raw_b["chosen_on"] == f"{path}:sel/raw"
    assert raw_b["best_on_test"]["cremi_score"] <= raw_b["held_out"]["cremi_score"] + 1e-9


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--raw", "{d}/missing.h5:raw", "--truth", "{p}:em/labels", "--voxel-size", "10", "10",
          "10"], "missing.h5: file not found"),
        (["--raw", "{p}:em/nothing", "--truth", "{p}:em/labels", "--voxel-size", "10", "10",
          "10"], "no dataset 'em/nothing'"),
        (["--raw", "{p}:em/raw", "--truth", "{p}:em/labels"], "--raw needs --voxel-size"),
        (["--raw", "{p}:em/raw", "--voxel-size", "10", "10", "10"], "--raw needs --truth"),
        (["--crop", "0:24,0:48"], "--crop must be z0:z1,y0:y1,x0:x1"),
    ],
)  # fmt: skip
def test_bad_input_gives_one_error_line(tmp_path, args, message) -> None:
    path = _other_volume(tmp_path)
    filled = [a.format(d=tmp_path, p=path) for a in args]
    code, out, err = _run(["evaluate", "fib", *filled])
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_fib_select_write_needs_a_file() -> None:
    code, _, err = _run(["evaluate", "fib-select", "--write"])
    assert code == 1 and "--write needs --model PATH.onnx" in err


def test_choose_agglomeration_takes_the_best_mean_over_tta_settings(monkeypatch) -> None:
    """Selection logic on stand-in affinities (truth edges blurred, noisier without TTA)."""
    from scipy import ndimage

    vol = fib.gala_volume("train").crop(((0, 16), (0, 40), (150, 190)), "validation piece")
    same = fib.edge_min((vol.truth != fib.truth_with_ignore(np.zeros(1, np.int32))[0]) * 1.0)

    def fake(model, raw, voxel_size_nm, *, tta=False, **kw):  # type: ignore[no-untyped-def]
        noise = np.random.default_rng(int(tta)).normal(0, 0.2 if tta else 0.4, same.shape)
        affs = np.clip(ndimage.gaussian_filter(same, (0, 1, 1, 1)) + noise, 0, 1)
        return fib.ModelAffinities(affs.astype(np.float32), None, {}, 0.0)

    monkeypatch.setattr(fib, "model_affinities", fake)
    choice = fib.choose_agglomeration("stand-in", vol, tta=(False, True))
    mean: dict[tuple[str, float], list[float]] = {}
    for rows in choice["sweeps"].values():
        for r in rows:
            mean.setdefault((r["scoring"], r["threshold"]), []).append(r["cremi_score"])
    assert all(len(v) == 2 for v in mean.values()) and len(mean) == 3 * len(fib.THRESHOLDS)
    best = min(float(np.mean(v)) for v in mean.values())
    assert float(np.mean(mean[(choice["scoring"], choice["threshold"])])) == best
    assert set(choice["selection_scores"]) == {"tta=false", "tta=true"}
    assert "validation piece" in choice["chosen_on"] and "no border mask" in choice["chosen_on"]


def test_choose_agglomeration_over_copies_and_fragments_takes_the_best_mean(monkeypatch) -> None:
    """Copies x TTA x (own or seeded fragments): the lowest mean over every volume wins, and a
    stored setting's mean is read back from the same sweeps."""
    from scipy import ndimage

    vol = fib.gala_volume("train").crop(((0, 12), (0, 40), (150, 190)), "validation piece")
    copies = fib.blurred_copies(vol, ["unchanged", "blur sigma 1"])
    assert [c.name for c in copies] == ["unchanged", "blur sigma 1"]
    same = fib.edge_min((vol.truth != fib.truth_with_ignore(np.zeros(1, np.int32))[0]) * 1.0)

    def fake(model, raw, voxel_size_nm, *, tta=False, **kw):  # type: ignore[no-untyped-def]
        seed = int(tta) + 2 * int(raw is vol.raw)
        noise = np.random.default_rng(seed).normal(0, 0.3, same.shape)
        affs = np.clip(ndimage.gaussian_filter(same, (0, 1, 1, 1)) + noise, 0, 1)
        return fib.ModelAffinities(affs.astype(np.float32), None, {}, 0.0)

    monkeypatch.setattr(fib, "model_affinities", fake)
    seeded = {"method": "distance_2d", "boundary_threshold": 0.5, "dt_sigma": 1.0,
              "min_distance": 3}  # fmt: skip
    choice = fib.choose_agglomeration(
        "stand-in",
        copies,
        fragment_settings=[{"method": "affinities"}, seeded],
        copies_of="validation piece",
    )
    names = {"unchanged, tta=false", "unchanged, tta=true", "blur sigma 1, tta=false",
             "blur sigma 1, tta=true"}  # fmt: skip
    assert set(choice["sweeps"]) == names == set(choice["selection_scores"])
    mean: dict[tuple[str, str, float], list[float]] = {}
    for rows in choice["sweeps"].values():
        for r in rows:
            key = (r["fragments"]["method"], r["scoring"], r["threshold"])
            mean.setdefault(key, []).append(r["cremi_score"])
    assert len(mean) == 2 * 3 * len(fib.THRESHOLDS) and all(len(v) == 4 for v in mean.values())
    best = min(float(np.mean(v)) for v in mean.values())
    method = choice.get("fragments", {"method": "affinities"})["method"]
    assert choice.get("fragments", seeded) == seeded
    chosen = mean[(method, choice["scoring"], choice["threshold"])]
    assert float(np.mean(chosen)) == best
    assert choice["selection_mean"] == round(best, 4)
    own = choice["own_fragments_best"]
    own_means = [float(np.mean(v)) for k, v in mean.items() if k[0] == "affinities"]
    assert own["selection_mean"] == round(min(own_means), 4)
    assert fib.setting_mean(choice, choice) == best
    assert fib.setting_mean(choice, {"scoring": "mean", "threshold": 0.33}) is None
    assert choice["chosen_on"].startswith(
        "validation piece and perturbed copies of it (blur sigma 1)"
    )
    with pytest.raises(SyntkError, match="unknown perturbed copies"):
        fib.blurred_copies(vol, ["blur sigma 9"])


def test_fib_select_copies_chooses_on_the_crop_and_two_copies(monkeypatch) -> None:
    """`syntk evaluate fib-select --copies --json`: the validation crop and the two selection
    copies, each with TTA off and on, and the stored setting's mean in the same sweep."""
    from scipy import ndimage

    def fake(model, raw, voxel_size_nm, *, tta=False, **kw):  # type: ignore[no-untyped-def]
        edges = np.stack([ndimage.sobel(raw.astype(np.float32), axis=a) for a in range(3)])
        affs = 1.0 - np.clip(np.abs(edges) / (np.abs(edges).max() + 1e-6) * 3, 0, 1)
        return fib.ModelAffinities(affs.astype(np.float32), None, {}, 0.0)

    monkeypatch.setattr(fib, "model_affinities", fake)
    code, out, err = _run(["evaluate", "fib-select", "--copies", "--json"])
    assert code == 0, err
    choice = json.loads(out)
    names = {f"{c}, tta={t}" for c in fib.SELECTION_COPIES for t in ("false", "true")}
    assert set(choice["selection_scores"]) == names == set(choice["sweeps"])
    assert choice["chosen_on"].startswith(fib.gala_validation_crop().name + " and perturbed copies")
    stored = _model_agglomeration()
    assert ("previous_setting_mean" in choice) == ("fragments" not in stored)
    assert "written" not in choice


def test_update_metadata_keeps_the_weights_and_rewrites_the_sidecar(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from synapse_toolkit.fsio import sha256_file
    from synapse_toolkit.nn.export import update_metadata
    from synapse_toolkit.onnx_runtime import create_session, model_metadata

    w = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 4), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    entry = model.metadata_props.add()
    entry.key, entry.value = "input_shape", json.dumps([4])
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    info = update_metadata(path, {"agglomeration": {"scoring": "mean", "threshold": 0.5}})
    assert info["sha256"] == sha256_file(path)
    assert (tmp_path / "m.sha256").read_text() == f"{info['sha256']}  m.onnx\n"
    after = onnx.load(str(path))
    assert after.graph.SerializeToString() == model.graph.SerializeToString()
    meta = model_metadata(create_session(path))
    assert meta == {"input_shape": [4], "agglomeration": {"scoring": "mean", "threshold": 0.5}}
    with pytest.raises(Exception, match="model not found"):
        update_metadata(tmp_path / "none.onnx", {"a": 1})


def test_the_former_benchmark_command_still_runs(tmp_path: Path) -> None:
    """`python benchmarks/eval_fib.py --raw ... --truth ... --voxel-size 10 10 10` (the command an
    issue quotes for checking a held-out volume) runs `syntk evaluate fib` and writes its JSON;
    a wrong dataset is one error line and a non-zero exit."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    vol = _other_volume(tmp_path)
    script = str(root / "benchmarks" / "eval_fib.py")
    common = ["--truth", f"{vol}:em/labels", "--voxel-size", "10", "10", "10", "--model-only"]
    out = tmp_path / "res.json"
    cmd = [sys.executable, script, "--raw", f"{vol}:em/raw", *common, "--json", str(out)]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    res = json.loads(out.read_text())
    assert res["model"]["model"] == fib.DEFAULT_MODEL
    assert res["shape"] == [24, 48, 96]
    bad = subprocess.run([sys.executable, script, "--raw", f"{vol}:nope", *common],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode != 0 and "nope" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_zoomed_copies_keep_the_ignore_label_and_score_a_perfect_segmentation_perfectly() -> None:
    from synapse_toolkit.cremi_ids import NEURON_IGNORE

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(6, 10, 12)).astype(np.uint64)
    vol = fib.make_volume(np.full(labels.shape, 100, np.uint8), labels, (10, 10, 10), name="v")
    zoomed = {name: v for name, v in fib.perturbations(vol) if "voxels" in name}
    assert set(zoomed) == {"8 nm voxels", "12.5 nm voxels"}
    for v in zoomed.values():
        assert v.truth.shape == v.raw.shape
        assert set(np.unique(v.truth)) == set(np.unique(vol.truth))  # NEURON_IGNORE kept
        assert NEURON_IGNORE in v.truth
        perfect = np.where(v.truth == NEURON_IGNORE, 0, v.truth)
        score = fib.make_scorer(v.voxel_size_nm, 0.0)(perfect, v.truth)
        assert score["cremi_score"] == pytest.approx(0.0, abs=1e-9)
    assert zoomed["8 nm voxels"].voxel_size_nm == pytest.approx((8.0, 8.0, 8.0))
    larger = fib.zoomed(vol, 1.5, "x1.5", same_voxel_size=True)  # the stand-in's --zoom
    assert larger.raw.shape == (9, 15, 18) and larger.voxel_size_nm == vol.voxel_size_nm
    assert set(np.unique(larger.truth)) == set(np.unique(vol.truth))


def test_robustness_rows_agglomerate_from_the_models_stored_fragments(monkeypatch) -> None:
    """Each model row of the robustness table at the stored setting is the row `syntk evaluate
    fib` gives that copy: the stored fragments, not waterz's own."""
    stored = {"scoring": "mean", "threshold": 0.5,
              "fragments": {"method": "distance_2d", "boundary_threshold": 0.3}}  # fmt: skip
    seen: list[object] = []

    def fake_affinities(model, raw, voxel_size_nm, **kw):
        return fib.ModelAffinities(np.full((3, *raw.shape), 0.9, np.float32), stored, {}, 0.0)

    def fake_sweep(affs, truth, score, scorings=fib.SCORINGS, thresholds=fib.THRESHOLDS,
                   fragments=None):  # fmt: skip
        seen.append(fragments)
        return [{"scoring": "mean", "threshold": 0.5, "cremi_score": 0.1, "voi": 0.2}]

    monkeypatch.setattr(fib, "model_affinities", fake_affinities)
    monkeypatch.setattr(fib, "sweep", fake_sweep)
    labels = np.ones((4, 8, 8), np.uint64)
    vol = fib.make_volume(np.full(labels.shape, 100, np.uint8), labels, (10, 10, 10), name="v")
    rows = fib.robustness(vol, raw_setting=None)
    assert len(rows) == 12 and all(r["matched"] == 0.1 for r in rows)
    model_sweeps = [f for f in seen if f is not None]
    assert len(model_sweeps) == 24 and all(f == stored["fragments"] for f in model_sweeps)


def test_darkened_copies_change_only_the_chosen_objects() -> None:
    """`fib.darkened` (the stand-in's --darken): the seeded share of objects moves to the grey
    level with half its texture, boundary voxels and the other objects keep their grey values,
    and the labels are untouched."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 11, size=(4, 16, 16)).astype(np.uint64)  # 0: boundary (ignored)
    raw = rng.integers(150, 220, size=labels.shape).astype(np.uint8)
    vol = fib.make_volume(raw, labels, (10, 10, 10), name="v")
    dark = fib.darkened(vol, 0.3, 60.0, "dark")
    changed = dark.raw != vol.raw
    chosen = np.unique(labels[changed])
    assert len(chosen) == 3 and 0 not in chosen  # round(0.3 x 10) objects, never the boundary
    inside = np.isin(labels, chosen)
    assert not changed[~inside].any()
    assert abs(float(dark.raw[inside].mean()) - 60.0) < 1.0
    assert dark.raw[inside].std() == pytest.approx(vol.raw[inside].std() * 0.5, rel=0.05)
    assert np.array_equal(dark.truth, vol.truth)
    assert dark.notes["darkened"]["objects"] == 3
    assert np.array_equal(fib.darkened(vol, 0.3, 60.0, "again").raw, dark.raw)  # seeded
    with pytest.raises(SyntkError, match="fraction"):
        fib.darkened(vol, 0.0, 60.0, "none")
