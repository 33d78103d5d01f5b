"""Pipeline configs fail early with key paths; stages run in dependency order; resume works."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from synapse_toolkit import pipeline as pipeline_mod
from synapse_toolkit.cli.main import app
from synapse_toolkit.config import apply_overrides, load_config
from synapse_toolkit.errors import ConfigError, DataError
from synapse_toolkit.io.cremi import read_cremi
from synapse_toolkit.pipeline import plan_pipeline, run_pipeline
from synapse_toolkit.plugin_manager import load_plugins

from . import stage_fixtures

PIPELINE = """
name = "two-detectors"
[input]
path = "{input}"
[output]
dir = "{out}"

[stages.load]
kind = "loader"
plugin = "cremi-hdf5"
options = {{ require = ["raw"] }}

[stages.align]
kind = "aligner"
plugin = "test-shift"
options = {{ shifts_px = [[0, 0], [1, 2], [-3, 1], [2, 2], [0, -4], [5, 5]] }}
inputs = {{ raw = "load.raw" }}

[stages.double]
kind = "detector"
plugin = "test-scale"
options = {{ factor = 2.0 }}
inputs = {{ raw = "align.raw" }}

[stages.half]
kind = "detector"
plugin = "test-scale"
options = {{ factor = 0.5 }}
inputs = {{ raw = "double.prediction" }}

[stages.unalign]
kind = "aligner"
plugin = "test-shift"
inputs = {{ raw = "half.prediction", transform = "align.transform" }}

[stages.compare]
kind = "scorer"
plugin = "test-maxdiff"
inputs = {{ prediction = "unalign.raw", truth = "load.raw" }}

[stages.export]
kind = "writer"
plugin = "cremi-hdf5"
options = {{ filename = "out.hdf" }}
inputs = {{ neuron_ids = "load.neuron_ids", partners = "load.partners" }}
"""


@pytest.fixture
def plugins():  # type: ignore[no-untyped-def]
    return load_plugins(extra_modules={"fixtures": stage_fixtures})


@pytest.fixture
def config_file(tmp_path: Path, cremi_file: Path) -> Path:
    path = tmp_path / "pipe.toml"
    path.write_text(PIPELINE.format(input=cremi_file, out=tmp_path / "run"))
    return path


def _plan(config_file: Path, plugins, *overrides: str):  # type: ignore[no-untyped-def]
    return plan_pipeline(load_config(config_file, overrides), plugins)


def test_two_detectors_and_aligner_inverse_run(
    config_file: Path, plugins, cremi_file: Path
) -> None:  # type: ignore[no-untyped-def]
    plan = _plan(config_file, plugins)
    assert [s.name for s in plan.stages] == ["load", "align", "double", "half", "unalign",
                                             "compare", "export"]  # fmt: skip
    result = run_pipeline(plan, plugins=plugins)
    try:
        assert result.scores()["compare.scores"]["values"]["max_abs_diff"] == 0.0
        # the aligned volume really differs from the input (the inverse did work)
        aligned = result.artifacts["align.raw"].read()
        assert not np.array_equal(aligned, read_cremi(cremi_file).raw.data)  # type: ignore[union-attr]
    finally:
        result.close()
    run = result.run_dir
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["stages"]) == {s.name for s in plan.stages}
    assert manifest["input"]["sha256"] and manifest["plugins"]["fixtures"] == ""
    stored = zarr.open_array(str(run / "artifacts" / "double" / "prediction.zarr"), mode="r")
    assert stored.attrs["voxel_size_nm"] == [40.0, 4.0, 4.0]
    assert (run / "artifacts" / "load" / "raw.ref.json").exists()  # input read in place
    written = read_cremi(run / "out.hdf")
    assert len(written.annotations.partners) == 2  # type: ignore[union-attr]
    assert not list((run).glob(".scratch/*"))


def test_resume_skips_unchanged_stages(config_file: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    run_pipeline(_plan(config_file, plugins), plugins=plugins).close()
    stage_fixtures.CALLS.clear()
    res = run_pipeline(_plan(config_file, plugins), plugins=plugins, resume=True)
    res.close()
    assert stage_fixtures.CALLS == []
    assert {s.status for s in res.stages} == {"skipped"}
    # changing one option re-runs that stage and everything downstream of it only
    res = run_pipeline(_plan(config_file, plugins, "stages.half.options.factor=0.25"),
                       plugins=plugins, resume=True)  # fmt: skip
    res.close()
    assert stage_fixtures.CALLS == ["half", "unalign", "compare"]
    assert res.scores()["compare.scores"]["values"]["max_abs_diff"] > 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "stages.double.plugin=nope",
            "stages.double.plugin: no detector plugin 'nope' (available:",
        ),
        ("stages.double.options.factr=3", "stages.double.options.factr: unknown key"),
        (
            "stages.double.options.factor='x'",
            "stages.double.options.factor: Input should be a valid number",
        ),
        (
            "stages.half.inputs.raw=ghost.prediction",
            "stages.half.inputs.raw: artifact 'ghost.prediction' is produced by no stage",
        ),
        (
            "stages.half.inputs.raw=double.nothing",
            "stages.half.inputs.raw: stage 'double' (test-scale) has no output 'nothing'",
        ),
        (
            "stages.half.inputs.raw=load.annotations",
            "stages.half.inputs.raw: 'load.annotations' (cremi-hdf5) carries annotations, "
            "but test-scale input 'raw' takes volume",
        ),
        ("stages.double.kind=detektor", "stages.double.kind: unknown stage kind 'detektor'"),
        ("stages.double.colour=1", "stages.double.colour: unknown key"),
        (
            "input.path='/nonexistent/sample.hdf'",
            "input.path: file not found: /nonexistent/sample.hdf",
        ),
        ("stages.half.inputs.raw=half.prediction", "dependency cycle"),
        (
            "stages.double.inputs.rav=load.raw",
            "stages.double.inputs.rav: test-scale has no input 'rav'",
        ),
    ],
)
def test_config_errors_name_the_key(
    config_file: Path, plugins, override: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as err:
        _plan(config_file, plugins, override)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_required_artifact_is_reported(tmp_path: Path, config_file: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    from synapse_toolkit.io.cremi import CremiData, write_cremi

    from .conftest import make_cremi_data

    data = make_cremi_data()
    no_raw = write_cremi(tmp_path / "noraw.hdf", CremiData(neuron_ids=data.neuron_ids))
    plan = _plan(config_file, plugins, f"input.path='{no_raw}'")
    with pytest.raises(
        DataError, match=r"stage load \(loader cremi-hdf5\): .*noraw.hdf: missing raw"
    ):
        run_pipeline(plan, plugins=plugins)


def test_overrides_swap_input_source() -> None:
    doc = {"input": {"path": "a.hdf"}}
    apply_overrides(doc, ["input.dataset=cremi/sample_A"])
    assert doc["input"] == {"dataset": "cremi/sample_A"}
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(doc, ["input.dataset"])


def test_cli_errors_are_one_line(tmp_path: Path, config_file: Path, plugins, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(pipeline_mod, "get_plugins", lambda: plugins)
    runner = CliRunner()
    res = runner.invoke(
        app, ["pipeline", "run", str(config_file), "--set", "stages.double.options.factor=[1]"]
    )
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [
        f"error: {config_file}: stages.double.options.factor: Input should be a valid number"
    ]
    res = runner.invoke(app, ["pipeline", "validate", str(tmp_path / "missing.toml")])
    assert res.exit_code == 1 and "missing.toml: config file not found" in res.stderr


def test_cli_dry_run_and_json_run(config_file: Path, plugins, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(pipeline_mod, "get_plugins", lambda: plugins)
    runner = CliRunner()
    res = runner.invoke(app, ["pipeline", "run", str(config_file), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert [s["stage"] for s in plan["stages"]][:2] == ["load", "align"]
    assert not (config_file.parent / "run").exists()  # a dry run writes nothing
    res = runner.invoke(app, ["pipeline", "run", str(config_file), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["scores"]["compare.scores"]["values"]["max_abs_diff"] == 0.0
    res = runner.invoke(app, ["pipeline", "run", str(config_file), "--resume", "--json"])
    assert {s["status"] for s in json.loads(res.stdout)["stages"]} == {"skipped"}


def test_example_plugin_runs_in_a_pipeline(
    tmp_path: Path, cremi_file: Path, example_plugin_on_path
) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "membrane.toml"
    cfg.write_text(
        textwrap.dedent(f"""
        [input]
        path = "{cremi_file}"
        [output]
        dir = "{tmp_path / "run"}"
        [run]
        block_shape = [2, 16, 16]
        [stages.load]
        kind = "loader"
        plugin = "cremi-hdf5"
        [stages.membranes]
        kind = "detector"
        plugin = "membrane-gradient"
        options = {{ sigma_nm = 6.0 }}
        inputs = {{ raw = "load.raw" }}
    """)
    )
    res = CliRunner().invoke(app, ["pipeline", "run", str(cfg), "--quiet"])
    assert res.exit_code == 0, res.output
    out = zarr.open_array(str(tmp_path / "run/artifacts/membranes/boundaries.zarr"), mode="r")
    assert out.shape == (1, 6, 40, 50)
    values = np.asarray(out[...])
    assert values.min() >= 0.0 and values.max() <= 1.0 and values.std() > 0
    # blockwise with context equals a one-block computation
    cfg2 = cfg.read_text().replace("block_shape = [2, 16, 16]", "block_shape = [6, 40, 50]")
    cfg2 = cfg2.replace(str(tmp_path / "run"), str(tmp_path / "run2"))
    cfg.write_text(cfg2)
    assert CliRunner().invoke(app, ["pipeline", "run", str(cfg), "--quiet"]).exit_code == 0
    one = zarr.open_array(str(tmp_path / "run2/artifacts/membranes/boundaries.zarr"), mode="r")
    np.testing.assert_allclose(np.asarray(one[...]), values, atol=1e-6)


def test_interrupted_run_resumes_from_last_finished_stage(config_file: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    plan = _plan(config_file, plugins, "stages.half.options.factor=-1.0")
    original = stage_fixtures.ScaleDetector.run

    def failing(self, inputs):  # type: ignore[no-untyped-def]
        if self.context.stage_name == "half":
            raise KeyboardInterrupt  # the user pressed Ctrl-C in the middle of the run
        return original(self, inputs)

    stage_fixtures.ScaleDetector.run = failing  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(plan, plugins=plugins)
    finally:
        stage_fixtures.ScaleDetector.run = original  # type: ignore[method-assign]
    run = plan.config.output.dir
    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["load", "align", "double"]
    assert not list(run.glob(".scratch/*")) and not (run / "artifacts" / "half").exists()
    stage_fixtures.CALLS.clear()
    res = run_pipeline(plan, plugins=plugins, resume=True)
    res.close()
    assert stage_fixtures.CALLS == ["half", "unalign", "compare"]


def test_stage_without_its_input_can_be_skipped(tmp_path: Path, config_file: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    from synapse_toolkit.io.cremi import CremiData, write_cremi

    from .conftest import make_cremi_data

    raw_only = write_cremi(tmp_path / "raw_only.hdf", CremiData(raw=make_cremi_data().raw))
    overrides = [f"input.path='{raw_only}'", "stages.export.on_missing_input='skip'"]
    res = run_pipeline(_plan(config_file, plugins, *overrides), plugins=plugins)
    res.close()
    status = {s.name: s.status for s in res.stages}
    assert status["export"] == "skipped: no load.neuron_ids" and status["compare"] == "ran"
    # without `skip`, the writer's optional inputs that were not produced are left out
    res = run_pipeline(_plan(config_file, plugins, overrides[0]), plugins=plugins)
    res.close()
    assert {s.name: s.status for s in res.stages}["export"] == "ran"
