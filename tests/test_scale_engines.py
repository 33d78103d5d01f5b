"""The main job block by block: a dask local cluster gives the embedded engine's bytes; a killed
run, or a killed block worker, resumes with ``--resume`` to the same bytes while skipping the
blocks it finished; the SLURM example builds its dask-jobqueue cluster and job script (no SLURM)."""

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
SYNTK = str(Path(sys.executable).parent / "syntk")
#: 12 x 96 x 96 voxels in blocks of 6 x 48 x 48: 8 blocks per blockwise stage
#: partners by the blockwise EMSynConn assigner, quicker here (test_synful_blockwise covers synful)
FAST = ["--set", "stages.affinities.options.tta=false", "--set", "run.block_shape=[6, 48, 48]",
        "--set", "stages.partners.plugin=emsynconn",
        "--set", "stages.partners.options.context=[2, 24, 24]", "-q", "--no-report"]  # fmt: skip


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("phantom") / "p.hdf"
    args = [SYNTK, "phantom", "em", str(path), "--shape", "12", "96", "96", "--seed", "7",
            "--synapses", "12"]  # fmt: skip
    subprocess.run(args, check=True, capture_output=True)
    return path


def _run(
    phantom: Path, out: Path, *extra: str, resume: bool = False, env_extra: dict | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    args = [sys.executable, str(RUNNER), "pipeline", "run", str(REPO / "examples/cremi.toml"),
            "--set", f"input.path={phantom}", "--set", f"output.dir={out}", *FAST, *extra,
            *(["--resume"] if resume else [])]  # fmt: skip
    return subprocess.run(args, env=env, capture_output=True, text=True, cwd=REPO, timeout=600)


def _digests(run: Path) -> dict[str, str]:
    out = {}
    for p in sorted(run.rglob("*")):
        if p.is_file() and p.name not in ("manifest.json", ".syntk.lock"):
            out[str(p.relative_to(run))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


@pytest.fixture(scope="module")
def lone(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("lone") / "run"
    proc = _run(phantom, out)
    assert proc.returncode == 0, proc.stderr
    notes = _manifest(out)["stages"]
    assert notes["partners"]["notes"]["blockwise"]["n_blocks"] == 8
    assert notes["cleft_labels"]["notes"]["blockwise"]["n_blocks"] == 8
    assert notes["segment"]["notes"]["blockwise"]["n_blocks"] == 8
    assert not (out / "blockwise").exists()  # block work is removed once a stage is stored
    return _digests(out)


def test_dask_local_cluster_with_two_workers_equals_embedded_engine(phantom, lone, tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "run"
    proc = _run(phantom, out, "--set", "execution.engine=dask", "--set", "execution.n_workers=2")
    assert proc.returncode == 0, proc.stderr
    execution = _manifest(out)["execution"]
    assert execution["engine"] == "dask" and execution["n_workers"] == 2
    assert execution["dashboard"].startswith("http")
    assert _digests(out) == lone


def test_killed_run_resumes_skipping_finished_blocks_byte_identical(phantom, lone, tmp_path):
    out = tmp_path / "run"
    proc = _run(phantom, out, env_extra={"SYNTK_KILL_AT": "after-blocks:partner candidates:3"})
    assert proc.returncode == -signal.SIGKILL
    assert _manifest(out)["status"] == "running"
    assert len(list((out / "blockwise" / "partners" / "done" / "partners").glob("*.json"))) >= 3
    proc = _run(phantom, out, resume=True)
    assert proc.returncode == 0, proc.stderr
    stages = _manifest(out)["stages"]
    assert stages["segment"]["outputs"]  # earlier stages were kept, not rerun
    assert stages["partners"]["notes"]["blockwise"]["skipped_blocks"]["partner candidates"] >= 3
    assert _digests(out) == lone


def test_killed_worker_fails_the_stage_naming_its_blocks_and_resume_completes(
    phantom, lone, tmp_path
):
    out = tmp_path / "run"
    spec = f"synapse_toolkit.synapses.blockwise:_cc_block:5:{tmp_path / 'killed'}"
    proc = _run(phantom, out, env_extra={"SYNTK_KILL_WORKER_AT": spec})
    assert proc.returncode == 1
    assert "a worker process died" in proc.stderr + proc.stdout
    assert "write ROI" in proc.stderr + proc.stdout  # the blocks in flight, with their ROIs
    assert (tmp_path / "killed").exists()
    proc = _run(phantom, out, resume=True)
    assert proc.returncode == 0, proc.stderr
    skipped = _manifest(out)["stages"]["cleft_labels"]["notes"]["blockwise"]["skipped_blocks"]
    assert skipped["cleft components"] >= 1  # blocks finished before the kill were not redone
    assert _digests(out) == lone


def test_slurm_cluster_and_job_script_from_the_example_config(tmp_path, monkeypatch):
    pytest.importorskip("dask_jobqueue")
    from synapse_toolkit.config import load_config
    from synapse_toolkit.engines import DaskEngine, make_engine, slurm_cluster

    monkeypatch.chdir(tmp_path)  # log_directory is created relative to the working directory
    cfg = load_config(REPO / "examples/cremi_slurm.toml")
    engine = make_engine(cfg.execution)
    assert isinstance(engine, DaskEngine) and engine.n_workers == 4 * 4
    cluster = slurm_cluster(cfg.execution.slurm)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    for want in ("#SBATCH -p cpu", "#SBATCH -A my-lab", "#SBATCH --cpus-per-task=8",
                 "#SBATCH -t 04:00:00", "#SBATCH --exclusive", "module load python/3.11",
                 "#SBATCH -e slurm-logs/dask-worker-%J.err"):  # fmt: skip
        assert want in lines, script
    assert any(line.startswith("#SBATCH --mem=") for line in lines)
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert "--nworkers 4" in worker and "--nthreads 2" in worker
    assert lines.index("module load python/3.11") < lines.index(worker)


def test_slurm_without_sbatch_is_one_error_not_endless_retries(tmp_path, monkeypatch):
    pytest.importorskip("dask_jobqueue")
    from synapse_toolkit.config import load_config
    from synapse_toolkit.engines import make_engine
    from synapse_toolkit.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    engine = make_engine(load_config(REPO / "examples/cremi_slurm.toml").execution)
    with pytest.raises(ConfigError, match="sbatch"):
        engine.start()
    assert engine.cluster is None


def test_slurm_example_extends_the_main_job(tmp_path):
    from synapse_toolkit.config import load_config, load_config_document
    from synapse_toolkit.errors import ConfigError

    main = load_config_document(REPO / "examples/cremi.toml")
    slurm = load_config_document(REPO / "examples/cremi_slurm.toml")
    assert slurm["stages"] == main["stages"] and slurm["run"] == main["run"]
    assert slurm["execution"]["engine"] == "dask" and slurm["execution"]["cluster"] == "slurm"
    assert load_config(REPO / "examples/cremi_slurm.toml").output.dir == (
        REPO / "examples/runs/cremi_slurm"
    )
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(ConfigError, match="cycle"):
        load_config_document(tmp_path / "a.toml")


def test_a_cluster_address_needs_the_dask_engine():
    from synapse_toolkit.config import ExecutionConfig
    from synapse_toolkit.engines import make_engine
    from synapse_toolkit.errors import ConfigError

    with pytest.raises(ConfigError, match="needs engine = 'dask'"):
        make_engine(ExecutionConfig(cluster="tcp://127.0.0.1:8786"))


def test_process_pool_release_stops_idle_workers_and_the_next_submit_starts_fresh_ones():
    from synapse_toolkit.blocktasks import make_pool, release_workers

    pool = make_pool(1, "processes")
    try:
        first = pool.submit(os.getpid).result()
        assert pool.submit(os.getpid).result() == first  # the same worker between submits
        release_workers(pool)
        with pytest.raises(ProcessLookupError):  # it has exited
            os.kill(first, 0)
        second = pool.submit(os.getpid).result()
        assert second not in (first, os.getpid())
    finally:
        pool.shutdown()
