"""Pipeline configuration: TOML → validated :class:`PipelineConfig`.

A config names the input (a file or a registry dataset), the output directory, run settings and
a table of **stage instances**, each wired to the artifacts of earlier stages by name
(``"<stage>.<port>"``)::

    [input]
    dataset = "demo/cremi"          # or: path = "sample_A.hdf"

    [output]
    dir = "runs/demo"

    [stages.load]
    kind = "loader"
    plugin = "cremi-hdf5"

    [stages.score]
    kind = "scorer"
    plugin = "cremi-neurons"
    inputs = { prediction = "segment.segmentation", truth = "load.neuron_ids" }

Every error is reported with its key path, e.g. ``stages.score.options.border_nm``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from synapse_toolkit.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """A config section that refuses unknown keys (a typo is an error, not a silent default)."""

    model_config = ConfigDict(extra="forbid")


class InputConfig(StrictModel):
    """Where the data comes from: exactly one of a file path or a registry dataset name."""

    path: Path | None = Field(None, description="An input file (e.g. a CREMI .hdf).")
    dataset: str | None = Field(None, description="A registry dataset name, e.g. 'cremi/sample_A'.")

    @model_validator(mode="after")
    def _one_source(self) -> InputConfig:
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of input.path or input.dataset")
        return self


class OutputConfig(StrictModel):
    dir: Path = Field(description="Run directory: artifacts, manifest and exported files go here.")


class RunConfig(StrictModel):
    n_threads: int = Field(2, ge=1, description="Threads a stage may use.")
    block_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        (32, 256, 256), description="Block shape (z, y, x voxels) for streaming stages."
    )


class SlurmConfig(StrictModel):
    """One SLURM job of dask workers (dask-jobqueue's ``SLURMCluster``)."""

    cores: PositiveInt = Field(4, description="Cores per job.")
    memory: str = Field("16GB", description="Memory per job, e.g. '16GB'.")
    processes: PositiveInt = Field(1, description="Dask worker processes per job.")
    walltime: str = Field("01:00:00", description="Job walltime (HH:MM:SS).")
    queue: str | None = Field(None, description="Partition (#SBATCH -p).")
    account: str | None = Field(None, description="Account (#SBATCH -A).")
    jobs: PositiveInt = Field(1, description="Jobs to start (workers = jobs x processes).")
    job_extra_directives: list[str] = Field(
        default_factory=list, description="Extra #SBATCH lines, e.g. ['--gres=gpu:1']."
    )
    job_script_prologue: list[str] = Field(
        default_factory=list, description="Shell lines run before the worker (module load, ...)."
    )
    python: str | None = Field(None, description="Python on the nodes (default: this one).")
    local_directory: str | None = Field(None, description="Worker scratch directory on a node.")
    log_directory: str | None = Field(None, description="Where SLURM writes job logs.")


class ExecutionConfig(StrictModel):
    """Where blockwise stages run their blocks (:mod:`synapse_toolkit.engines`)."""

    engine: Literal["local", "dask"] = Field(
        "local", description="'local': a pool on this machine, no service; 'dask': a dask cluster."
    )
    cluster: str = Field(
        "local", description="dask only: 'local', 'slurm', or a scheduler address (tcp://...)."
    )
    n_workers: PositiveInt = Field(2, description="Block workers (local engine and dask local).")
    threads_per_worker: PositiveInt = Field(1, description="dask: threads per worker.")
    memory_per_worker: str = Field("4GB", description="dask local: memory limit per worker.")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)


class StageConfig(StrictModel):
    """One stage instance."""

    kind: str = Field(description="Stage kind: loader, aligner, detector, ... or a plugin's kind.")
    plugin: str = Field(description="Registered plugin name for that kind.")
    options: dict[str, Any] = Field(default_factory=dict, description="The plugin's options.")
    inputs: dict[str, str] = Field(
        default_factory=dict, description="Input port → artifact name '<stage>.<port>'."
    )
    enabled: bool = Field(True, description="Set false to skip this stage.")
    on_missing_input: Literal["error", "skip"] = Field(
        "error",
        description="'skip': leave the stage out when an upstream stage produced no data for one "
        "of its inputs (e.g. a scorer on an input without ground truth).",
    )

    @field_validator("inputs")
    @classmethod
    def _artifact_names(cls, value: dict[str, str]) -> dict[str, str]:
        for port, ref in value.items():
            if ref.count(".") != 1 or not all(ref.split(".")):
                raise ValueError(f"inputs.{port}: {ref!r} is not '<stage>.<port>'")
        return value


class PipelineConfig(StrictModel):
    """A whole pipeline run."""

    name: str = Field("pipeline", description="A name for the run.")
    input: InputConfig
    output: OutputConfig
    run: RunConfig = Field(default_factory=RunConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    stages: dict[str, StageConfig] = Field(description="Stage instances by name, in file order.")
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _cli_keys: frozenset[str] = PrivateAttr(default_factory=frozenset)

    def resolve_path(self, key: str, value: Path) -> Path:
        """``value`` made absolute: against the working directory if ``key`` (e.g.
        ``stages.detect.options.model_path``) came from ``--set``, else the TOML's folder."""
        value = Path(value).expanduser()
        if value.is_absolute():
            return value
        return (Path.cwd() if key in self._cli_keys else self._base_dir) / value

    @field_validator("stages")
    @classmethod
    def _stage_names(cls, value: dict[str, StageConfig]) -> dict[str, StageConfig]:
        if not value:
            raise ValueError("a pipeline needs at least one stage")
        for name in value:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"stage name {name!r} may hold only letters, digits, '-' and '_'")
        return value


def _key_path(loc: Iterable[Any]) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after", "function-before"))


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """The first error as `key.path: message`."""
    err = exc.errors()[0]
    path = _key_path((*([prefix] if prefix else []), *err["loc"]))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "value_error" and "error" in err.get("ctx", {}):
        msg = str(err["ctx"]["error"])  # a validator's own words, without pydantic's prefix
    return f"{path}: {msg}" if path else msg


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``key.path=value``; the value is read as TOML when it parses, else as a string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return parts, value


def apply_overrides(doc: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a raw config document (in place, returned)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = doc
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {part} is not a table")
            node = child
        node[parts[-1]] = value
        # input.path and input.dataset are alternatives: setting one replaces the other
        if parts[:1] == ["input"] and len(parts) == 2 and parts[1] in ("path", "dataset"):
            other = "dataset" if parts[1] == "path" else "path"
            node.pop(other, None)
    return doc


def read_toml(path: Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file as a dict; any problem is one ConfigError naming the file."""
    if not path.exists():
        raise ConfigError(f"{path}: {what} not found")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a {what}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from None


def _merged(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        out[key] = (
            _merged(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
        )
    return out


def load_config_document(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A pipeline TOML as a dict. ``extends = "other.toml"`` (relative to this file) starts from
    that file's document and overrides it table by table, so a variant (e.g. another
    ``[execution]``) does not repeat the stages."""
    doc = read_toml(path)
    base = doc.pop("extends", None)
    if base is None:
        return doc
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends must be a file name")
    base_path = (path.parent / base).resolve()
    if base_path in _seen or base_path == path.resolve():
        raise ConfigError(f"{path}: extends {base} forms a cycle")
    return _merged(load_config_document(base_path, (*_seen, path.resolve())), doc)


def parse_config(
    doc: Mapping[str, Any], base_dir: Path | None = None, cli_keys: Iterable[str] = ()
) -> PipelineConfig:
    """Validate a config document. Relative ``input.path`` and ``output.dir`` resolve against
    ``base_dir`` (the TOML's folder), or the working directory when given on the command line
    (their key in ``cli_keys``)."""
    try:
        cfg = PipelineConfig.model_validate(dict(doc))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    cfg._base_dir = base_dir or Path.cwd()
    cfg._cli_keys = frozenset(cli_keys)
    if cfg.input.path is not None:
        cfg.input.path = cfg.resolve_path("input.path", cfg.input.path)
    cfg.output.dir = cfg.resolve_path("output.dir", cfg.output.dir)
    return cfg


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> PipelineConfig:
    """Read, override and validate a pipeline TOML file.

    One path rule: a relative path written in the TOML resolves against the TOML's folder; one
    given with ``--set`` resolves against the working directory.
    """
    p = Path(path)
    overrides = list(overrides)
    doc = apply_overrides(load_config_document(p), overrides)
    keys = [".".join(parse_override(o)[0]) for o in overrides]
    try:
        return parse_config(doc, base_dir=p.resolve().parent, cli_keys=keys)
    except ConfigError as exc:  # the key at fault, in the file at fault
        raise ConfigError(f"{p}: {exc}") from None


def load_training_config(path: str | Path, model: type[M]) -> M:
    """Read a training TOML and validate it as ``model``; errors name the file."""
    p = Path(path)
    raw = read_toml(p, "training config")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{p}: {format_validation_error(exc)}") from None


def config_json_schema() -> dict[str, Any]:
    return PipelineConfig.model_json_schema()
