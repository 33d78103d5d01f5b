"""`syntk score` commands and the scorer plugin stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from synapse_toolkit.cli.main import app
from synapse_toolkit.data import Annotations, ClusterAssignments, Regions, Volume
from synapse_toolkit.plugin_manager import load_plugins
from synapse_toolkit.stages import StageContext

DATA = Path(__file__).parent / "data" / "cremi-reference"
NF = Path(__file__).parent / "data" / "neurofinder-reference"
RESULTS = json.loads((DATA / "results.json").read_text())
N02 = (
    DATA / "neuron_ids" / "N02_merge_two.truth.hdf",
    DATA / "neuron_ids" / "N02_merge_two.test.hdf",
)
C03 = (DATA / "clefts" / "C03_false_positive_blobs.truth.hdf",
       DATA / "clefts" / "C03_false_positive_blobs.test.hdf")  # fmt: skip
P07 = (DATA / "synaptic_partners" / "P07_polyadic_duplicates_misses.truth.hdf",
       DATA / "synaptic_partners" / "P07_polyadic_duplicates_misses.test.hdf")  # fmt: skip
runner = CliRunner()


def _json(args: list[str]) -> dict:
    res = runner.invoke(app, ["score", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["values"]


def test_cremi_commands_reproduce_reference() -> None:
    want = RESULTS["neuron_ids"]["N02_merge_two"]["border_25nm"]
    got = _json(["cremi-neurons", *map(str, N02), "--border-threshold-nm", "25", "--block-z", "3"])
    assert got["voi_merge"] == pytest.approx(want["voi_merge"], rel=1e-9)
    assert got["cremi_score"] == pytest.approx(want["cremi_score"], rel=1e-9)
    c = _json(["cremi-clefts", *map(str, C03)])
    assert c["false_positives"] == 130 and c["fp_mean"] == pytest.approx(183.44031321323615)
    p = _json(["cremi-partners", *map(str, P07)])
    assert (p["tp"], p["fp"], p["fn"]) == (6, 3, 4)
    o = _json(["synapse-overlap", *map(str, C03), "--threshold", "0.1"])
    assert o["n_truth"] == 1 and o["recall"] == 1.0


def test_neurofinder_command_and_table_output() -> None:
    spec = json.loads((NF / "expected.json").read_text())["expected"]
    got = _json(["neurofinder", str(NF / "a.json"), str(NF / "b.json")])
    for k, v in spec.items():
        assert got[k] == pytest.approx(v)
    res = runner.invoke(app, ["score", "neurofinder", str(NF / "a.json"), str(NF / "b.json")])
    assert res.exit_code == 0 and "combined" in res.stdout


def test_errors_name_the_file(tmp_path: Path) -> None:
    res = runner.invoke(app, ["score", "cremi-neurons", str(tmp_path / "no.hdf"), str(N02[1])])
    assert res.exit_code == 1 and "no.hdf" in res.stderr
    res = runner.invoke(app, ["score", "cremi-neurons", *map(str, C03)])
    assert res.exit_code == 1 and "neuron_ids" in res.stderr


def test_batch_manifest_reports_bad_pair_and_scores_the_rest(tmp_path: Path) -> None:
    for f in (*N02, *C03):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "broken.hdf").write_text("not hdf5")
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "name,metric,truth,pred\n"
        f"n02,cremi-neurons,{N02[0].name},{N02[1].name}\n"
        f"bad,cremi-neurons,{N02[0].name},broken.hdf\n"
        f"c03,cremi-clefts,{C03[0].name},{C03[1].name}\n"
        f"nf,neurofinder,{NF / 'a.json'},{NF / 'b.json'}\n"
    )
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    res = runner.invoke(app, ["score", "batch", "--manifest", str(manifest), "--json",
                              str(out_json), "--csv", str(out_csv)])  # fmt: skip
    assert res.exit_code == 1
    assert "broken.hdf" in res.stderr and "1 of 4 pairs failed" in res.stderr
    records = {r["name"]: r for r in json.loads(out_json.read_text())}
    assert records["bad"]["status"] == "error"
    assert records["c03"]["values"]["false_positives"] == 130
    want = RESULTS["neuron_ids"]["N02_merge_two"]["border_25nm"]["voi_merge"]  # the default
    assert records["n02"]["values"]["voi_merge"] == pytest.approx(want, rel=1e-9)
    rows = out_csv.read_text().splitlines()
    assert rows[0].startswith("name,metric,truth,pred,status,error") and len(rows) == 5


def test_batch_globs_all_ok(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "p").mkdir()
    for i in range(2):
        shutil.copy(N02[0], tmp_path / "t" / f"s{i}.hdf")
        shutil.copy(N02[1 - i], tmp_path / "p" / f"s{i}.hdf")
    res = runner.invoke(app, ["score", "batch", "--metric", "cremi-neurons",
                              "--truth-glob", str(tmp_path / "t" / "*.hdf"),
                              "--pred-glob", str(tmp_path / "p" / "*.hdf"),
                              "--json", str(tmp_path / "o.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    recs = json.loads((tmp_path / "o.json").read_text())
    assert [r["values"]["voi_merge"] > 0 for r in recs] == [True, False]
    bad = runner.invoke(app, ["score", "batch", "--truth-glob", "x*", "--pred-glob", "y*"])
    assert bad.exit_code == 1 and "--metric" in bad.stderr


# -- plugin stages -------------------------------------------------------------------------------


def _stage(name: str, tmp_path: Path, **options):
    reg = load_plugins().stages.get("scorer", name)
    ctx = StageContext(stage_name=f"score-{name}", scratch_dir=tmp_path)
    return reg.cls(reg.cls.Options(**options), ctx)


def test_plugin_registers_all_scorers() -> None:
    status = load_plugins().status("scorers")
    assert status is not None and status.status == "ok"
    assert {s.split(":")[1] for s in status.stages} == {
        "cremi-neurons", "cremi-clefts", "cremi-partners", "synapse-overlap", "neurofinder",
        "clustering",
    }  # fmt: skip


def test_scorer_stages_emit_score_records(tmp_path: Path) -> None:
    d = np.load(DATA / "neuron_ids" / "N02_merge_two.npz")
    vs = tuple(d["resolution"])
    out = _stage("cremi-neurons", tmp_path, border_threshold_nm=25).run(
        {"truth": Volume(d["truth"], vs), "prediction": Volume(d["test"], vs)}
    )["scores"]
    want = RESULTS["neuron_ids"]["N02_merge_two"]["border_25nm"]
    assert out.metric == "cremi-neurons"
    assert out.values["adapted_rand"] == pytest.approx(want["adapted_rand"], rel=1e-9)

    c = np.load(DATA / "clefts" / "C05_z_shift.npz")
    cin = {"truth": Volume(c["truth"], vs), "prediction": Volume(c["test"], vs)}
    rec = _stage("cremi-clefts", tmp_path).run(cin)["scores"]
    assert rec.values["false_positives"] == 42

    p = np.load(DATA / "synaptic_partners" / "P05_wrong_partner.npz")

    def ann(k: str) -> Annotations:
        return Annotations(p[f"{k}_ids"], tuple(map(str, p[f"{k}_types"])), p[f"{k}_locations"],
                           p[f"{k}_partners"], tuple(p[f"{k}_offset"]))  # fmt: skip

    rec = _stage("cremi-partners", tmp_path).run({
        "prediction": ann("test"), "truth": ann("truth"),
        "truth_neuron_ids": Volume(p["truth_neuron_ids"], vs)})["scores"]  # fmt: skip
    assert rec.values["fscore"] == pytest.approx(0.75) and len(rec.details["matches"]) == 6

    same = {"truth": Volume(d["truth"], vs), "prediction": Volume(d["truth"], vs)}
    rec = _stage("synapse-overlap", tmp_path).run(same)["scores"]
    assert rec.values["f1"] == 1.0

    nf = Regions.from_neurofinder(json.loads((NF / "a.json").read_text()))
    rec = _stage("neurofinder", tmp_path).run({"truth": nf, "prediction": nf})["scores"]
    assert rec.values["combined"] == 1.0

    t = ClusterAssignments(np.arange(6), np.array([0, 0, 1, 1, 2, 2]))
    q = ClusterAssignments(np.arange(5, -1, -1), np.array([7, 7, 8, 8, 9, 9]))
    rec = _stage("clustering", tmp_path).run({"truth": t, "prediction": q})["scores"]
    assert rec.values["ari"] == 1.0 and rec.details["n_common"] == 6


def test_scorer_stage_rejects_wrong_inputs(tmp_path: Path) -> None:
    from synapse_toolkit.errors import DataError

    with pytest.raises(DataError, match="score-cremi-neurons"):
        _stage("cremi-neurons", tmp_path).run({"truth": None, "prediction": None})
    with pytest.raises(DataError, match="regions"):
        _stage("neurofinder", tmp_path).run({"truth": 1, "prediction": 2})


def test_batch_input_errors(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text(f"truth,pred\n{N02[0]},{N02[1]}\n")
    res = runner.invoke(app, ["score", "batch", "--manifest", str(m)])
    assert res.exit_code == 1 and "metric" in res.stderr
    res = runner.invoke(app, ["score", "batch", "--manifest", str(m), "--metric", "nope"])
    assert res.exit_code == 1 and "no scorer plugin 'nope' (available: " in res.stderr
    m.write_text("a,b\n1,2\n")
    res = runner.invoke(app, ["score", "batch", "--manifest", str(m)])
    assert res.exit_code == 1 and "truth,pred" in res.stderr
    res = runner.invoke(app, ["score", "batch"])
    assert res.exit_code == 1 and "--manifest" in res.stderr
    res = runner.invoke(app, ["score", "cremi-partners", *map(str, P07), "--rounding", "up"])
    assert res.exit_code == 1 and "options.rounding: Input should be 'half_away'" in res.stderr


# -- one path: the CLI runs the registered scorer stages -----------------------------------------


def test_score_lists_and_runs_a_third_party_scorer(example_plugin_on_path: dict[str, str]) -> None:
    listed = runner.invoke(app, ["score", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["segment-count"]["plugin"] == "example-membrane"
    assert "cremi-neurons" in rows
    got = _json(["segment-count", *map(str, N02)])
    assert got["n_prediction"] < got["n_truth"] and got["ratio"] == pytest.approx(
        got["n_prediction"] / got["n_truth"]
    )


def test_score_cli_equals_the_pipeline_scorer(tmp_path: Path) -> None:
    """Same files, same defaults: `syntk score cremi-neurons` and a pipeline's scorer agree."""
    truth, pred = N02
    cfg = tmp_path / "p.toml"
    cfg.write_text(f"""
[input]
path = "{truth}"
[output]
dir = "{tmp_path / "run"}"
[stages.truth]
kind = "loader"
plugin = "cremi-hdf5"
[stages.pred]
kind = "loader"
plugin = "cremi-hdf5"
options = {{ path = "{pred}" }}
[stages.score]
kind = "scorer"
plugin = "cremi-neurons"
inputs = {{ prediction = "pred.neuron_ids", truth = "truth.neuron_ids" }}
""")
    res = runner.invoke(app, ["pipeline", "run", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    piped = json.loads(res.stdout)["scores"]["score.scores"]["values"]
    cli = _json(["cremi-neurons", str(truth), str(pred)])
    assert cli == piped
    want = RESULTS["neuron_ids"]["N02_merge_two"]["border_25nm"]  # the one documented default
    assert cli["cremi_score"] == pytest.approx(want["cremi_score"], rel=1e-9)


def test_score_prints_which_direction_is_better() -> None:
    res = runner.invoke(app, ["score", "cremi-neurons", *map(str, N02)])
    assert res.exit_code == 0
    assert "cremi-neurons: lower is better for" in res.stdout
    assert "n_voxels" in res.stdout and "80000" in res.stdout and "8e+04" not in res.stdout


def test_truth_pairs_outside_the_volume_are_one_warning(tmp_path, caplog) -> None:
    """A crop that kept the whole file's annotations: its outside pairs count as missed, and the
    scorer says so in one line (the figure itself stays the reference evaluator's)."""
    import logging

    from synapse_toolkit.api import run_stage
    from synapse_toolkit.data import PartnerTable, Volume
    from tests.conftest import make_cremi_data

    data = make_cremi_data(shape=(6, 40, 50))
    ids = data.neuron_ids
    crop = Volume(np.asarray(ids.read())[:3], ids.voxel_size_nm, ids.offset_nm)
    truth = data.annotations
    inputs = {"prediction": PartnerTable.from_annotations(truth), "truth": truth,
              "truth_neuron_ids": crop}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="syntk"):
        out = run_stage("scorer", "cremi-partners", inputs, scratch_dir=tmp_path)
    record = out["scores"]
    lines = [r.getMessage() for r in caplog.records if "outside the neuron_ids" in r.getMessage()]
    assert record.details["truth_pairs_outside_volume"] == 1 and len(lines) == 1
    assert "1 of 2 truth partner pairs" in lines[0] and record.values["fn"] == 1
