"""The Python API for notebooks and scripts: run one stage on in-memory data, score arrays or
files, run a pipeline file. Everything here goes through the same code as the CLI.

See ``docs/api.md`` for worked examples (they run as tests).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from synapse_toolkit.config import format_validation_error, load_config
from synapse_toolkit.errors import ConfigError, DataError, PluginError
from synapse_toolkit.plugin_manager import PluginSet, get_plugins
from synapse_toolkit.scoring import score_files
from synapse_toolkit.stages import StageContext, StageOptions, check_grids

__all__ = ["run_pipeline_file", "run_stage", "score_files"]


def run_stage(
    kind: str,
    plugin: str,
    inputs: Mapping[str, Any],
    options: Mapping[str, Any] | StageOptions | None = None,
    *,
    scratch_dir: str | Path | None = None,
    n_threads: int = 2,
    block_shape: tuple[int, int, int] = (32, 256, 256),
    plugins: PluginSet | None = None,
) -> dict[str, Any]:
    """Run the registered stage ``kind``/``plugin`` once on ``inputs`` (port → data object, e.g.
    :class:`~synapse_toolkit.data.Volume` over a numpy array) and return its outputs, checked
    against its ports as the pipeline runner checks them. ``options`` is a dict or the stage's
    validated options object.

    Large outputs are zarr arrays in ``scratch_dir`` (a new temporary folder by default, kept
    so the returned volumes stay readable).
    """
    from synapse_toolkit.pipeline import PlannedStage, check_outputs

    registered = (plugins or get_plugins()).stages.get(kind, plugin)
    cls = registered.cls
    try:
        opts = (options if isinstance(options, StageOptions)
                else cls.Options.model_validate(dict(options or {})))  # fmt: skip
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix=f"{plugin} options")) from None
    for port, spec in cls.inputs.items():
        if port not in inputs:
            if spec.required:
                raise DataError(f"{plugin}: required input {port!r} is missing")
            continue
        problem = spec.problem(inputs[port])
        if problem:
            raise DataError(f"{plugin}: input {port!r} {problem}")
    unknown = set(inputs) - set(cls.inputs)
    if unknown:
        raise PluginError(f"{plugin} has no input(s) {', '.join(sorted(unknown))}")
    check_grids(plugin, cls.inputs, inputs)
    scratch = Path(scratch_dir or tempfile.mkdtemp(prefix=f"syntk-{plugin}-"))
    scratch.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(stage_name=plugin, scratch_dir=scratch, n_threads=n_threads,
                       block_shape=block_shape)  # fmt: skip
    stage = cls(opts, ctx)
    try:
        outputs = stage.run(dict(inputs))
    finally:
        stage.close()
    planned = PlannedStage(plugin, registered, opts, {})
    return check_outputs(planned, outputs)


def run_pipeline_file(
    path: str | Path, overrides: Sequence[str] = (), *, resume: bool = False
) -> dict[str, Any]:
    """Run a pipeline TOML (``--set``-style ``overrides``); returns the scores by artifact."""
    from synapse_toolkit.pipeline import plan_pipeline, run_pipeline

    result = run_pipeline(plan_pipeline(load_config(path, overrides)), resume=resume)
    try:
        return result.scores()
    finally:
        result.close()
