"""A run owns its directory: lock, no stale artifacts, resume re-checks what it skips."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from synapse_toolkit.config import load_config
from synapse_toolkit.errors import DataError
from synapse_toolkit.fsio import LOCK_NAME, RunLock
from synapse_toolkit.io.cremi import CremiData, read_cremi, write_cremi
from synapse_toolkit.pipeline import plan_pipeline, run_pipeline
from synapse_toolkit.plugin_manager import load_plugins

from . import stage_fixtures
from .test_pipeline import PIPELINE


@pytest.fixture
def plugins():  # type: ignore[no-untyped-def]
    return load_plugins(extra_modules={"fixtures": stage_fixtures})


def _config(tmp_path: Path, input_file: Path, name: str = "pipe.toml") -> Path:
    path = tmp_path / name
    path.write_text(PIPELINE.format(input=input_file, out=tmp_path / "run"))
    return path


def _run(config: Path, plugins, resume: bool = False, **kw):  # type: ignore[no-untyped-def]
    res = run_pipeline(plan_pipeline(load_config(config), plugins), plugins=plugins,
                       resume=resume, **kw)  # fmt: skip
    res.close()
    return res


def _tree(run: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name not in ("manifest.json", LOCK_NAME)
    }


def test_second_run_into_a_locked_directory_fails_at_once(
    tmp_path: Path, cremi_file: Path, plugins
) -> None:  # type: ignore[no-untyped-def]
    config = _config(tmp_path, cremi_file)
    with RunLock(tmp_path / "run"):  # another run holds the directory
        stage_fixtures.CALLS.clear()
        with pytest.raises(DataError, match=rf"in use by another syntk run \(pid {os.getpid()}"):
            _run(config, plugins)
        assert stage_fixtures.CALLS == []  # failed before any stage ran
    _run(config, plugins)
    lone = _tree(tmp_path / "run")
    shutil.rmtree(tmp_path / "run")
    _run(config, plugins)
    assert _tree(tmp_path / "run") == lone


def test_stale_lock_of_a_dead_run_is_taken_over(tmp_path: Path, cremi_file: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "h", "started": "t"}))
    said: list[tuple[str, str]] = []
    _run(_config(tmp_path, cremi_file), plugins, on_stage=lambda s, m: said.append((s, m)))
    assert ("lock", "took over the stale lock of pid 999999") in said


def test_fresh_run_leaves_nothing_of_the_previous_one(
    tmp_path: Path, cremi_file: Path, plugins
) -> None:  # type: ignore[no-untyped-def]
    _run(_config(tmp_path, cremi_file), plugins)
    run = tmp_path / "run"
    assert (run / "out.hdf").exists() and (run / "artifacts" / "compare").exists()
    # rerun on an input without labels and without the scorer/writer stages
    raw_only = write_cremi(tmp_path / "raw_only.hdf", CremiData(raw=read_cremi(cremi_file).raw))
    config = tmp_path / "small.toml"
    text = PIPELINE.format(input=raw_only, out=run)
    config.write_text(text[: text.index("[stages.compare]")])
    (run / ".out.hdf.abc123.tmp").write_bytes(b"left by a killed writer")
    (run / "report.html").write_text("<p>the previous run</p>")
    _run(config, plugins)
    assert not (run / "report.html").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert all(st["peak_rss_mb"] > 10 for st in manifest["stages"].values())
    assert not (run / "out.hdf").exists()  # the old writer's file went with the old run
    assert not (run / "artifacts" / "compare").exists()
    assert not list(run.glob(".*.tmp"))
    stored = {p.parent.name for p in (run / "artifacts").glob("*/*")}
    assert stored == set(manifest["stages"])


def test_killed_rerun_is_marked_unfinished(
    tmp_path: Path, cremi_file: Path, plugins, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    config = _config(tmp_path, cremi_file)
    _run(config, plugins)

    def die(self, inputs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(stage_fixtures.MaxDiffScorer, "run", die)
    with pytest.raises(KeyboardInterrupt):
        _run(config, plugins)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "running" and "compare" not in manifest["stages"]
    assert not (tmp_path / "run" / "out.hdf").exists()  # no old file beside the new manifest


def test_resume_reruns_a_writer_whose_file_is_gone_or_changed(
    tmp_path: Path, cremi_file: Path, plugins
) -> None:  # type: ignore[no-untyped-def]
    config = _config(tmp_path, cremi_file)
    _run(config, plugins)
    out = tmp_path / "run" / "out.hdf"
    original = out.read_bytes()
    out.unlink()
    res = _run(config, plugins, resume=True)
    status = {s.name: s.status for s in res.stages}
    assert status["export"] == "ran" and status["double"] == "skipped"
    assert out.read_bytes() == original
    with open(out, "r+b") as f:  # same size, new content
        f.seek(len(original) // 2)
        f.write(b"\xff")
    res = _run(config, plugins, resume=True)
    assert {s.name: s.status for s in res.stages}["export"] == "ran"
    assert out.read_bytes() == original


def test_resume_after_the_input_moved(tmp_path: Path, cremi_file: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    _run(_config(tmp_path, cremi_file), plugins)
    moved = tmp_path / "elsewhere.hdf"
    cremi_file.rename(moved)
    res = _run(_config(tmp_path, moved), plugins, resume=True)
    status = {s.name: s.status for s in res.stages}
    assert status["load"] == "ran"  # re-read from the new place
    assert status["double"] == "skipped"  # same content hash: downstream work is kept


def test_outputs_follow_the_umask_and_are_standard_json(
    tmp_path: Path, cremi_file: Path, plugins
) -> None:  # type: ignore[no-untyped-def]
    old = os.umask(0o022)
    try:
        _run(_config(tmp_path, cremi_file), plugins)
    finally:
        os.umask(old)
    run = tmp_path / "run"
    for p in (run / "manifest.json", run / "out.hdf", run / "artifacts/compare/scores.json"):
        assert p.stat().st_mode & 0o777 == 0o644, p
    json.loads((run / "manifest.json").read_text(), parse_constant=pytest.fail)


def test_output_dir_that_is_a_file_or_the_input(tmp_path: Path, cremi_file: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    config = _config(tmp_path, cremi_file)
    with pytest.raises(DataError, match="is a file, not a directory"):
        run_pipeline(plan_pipeline(load_config(config, [f"output.dir={cremi_file}"]), plugins),
                     plugins=plugins)  # fmt: skip
    with pytest.raises(DataError, match="is the pipeline input"):
        plan = plan_pipeline(
            load_config(config, [f"output.dir={cremi_file.parent}",
                                 f"stages.export.options.filename={cremi_file.name}"]),
            plugins,
        )  # fmt: skip
        stage_fixtures.CALLS.clear()
        run_pipeline(plan, plugins=plugins)
    assert stage_fixtures.CALLS == []  # refused before any work
