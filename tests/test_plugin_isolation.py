"""Hostile and careless third-party plugins: nothing they do disables or replaces a built-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from synapse_toolkit.plugin_manager import DISABLE_ENV, load_plugins, reset_plugins

PLUGINS = {
    # a third-party agglomerator named like the built-in one
    "impostor": """
        from synapse_toolkit.hookspecs import hookimpl
        from synapse_toolkit.stages import Agglomerator, Detector, Port

        class FakeWaterz(Agglomerator):
            name = "waterz"
            inputs = {"affinities": Port("affinities")}
            outputs = {"segmentation": Port("labels")}
            def run(self, inputs):
                return {}

        class Extra(Detector):
            name = "impostor-extra"
            inputs = {"raw": Port("intensity")}
            def run(self, inputs):
                return {}

        @hookimpl
        def syntk_register_stages(registry):
            registry.add_agglomerator(FakeWaterz)
            registry.add_detector(Extra)
    """,
    # exits the interpreter while being imported
    "exiter": """
        raise SystemExit(3)
    """,
    # registers one stage, then fails
    "halfway": """
        from synapse_toolkit.hookspecs import hookimpl
        from synapse_toolkit.stages import Detector, Port

        class Half(Detector):
            name = "half-registered"
            inputs = {"raw": Port("intensity")}
            def run(self, inputs):
                return {}

        @hookimpl
        def syntk_register_stages(registry):
            registry.add_detector(Half)
            raise RuntimeError("failed after the first stage")
    """,
}


@pytest.fixture
def hostile_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A distribution `aaa-hostile` (sorts before the built-ins) with three bad plugins."""
    site = tmp_path / "site"
    info = site / "aaa_hostile-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: aaa-hostile\nVersion: 1.0\n")
    lines = ["[syntk]"]
    for name, code in PLUGINS.items():
        (site / f"hostile_{name}.py").write_text(textwrap.dedent(code))
        lines.append(f"a-{name} = hostile_{name}")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(site))
    reset_plugins()
    yield {"PYTHONPATH": str(site)}
    for name in PLUGINS:
        sys.modules.pop(f"hostile_{name}", None)
    reset_plugins()


def test_impostor_never_displaces_a_builtin(hostile_site: dict[str, str]) -> None:
    plugins = load_plugins()
    neurons = plugins.status("neurons")
    assert neurons is not None and neurons.status == "ok"
    assert plugins.stages.get("agglomerator", "waterz").plugin == "neurons"
    impostor = plugins.status("a-impostor")
    assert impostor is not None and impostor.status == "conflict"
    assert "synapse-toolkit" in impostor.error and "aaa-hostile" in impostor.error
    # the impostor's other, non-clashing stage is still usable
    assert plugins.stages.get("detector", "impostor-extra").plugin == "a-impostor"


def test_plugin_failing_halfway_leaves_nothing_registered(hostile_site: dict[str, str]) -> None:
    plugins = load_plugins()
    half = plugins.status("a-halfway")
    assert half is not None and half.status == "failed" and "after the first" in half.error
    assert "half-registered" not in plugins.stages.names("detector")


def test_system_exit_on_import_is_contained(hostile_site: dict[str, str]) -> None:
    plugins = load_plugins()
    ex = plugins.status("a-exiter")
    assert ex is not None and ex.status == "failed" and "SystemExit" in ex.error


def test_cli_survives_hostile_plugins(hostile_site: dict[str, str]) -> None:
    env = {**os.environ, **hostile_site}
    out = subprocess.run(
        [sys.executable, "-m", "synapse_toolkit.cli", "plugins", "list", "--json"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r["status"] for r in json.loads(out.stdout)}
    assert rows["a-exiter"] == "failed" and rows["a-halfway"] == "failed"
    assert rows["a-impostor"] == "conflict" and rows["neurons"] == "ok"


@pytest.mark.parametrize("value", ["TRUE", "on", "Yes", " 1 "])
def test_autoload_switch_accepts_truthy_spellings(
    hostile_site: dict[str, str], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(DISABLE_ENV, value)
    plugins = load_plugins()
    assert plugins.status("a-impostor").status == "disabled"  # type: ignore[union-attr]
    assert plugins.status("neurons").status == "ok"  # type: ignore[union-attr]
