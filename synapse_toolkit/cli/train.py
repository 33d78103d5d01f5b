"""`syntk train ...`: train detector networks (needs the `train` extra: torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from synapse_toolkit.cli._training import ResumeOpt, need_torch, with_training_overrides

app = typer.Typer(no_args_is_help=True, help="Train detector networks (torch).")


@app.command("affinities")
def affinities(
    config: Annotated[Path, typer.Argument(help="Training config TOML.")],
    out_dir: Annotated[str | None, typer.Option(help="Override training.out_dir.")] = None,
    time_limit: Annotated[
        float | None, typer.Option(help="Override training.time_limit_minutes.")
    ] = None,
    iterations: Annotated[int | None, typer.Option(help="Override training.iterations.")] = None,
    lr: Annotated[float | None, typer.Option(help="Override training.lr.", min=0)] = None,
    init_from: Annotated[
        str | None, typer.Option(help="Continue from this checkpoint (training.init_from).")
    ] = None,
    resume: ResumeOpt = False,
) -> None:
    """Train an affinity U-Net (MALA style) from CONFIG; prints a JSON summary at the end."""
    from synapse_toolkit.nn.training import load_config

    cfg = with_training_overrides(
        load_config(config),
        out_dir=out_dir,
        time_limit_minutes=time_limit,
        iterations=iterations,
        init_from=init_from,
        lr=lr,
    )
    need_torch()
    from synapse_toolkit.nn.training import train

    summary = train(cfg, log=lambda s: typer.echo(s), resume=resume)
    typer.echo(json.dumps(summary))
