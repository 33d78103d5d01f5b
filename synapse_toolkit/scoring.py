"""Score files with any registered scorer stage: the one path behind ``syntk score``.

A scorer is a pipeline stage; scoring two files runs that same stage with the same option
defaults on what the pipeline's own loaders read from the files, so ``syntk score NAME`` and a
pipeline's ``NAME`` scorer give the same figure. Third-party scorers take part automatically.

Files are read by type: neurofinder JSON (``.json``: a list of regions), zarr stores
(directories / ``.zarr``) and CREMI HDF5 (anything else). A scorer says which dataset of which
file feeds each port in ``file_inputs`` (e.g. ``{"prediction": ("prediction", "neuron_ids")}``);
without it, a port takes the one artifact of its type in the file of its role.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from synapse_toolkit.config import format_validation_error
from synapse_toolkit.data import ScoreRecord
from synapse_toolkit.errors import ConfigError, DataError
from synapse_toolkit.plugin_manager import PluginSet, get_plugins
from synapse_toolkit.stage_registry import RegisteredStage
from synapse_toolkit.stages import Stage, StageContext

ROLES = ("truth", "prediction")


def scorers(plugins: PluginSet | None = None) -> list[RegisteredStage]:
    """Every registered scorer stage, by name."""
    reg = (plugins or get_plugins()).stages
    return [reg.get("scorer", n) for n in reg.names("scorer")]


def get_scorer(name: str, plugins: PluginSet | None = None) -> RegisteredStage:
    """The registered scorer ``name``; a one-line error listing the choices otherwise."""
    return (plugins or get_plugins()).stages.get("scorer", name)


def _loader_for(path: Path, plugins: PluginSet) -> RegisteredStage:
    name = "zarr" if path.is_dir() or path.suffix == ".zarr" else "cremi-hdf5"
    return plugins.stages.get("loader", name)


def read_file(path: Path, stack: ExitStack, plugins: PluginSet, scratch: Path) -> dict[str, Any]:
    """What the pipeline's loader reads from ``path`` (artifacts by name), kept open on
    ``stack``; neurofinder JSON gives ``{"regions": Regions}``."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".json":
        from synapse_toolkit.metrics.neurofinder import load_regions

        return {"regions": load_regions(path)}
    loader = _loader_for(path, plugins)
    ctx = StageContext(stage_name=f"read {path.name}", scratch_dir=scratch, input_path=path)
    stage: Stage[Any] = loader.cls(loader.cls.Options(), ctx)
    stack.callback(stage.close)
    return dict(stage.run({}))


def _pick(cls: type[Stage[Any]], port: str, role: str, found: Mapping[str, Any],
          path: Path, dataset: str | None) -> Any:  # fmt: skip
    spec = cls.inputs[port]
    declared = getattr(cls, "file_inputs", {}).get(port)
    key = declared[1] if declared else None
    if dataset is not None and spec.artifact.is_volume:
        key = dataset
    if key is not None:
        if key not in found:
            have = ", ".join(found) or "nothing"
            raise DataError(f"{path}: no {key} for {cls.name} {port!r} (the file has: {have})")
        return found[key]
    fits = [k for k, v in found.items() if spec.problem(v) is None]
    if len(fits) == 1:
        return found[fits[0]]
    if not fits:  # e.g. an HDF5 volume where the scorer wants regions or a table
        have = ", ".join(found) or "nothing it can read"
        raise DataError(f"{path}: {cls.name} needs {spec.type} for {port!r} ({spec.doc})"
                        f"; this file holds {have}")  # fmt: skip
    raise DataError(f"{path}: cannot tell which of {', '.join(fits)} feeds "
                    f"{cls.name} {port!r}; the scorer should declare file_inputs")  # fmt: skip


def role_of(cls: type[Stage[Any]], port: str) -> str:
    declared = getattr(cls, "file_inputs", {}).get(port)
    if declared:
        return str(declared[0])
    return "truth" if port.startswith("truth") else "prediction"


def parse_options(cls: type[Stage[Any]], options: Mapping[str, Any]) -> Any:
    """The scorer's options from ``options`` (CLI names with ``-`` or ``_``); one-line error."""
    clean = {k.replace("-", "_"): v for k, v in options.items() if v is not None}
    try:
        return cls.Options.model_validate(clean)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix=f"{cls.name} options")) from None


def score_files(
    name: str,
    truth: Path,
    prediction: Path,
    options: Mapping[str, Any] | None = None,
    *,
    dataset: str | None = None,
    n_threads: int = 2,
    block_z: int = 32,
    plugins: PluginSet | None = None,
) -> ScoreRecord:
    """Score ``prediction`` against ``truth`` with the registered scorer ``name``.

    ``dataset`` reads this dataset (e.g. ``neuron_ids``) for every volume port instead of the
    scorer's default; ``block_z`` sections are counted at a time.
    """
    plugins = plugins or get_plugins()
    reg = get_scorer(name, plugins)
    cls = reg.cls
    opts = parse_options(cls, options or {})
    files = {"truth": Path(truth), "prediction": Path(prediction)}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="syntk-score-") as tmp:
        scratch = Path(tmp)
        found = {role: read_file(files[role], stack, plugins, scratch) for role in ROLES}
        inputs: dict[str, Any] = {}
        for port, spec in cls.inputs.items():
            role = role_of(cls, port)
            try:
                inputs[port] = _pick(cls, port, role, found[role], files[role], dataset)
            except DataError:
                if spec.required:
                    raise
                continue
            problem = spec.problem(inputs[port])
            if problem:
                raise DataError(f"{files[role]}: {cls.name} {port!r} {problem}")
        from synapse_toolkit.api import run_stage  # the API re-exports this module's scoring

        out = run_stage("scorer", name, inputs, opts, scratch_dir=scratch, n_threads=n_threads,
                        block_shape=(block_z, 1 << 30, 1 << 30), plugins=plugins)  # fmt: skip
    record: ScoreRecord = out["scores"]  # checked against the scorer's standard port
    return record


def directions(cls: type[Stage[Any]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(lower-is-better, higher-is-better) metric names a scorer declares."""
    return (tuple(getattr(cls, "lower_is_better", ())), tuple(getattr(cls, "higher_is_better", ())))
