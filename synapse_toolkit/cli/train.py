"""`syntk train ...`: train detector networks (needs the `train` extra: torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Train detector networks (torch).")


@app.command("affinities")
def affinities(
    config: Annotated[Path, typer.Argument(help="Training config TOML.")],
    out_dir: Annotated[str | None, typer.Option(help="Override training.out_dir.")] = None,
    time_limit: Annotated[
        float | None, typer.Option(help="Override training.time_limit_minutes.")
    ] = None,
    iterations: Annotated[int | None, typer.Option(help="Override training.iterations.")] = None,
    init_from: Annotated[
        str | None, typer.Option(help="Continue from this checkpoint (training.init_from).")
    ] = None,
) -> None:
    """Train an affinity U-Net (MALA style) from CONFIG; prints a JSON summary at the end."""
    from synapse_toolkit.nn.training import load_config

    cfg = load_config(config)
    updates: dict[str, object] = {}
    if out_dir is not None:
        updates["out_dir"] = out_dir
    if time_limit is not None:
        updates["time_limit_minutes"] = time_limit
    if iterations is not None:
        updates["iterations"] = iterations
    if init_from is not None:
        updates["init_from"] = init_from
    if updates:
        cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update=updates)})
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        from synapse_toolkit.errors import SyntkError

        raise SyntkError("syntk train needs torch: pip install 'synapse-toolkit[train]'") from exc
    from synapse_toolkit.nn.training import train

    summary = train(cfg, log=lambda s: typer.echo(s))
    typer.echo(json.dumps(summary))
