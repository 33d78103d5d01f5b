"""Plugin discovery: built-ins via entry points, broken plugins reported, autoload switch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from synapse_toolkit import hookspecs
from synapse_toolkit.cli.main import app
from synapse_toolkit.errors import PluginError
from synapse_toolkit.hookspecs import hookimpl
from synapse_toolkit.plugin_manager import DISABLE_ENV, load_plugins, reset_plugins
from synapse_toolkit.stage_registry import StageRegistry
from synapse_toolkit.stages import Detector, Loader, Port

from . import stage_fixtures


def test_builtin_plugins_come_from_entry_points() -> None:
    plugins = load_plugins()
    io = plugins.status("io")
    assert io is not None and io.status == "ok"
    assert io.distribution == "synapse-toolkit"
    assert "loader:cremi-hdf5" in io.stages and "syntk_register_stages" in io.hooks
    assert plugins.stages.get("loader", "cremi-hdf5").plugin == "io"


def test_broken_in_process_plugin_does_not_stop_others() -> None:
    broken = types.ModuleType("broken_plugin")

    @hookimpl
    def syntk_register_stages(registry: StageRegistry) -> None:
        raise RuntimeError("boom while registering")

    broken.syntk_register_stages = syntk_register_stages  # type: ignore[attr-defined]
    plugins = load_plugins(extra_modules={"broken": broken, "fixtures": stage_fixtures})
    status = plugins.status("broken")
    assert status is not None and status.status == "failed" and "boom" in status.error
    assert plugins.status("fixtures").status == "ok"  # type: ignore[union-attr]
    assert plugins.stages.get("detector", "test-scale").plugin == "fixtures"


def test_registry_rejects_wrong_base_and_duplicates() -> None:
    reg = StageRegistry()
    reg.current_plugin = "p"

    class D(Detector):
        name = "d"
        inputs: ClassVar[dict[str, Port]] = {"raw": Port("intensity")}

        def run(self, inputs):  # type: ignore[no-untyped-def]
            return {}

    class NoRaw(Detector):
        name = "no-raw"

        def run(self, inputs):  # type: ignore[no-untyped-def]
            return {}

    with pytest.raises(PluginError, match="NoRaw: a detector must declare input 'raw'"):
        reg.add_detector(NoRaw)

    with pytest.raises(PluginError, match="does not subclass Loader"):
        reg.add_loader(D)
    reg.add_detector(D)
    with pytest.raises(PluginError, match="already registered by p"):
        reg.add_detector(D)
    with pytest.raises(PluginError, match="no detector plugin 'x' \\(available: d\\)"):
        reg.get("detector", "x")
    assert issubclass(D, Detector) and not issubclass(D, Loader)


def test_every_hook_is_documented() -> None:
    specs = [n for n in dir(hookspecs) if n.startswith("syntk_")]
    assert specs == ["syntk_register_datasets", "syntk_register_stages"]
    for name in specs:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert ":param registry:" in doc


def test_example_plugin_listed_and_broken_one_reported(
    example_plugin_on_path: dict[str, str],
) -> None:
    plugins = load_plugins()
    ok = plugins.status("example-membrane")
    bad = plugins.status("example-broken")
    assert ok is not None and ok.status == "ok"
    assert ok.stages == ["detector:membrane-gradient", "scorer:segment-count"]
    assert ok.distribution == "syntk-example-plugin" and ok.version == "0.1.0"
    assert bad is not None and bad.status == "failed"
    assert "syntk_package_that_does_not_exist" in bad.error
    assert plugins.status("io").status == "ok"  # type: ignore[union-attr]


def test_plugins_list_cli_shows_broken_plugin(example_plugin_on_path: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["example-broken"]["status"] == "failed"
    stages = rows["example-membrane"]["stages"]
    assert stages == ["detector:membrane-gradient", "scorer:segment-count"]
    table = CliRunner().invoke(app, ["plugins", "list"])
    assert "example-broken" in table.stdout and "failed" in table.stdout


def test_autoload_can_be_disabled(
    example_plugin_on_path: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DISABLE_ENV, "1")
    reset_plugins()
    plugins = load_plugins()
    assert plugins.status("example-membrane").status == "disabled"  # type: ignore[union-attr]
    assert plugins.status("io").status == "ok"  # type: ignore[union-attr]


def test_plugins_list_in_a_fresh_process(example_plugin_on_path: dict[str, str]) -> None:
    env = {**os.environ, **example_plugin_on_path}
    out = subprocess.run(
        [sys.executable, "-m", "synapse_toolkit.cli", "plugins", "list", "--json"],
        capture_output=True, text=True, env=env, cwd=Path(__file__).parent, check=True,
    )  # fmt: skip
    names = {r["name"]: r["status"] for r in json.loads(out.stdout)}
    assert names["example-membrane"] == "ok" and names["example-broken"] == "failed"
