"""Docs that cannot rot: the API page's examples run, and every command and file the README and
docs name exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from synapse_toolkit.cli.main import COMMAND_GROUPS, app

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
        REPO / "examples" / "third_party_plugin" / "README.md"]  # fmt: skip


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_api_page_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    namespace: dict[str, object] = {}
    blocks = _blocks((REPO / "docs" / "api.md").read_text(), "python")
    assert len(blocks) >= 4
    for code in blocks:
        exec(compile(code, "docs/api.md", "exec"), namespace)


def _syntk_commands(text: str) -> list[list[str]]:
    """Every `syntk ...` command line in shell blocks and inline code."""
    blocks = [b.replace("\\\n", " ") for b in _blocks(text, "(?:bash|sh)?")]
    lines = [ln for block in blocks for ln in block.splitlines()]
    lines += re.findall(r"`(syntk [^`]+)`", text)
    cmds = []
    for line in lines:
        for part in re.split(r"&&|;", line.split("#")[0]):
            part = part.strip()
            if part.startswith("syntk "):
                try:
                    cmds.append(shlex.split(part)[1:])
                except ValueError:  # not shell (e.g. a Python line quoting a command)
                    continue
    return cmds


def test_every_syntk_command_in_the_docs_exists() -> None:
    import typer.main

    root = typer.main.get_command(app)
    groups = {name for name, _, _ in COMMAND_GROUPS}
    seen = 0
    for doc in DOCS:
        for words in _syntk_commands(doc.read_text()):
            if not words or words[0].startswith("-"):
                continue
            assert words[0] in groups, f"{doc.name}: `syntk {' '.join(words)}`: no group {words[0]}"
            group = root.get_command(None, words[0])  # type: ignore[attr-defined,arg-type]
            sub = next((w for w in words[1:] if not w.startswith("-")), None)
            if sub is not None and not sub.isupper() and hasattr(group, "list_commands"):
                known = group.list_commands(None)  # type: ignore[arg-type]
                assert sub in known or group.get_command(None, sub) is not None, (
                    f"{doc.name}: `syntk {' '.join(words)}`: {words[0]} has no command {sub}"
                )
            seen += 1
    assert seen >= 5


def test_every_repository_file_named_in_the_docs_exists() -> None:
    pattern = re.compile(r"`((?:examples|docs|benchmarks|plugins|synapse_toolkit|registry|tests)"
                         r"/[\w./-]+)`")  # fmt: skip
    missing = []
    for doc in DOCS:
        for name in pattern.findall(doc.read_text()):
            path = REPO / name.rstrip(".")
            if not path.exists() and not any(ch in name for ch in "*<>{"):
                missing.append(f"{doc.relative_to(REPO)}: {name}")
    assert not missing, missing
