"""Killed runs resume to the same bytes: the main job on the demo sample, SIGKILLed inside the
detector, the agglomerator and the writer, then `--resume`, equals an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).with_name("kill_runner.py")
FAST = ["--set", "stages.affinities.options.tta=false", "-q", "--no-report"]


def _run(out: Path, kill_at: str | None = None, resume: bool = False) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SYNTK_KILL_AT", None)
    if kill_at:
        env["SYNTK_KILL_AT"] = kill_at
    args = [sys.executable, str(RUNNER), "pipeline", "run", str(REPO / "examples/cremi.toml"),
            "--set", f"output.dir={out}", *FAST, *(["--resume"] if resume else [])]  # fmt: skip
    return subprocess.run(args, env=env, capture_output=True, text=True, cwd=REPO).returncode


def _digests(run: Path) -> dict[str, str]:
    """Every stored artifact and written file, by content (manifest and lock aside)."""
    out = {}
    for p in sorted(run.rglob("*")):
        rel = p.relative_to(run)
        if p.is_file() and p.name not in ("manifest.json", ".syntk.lock"):
            out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def lone(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("lone") / "run"
    assert _run(out) == 0
    return _digests(out)


@pytest.mark.parametrize("point", ["after-detector", "in-agglomeration", "in-writer"])
def test_kill_then_resume_is_byte_identical(point: str, tmp_path: Path, lone) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    assert _run(out, kill_at=point) == -signal.SIGKILL
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running"  # the killed run does not pass as complete
    assert _run(out, resume=True) == 0
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    assert _digests(out) == lone
    assert not list(out.rglob(".*.tmp")) and not (out / ".scratch").exists()
