"""Execution engines: where the blocks of blockwise stages run (``[execution]`` in a pipeline).

- ``engine = "local"`` (default): a bounded pool on this machine — threads, or spawned worker
  processes — started per stage; no service to run.
- ``engine = "dask"``: a ``dask.distributed`` cluster, started once per run and shared by every
  blockwise stage: ``cluster = "local"`` (a ``LocalCluster`` of ``n_workers`` processes with a
  memory limit each), ``cluster = "slurm"`` (dask-jobqueue's ``SLURMCluster``: ``[execution.slurm]``
  gives cores, memory, walltime, queue, account, extra ``#SBATCH`` directives), or a scheduler
  address (``tcp://host:8786``) of a cluster started elsewhere. The dashboard address is reported
  when the cluster starts.

The same TOML runs on a laptop, a workstation and a cluster; only ``[execution]`` changes. Block
functions are plain picklable data plus top-level functions (:mod:`synapse_toolkit.blocktasks`),
so they run unchanged in threads, processes or dask workers. Every block records a done marker
with its input fingerprint, so a killed run, or a lost worker, resumes block by block.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from typing import Any, Literal

from synapse_toolkit.blocktasks import make_pool
from synapse_toolkit.config import ExecutionConfig, SlurmConfig
from synapse_toolkit.errors import ConfigError

Notify = Callable[[str], None]


class Engine:
    """The embedded engine: a fresh bounded pool per stage (threads or spawned processes)."""

    name = "local"

    def __init__(self, config: ExecutionConfig | None = None, notify: Notify | None = None) -> None:
        self.config = config or ExecutionConfig()
        self.notify = notify

    @property
    def n_workers(self) -> int:
        return self.config.n_workers

    def pool(
        self,
        n_workers: int | None = None,
        executor: Literal["threads", "processes"] = "processes",
        name: str = "blocks",
    ) -> cf.Executor:
        """An executor for one stage's blocks; the caller shuts it down."""
        return make_pool(n_workers or self.n_workers, executor, name)

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "n_workers": self.n_workers}

    def close(self) -> None:
        """Stop what the engine started (nothing for the local engine)."""


class _DaskPool(cf.Executor):
    """A dask client as a ``concurrent.futures`` executor whose shutdown leaves the cluster up."""

    def __init__(self, client: Any) -> None:
        self._executor = client.get_executor(pure=False)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        return self._executor.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._executor.shutdown(wait=wait and not cancel_futures)


def _quiet_worker() -> None:
    from synapse_toolkit.blocktasks import _worker_init

    _worker_init()


class DaskEngine(Engine):
    """Blocks on a dask cluster (local, SLURM, or a scheduler address), started on first use."""

    name = "dask"

    def __init__(self, config: ExecutionConfig, notify: Notify | None = None) -> None:
        super().__init__(config, notify)
        self.cluster: Any = None
        self.client: Any = None

    @property
    def n_workers(self) -> int:
        if self.config.cluster == "slurm":
            return self.config.slurm.jobs * self.config.slurm.processes
        return self.config.n_workers

    def start(self) -> Any:
        """The dask client (the cluster is started the first time)."""
        if self.client is not None:
            return self.client
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ConfigError("execution.engine: 'dask' needs the dask extra "
                              "(pip install 'synapse-toolkit[dask]')") from None  # fmt: skip
        cfg = self.config
        if cfg.cluster == "local":
            self.cluster = LocalCluster(
                n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker,
                processes=True, memory_limit=cfg.memory_per_worker, dashboard_address=":0",
            )  # fmt: skip
            self.client = Client(self.cluster)
        elif cfg.cluster == "slurm":
            import shutil

            if shutil.which("sbatch") is None:  # dask-jobqueue would retry submitting forever
                raise ConfigError("execution.cluster: 'slurm' submits jobs with sbatch, which "
                                  "is not on this machine's PATH (run on a Slurm login node, or "
                                  "use cluster = 'local')")  # fmt: skip
            self.cluster = slurm_cluster(cfg.slurm)
            self.cluster.scale(jobs=cfg.slurm.jobs)
            self.client = Client(self.cluster)
        else:
            self.client = Client(cfg.cluster)
        self.client.run(_quiet_worker)
        if self.notify is not None:
            self.notify(f"dask {cfg.cluster} cluster, dashboard {self.client.dashboard_link}")
        return self.client

    def pool(
        self,
        n_workers: int | None = None,
        executor: Literal["threads", "processes"] = "processes",
        name: str = "blocks",
    ) -> cf.Executor:
        return _DaskPool(self.start())

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "cluster": self.config.cluster}
        if self.client is not None:
            out["dashboard"] = self.client.dashboard_link
        return out

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None


def slurm_cluster(slurm: SlurmConfig) -> Any:
    """dask-jobqueue's ``SLURMCluster`` for ``[execution.slurm]`` (no job is submitted until it is
    scaled; ``cluster.job_script()`` shows the batch script)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ConfigError("execution.cluster: 'slurm' needs dask-jobqueue "
                          "(pip install 'synapse-toolkit[dask]')") from None  # fmt: skip
    kwargs: dict[str, Any] = {
        "cores": slurm.cores,
        "memory": slurm.memory,
        "processes": slurm.processes,
        "walltime": slurm.walltime,
        "job_extra_directives": list(slurm.job_extra_directives),
        "job_script_prologue": list(slurm.job_script_prologue),
        "scheduler_options": {"dashboard_address": ":0"},
    }
    for key in ("queue", "account", "python", "local_directory", "log_directory"):
        value = getattr(slurm, key)
        if value is not None:
            kwargs[key] = value
    return SLURMCluster(**kwargs)


def make_engine(config: ExecutionConfig | None = None, notify: Notify | None = None) -> Engine:
    """The engine ``[execution]`` asks for (a dask cluster starts only when a stage uses it)."""
    config = config or ExecutionConfig()
    if config.engine == "dask":
        return DaskEngine(config, notify)
    if config.cluster != "local":
        raise ConfigError(f"execution.cluster: {config.cluster!r} needs engine = 'dask'")
    return Engine(config, notify)
