"""The CLI starts without importing torch (inference and start-up must not need it)."""

from __future__ import annotations

import subprocess
import sys


def test_cli_import_does_not_import_torch() -> None:
    code = (
        "import sys; from synapse_toolkit.cli.main import app; "
        "from synapse_toolkit.plugin_manager import load_plugins; load_plugins(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_version_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "synapse_toolkit.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("syntk ")
