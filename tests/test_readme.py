"""The README opens with the two set-up commands, and .ci/run runs the README's test command."""

from __future__ import annotations

import re

from .conftest import REPO


def _commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_readme_opens_with_two_setup_commands() -> None:
    text = (REPO / "README.md").read_text()
    head = text.split("## ")[0]
    blocks = re.findall(r"```bash\n(.+?)\n```", head, flags=re.S)
    assert len(blocks) == 2
    assert all("\n" not in b for b in blocks)
    assert blocks[0].endswith("syntk pipeline run examples/cremi.toml")
    assert "pytest" in blocks[1] and "torch==2.13.0" in blocks[1]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert _commands()[1] in ci
