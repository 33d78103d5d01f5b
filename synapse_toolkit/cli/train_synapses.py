"""`syntk train-synapses clefts|polarity|pruner|synful CONFIG.toml`: train the synapse models.

The command functions are plain functions so that ``syntk train`` can also mount them
(``app.command("clefts")(clefts)``). torch is imported only inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from synapse_toolkit.cli._training import (
    OverwriteOpt,
    ResumeOpt,
    need_torch,
    with_training_overrides,
)
from synapse_toolkit.errors import ConfigError
from synapse_toolkit.nn.run import check_export

app = typer.Typer(no_args_is_help=True, help="Train the synapse models (torch).")

ConfigArg = Annotated[Path, typer.Argument(help="Training config TOML.")]
TimeOpt = Annotated[float | None, typer.Option(help="Override training.time_limit_minutes.")]
ItOpt = Annotated[int | None, typer.Option(help="Override training.iterations.")]


def _detector(
    kind: str, config: Path, time_limit: float | None, iterations: int | None, resume: bool,
    overwrite: bool,
) -> None:  # fmt: skip
    from synapse_toolkit.synapses.train_detectors import load_detector_config

    cfg = load_detector_config(config)
    if cfg.kind != kind:
        raise ConfigError(f"{config}: kind = {cfg.kind!r}, but this command trains {kind!r}")
    cfg = with_training_overrides(cfg, time_limit_minutes=time_limit, iterations=iterations)
    check_export(cfg.training.onnx, resume, overwrite)
    need_torch()
    from synapse_toolkit.synapses.train_detectors import train_detector

    train_detector(cfg, log=typer.echo, resume=resume)  # its last log line is the summary (JSON)


@app.command("clefts")
def clefts(
    config: ConfigArg, time_limit: TimeOpt = None, iterations: ItOpt = None,
    resume: ResumeOpt = False, overwrite: OverwriteOpt = False,
) -> None:  # fmt: skip
    """Train the cleft U-Net (sigmoid, balanced BCE) and export it to ONNX."""
    _detector("clefts", config, time_limit, iterations, resume, overwrite)


@app.command("polarity")
def polarity(
    config: ConfigArg, time_limit: TimeOpt = None, iterations: ItOpt = None,
    resume: ResumeOpt = False, overwrite: OverwriteOpt = False,
) -> None:  # fmt: skip
    """Train the signed-proximity U-Net (tanh, balanced MSE) and export it to ONNX."""
    _detector("polarity", config, time_limit, iterations, resume, overwrite)


@app.command("pruner")
def pruner(
    config: ConfigArg, time_limit: TimeOpt = None, iterations: ItOpt = None,
    resume: ResumeOpt = False, overwrite: OverwriteOpt = False,
) -> None:  # fmt: skip
    """Train the EMSynConn pruning CNN on labelled candidates and export it to ONNX."""
    from synapse_toolkit.synapses.train_pruner import load_pruner_config

    cfg = with_training_overrides(
        load_pruner_config(config), time_limit_minutes=time_limit, iterations=iterations
    )
    check_export(cfg.training.onnx, resume, overwrite)
    need_torch()
    from synapse_toolkit.synapses.train_pruner import train_pruner

    train_pruner(cfg, log=typer.echo, resume=resume)  # its last log line is the summary (JSON)


@app.command("synful")
def synful(
    config: ConfigArg, time_limit: TimeOpt = None, iterations: ItOpt = None,
    resume: ResumeOpt = False, overwrite: OverwriteOpt = False,
) -> None:  # fmt: skip
    """Train the Synful network (post mask + partner vector + direction head), export to ONNX."""
    from synapse_toolkit.synapses.train_synful import load_synful_config

    cfg = with_training_overrides(
        load_synful_config(config), time_limit_minutes=time_limit, iterations=iterations
    )
    check_export(cfg.training.onnx, resume, overwrite)
    need_torch()
    from synapse_toolkit.synapses.train_synful import train_synful

    train_synful(cfg, log=typer.echo, resume=resume)  # its last log line is the summary (JSON)
