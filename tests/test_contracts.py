"""Contracts that catch mistakes: validate rejects bad wiring with one line naming both ends,
and the runner rejects outputs that do not fit their port."""

from __future__ import annotations

import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from synapse_toolkit.cli.main import app
from synapse_toolkit.config import load_config
from synapse_toolkit.data import Volume
from synapse_toolkit.errors import ConfigError, DataError, PluginError
from synapse_toolkit.hookspecs import hookimpl
from synapse_toolkit.pipeline import plan_pipeline, run_pipeline
from synapse_toolkit.plugin_manager import load_plugins
from synapse_toolkit.stages import Detector, Port, StageOptions

HEAD = """
name = "contracts"
[input]
path = "{input}"
[output]
dir = "{out}"
[stages.load]
kind = "loader"
plugin = "cremi-hdf5"
"""


def _validate(tmp_path: Path, body: str, input_file: Path, plugins: Any = None) -> Any:
    cfg = tmp_path / "p.toml"
    cfg.write_text(HEAD.format(input=input_file, out=tmp_path / "run") + body)
    return plan_pipeline(load_config(cfg), plugins or load_plugins(), download=False)


def test_raw_into_a_scorers_prediction_is_rejected(tmp_path: Path, cremi_file: Path) -> None:
    body = """
[stages.score]
kind = "scorer"
plugin = "cremi-neurons"
inputs = { prediction = "load.raw", truth = "load.neuron_ids" }
"""
    with pytest.raises(ConfigError) as err:
        _validate(tmp_path, body, cremi_file)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (
        "stages.score.inputs.prediction: 'load.raw' (cremi-hdf5) carries intensity, "
        "but cremi-neurons input 'prediction' takes labels"
    )


def test_one_channel_boundary_map_into_waterz_is_rejected(tmp_path: Path) -> None:
    f = tmp_path / "v.h5"
    with h5py.File(f, "w") as h:
        h["raw"] = np.zeros((4, 8, 8), np.uint8)
        h["bd"] = np.zeros((4, 8, 8), np.float32)
    cfg = tmp_path / "p.toml"
    cfg.write_text(f"""
[input]
path = "{f}"
[output]
dir = "{tmp_path / "run"}"
[stages.load]
kind = "loader"
plugin = "hdf5-volumes"
[stages.load.options]
voxel_size_nm = [10, 10, 10]
volumes.raw = {{ path = "v.h5", dataset = "raw" }}
volumes.boundaries = {{ path = "v.h5", dataset = "bd" }}
[stages.segment]
kind = "agglomerator"
plugin = "waterz"
inputs = {{ affinities = "load.boundaries" }}
""")
    with pytest.raises(ConfigError, match=r"^stages.segment.inputs.affinities: 'load.boundaries' "
                       r"\(hdf5-volumes\) carries map\[1\], but waterz input 'affinities' takes "
                       r"affinities$"):  # fmt: skip
        plan_pipeline(load_config(cfg), load_plugins(), download=False)


def test_volumes_on_different_voxel_sizes_are_rejected_by_validate(tmp_path: Path) -> None:
    f = tmp_path / "v.h5"
    with h5py.File(f, "w") as h:
        h["seg"] = np.ones((4, 8, 8), np.uint64)
    cfg_text = f"""
[input]
path = "{f}"
[output]
dir = "{tmp_path / "run"}"
[stages.a]
kind = "loader"
plugin = "hdf5-volumes"
[stages.a.options]
voxel_size_nm = [10, 10, 10]
volumes.neuron_ids = {{ path = "v.h5", dataset = "seg" }}
[stages.b]
kind = "loader"
plugin = "hdf5-volumes"
[stages.b.options]
voxel_size_nm = [40, 4, 4]
volumes.neuron_ids = {{ path = "v.h5", dataset = "seg" }}
[stages.score]
kind = "scorer"
plugin = "cremi-neurons"
inputs = {{ prediction = "a.neuron_ids", truth = "b.neuron_ids" }}
"""
    cfg = tmp_path / "p.toml"
    cfg.write_text(cfg_text)
    result = CliRunner().invoke(app, ["pipeline", "validate", str(cfg)])
    assert result.exit_code == 1
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert lines == [
        f"error: {cfg}: stages.score.inputs.truth: 'b.neuron_ids' and 'a.neuron_ids' lie on "
        "different grids (voxel size (nm): (10.0, 10.0, 10.0) vs (40.0, 4.0, 4.0))"
    ]
    cfg.write_text(cfg_text.replace("[40, 4, 4]", "[10, 10, 10]"))
    assert CliRunner().invoke(app, ["pipeline", "validate", str(cfg)]).exit_code == 0


def test_missing_required_input_is_rejected(tmp_path: Path, cremi_file: Path) -> None:
    body = """
[stages.score]
kind = "scorer"
plugin = "cremi-neurons"
inputs = { prediction = "load.neuron_ids" }
"""
    with pytest.raises(ConfigError, match=r"^stages.score.inputs.truth: required input is not "
                       r"wired"):  # fmt: skip
        _validate(tmp_path, body, cremi_file)


class _Bad(StageOptions):
    mode: str = "2d"


class BadShapeDetector(Detector):
    """Claims affinities but returns what ``mode`` says."""

    name: ClassVar[str] = "test-bad-shape"
    inputs: ClassVar[Mapping[str, Port]] = {"raw": Port("intensity")}
    outputs: ClassVar[Mapping[str, Port]] = {"affinities": Port("affinities")}
    Options = _Bad

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        raw: Volume = inputs["raw"]
        mode = self.options.mode  # type: ignore[attr-defined]
        if mode == "missing":
            return {}
        if mode == "labels":
            return {"affinities": raw.with_data(np.zeros((2, *raw.spatial_shape), np.float32))}
        if mode == "table":
            return {"affinities": 3.0}
        return {"affinities": raw.with_data(np.zeros(raw.spatial_shape, np.float32))}


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("2d", r"output 'affinities' has shape \(6, 40, 50\); a affinities volume has 4 dim"),
        ("labels", r"output 'affinities' has 2 channel\(s\); expected at least 3"),
        ("table", r"output 'affinities' is a float, not Volume"),
        ("missing", r"did not produce required output\(s\) affinities"),
    ],
)
def test_runner_rejects_outputs_that_do_not_fit(
    tmp_path: Path, cremi_file: Path, mode: str, message: str
) -> None:
    module = types.ModuleType("bad_shape_plugin")

    @hookimpl
    def syntk_register_stages(registry: Any) -> None:
        registry.add_detector(BadShapeDetector)

    module.syntk_register_stages = syntk_register_stages  # type: ignore[attr-defined]
    plugins = load_plugins(extra_modules={"bad": module})
    body = f"""
[stages.detect]
kind = "detector"
plugin = "test-bad-shape"
inputs = {{ raw = "load.raw" }}
options = {{ mode = "{mode}" }}
"""
    plan = _validate(tmp_path, body, cremi_file, plugins)
    with pytest.raises(PluginError, match=r"stage detect \(detector test-bad-shape\).*" + message):
        run_pipeline(plan, plugins=plugins).close()


def test_inputs_on_different_grids_stop_the_stage_before_it_runs() -> None:
    from synapse_toolkit.stages import check_grids

    ports = {"a": Port("labels", grid="g"), "b": Port("labels", grid="g")}
    a = Volume(np.zeros((2, 3, 4), np.uint64), (40, 4, 4))
    b = Volume(np.zeros((2, 3, 4), np.uint64), (40, 4, 4), (40, 0, 0))
    check_grids("s", ports, {"a": a, "b": a})
    with pytest.raises(DataError, match=r"inputs a and b differ in offset \(nm\)"):
        check_grids("s", ports, {"a": a, "b": b})


def test_optional_input_whose_source_produced_nothing_is_left_out(
    tmp_path: Path, cremi_file: Path
) -> None:
    """A writer's optional `raw`: a loader that found no raw leaves it out instead of failing."""
    from synapse_toolkit.io.cremi import CremiData, read_cremi, write_cremi

    no_raw = write_cremi(tmp_path / "labels_only.hdf",
                         CremiData(neuron_ids=read_cremi(cremi_file).neuron_ids))  # fmt: skip
    body = """
[stages.write]
kind = "writer"
plugin = "cremi-hdf5"
inputs = { raw = "load.raw", neuron_ids = "load.neuron_ids" }
options = { filename = "copy.hdf" }
"""
    plan = _validate(tmp_path, body, no_raw)
    run_pipeline(plan, plugins=load_plugins()).close()
    copied = read_cremi(tmp_path / "run" / "copy.hdf")
    assert copied.raw is None and copied.neuron_ids is not None
