"""`syntk cluster train CONFIG.toml`: train the synapse cluster encoder (also mounted as
`syntk train cluster-encoder`). torch is imported only inside the command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from synapse_toolkit.errors import SyntkError

app = typer.Typer(no_args_is_help=True, help="Synapse clustering (autoencoder + k-means).")


@app.command("train")
def cluster_encoder(
    config: Annotated[Path, typer.Argument(help="Training config TOML.")],
    time_limit: Annotated[
        float | None, typer.Option(help="Override training.time_limit_minutes.")
    ] = None,
    iterations: Annotated[int | None, typer.Option(help="Override training.iterations.")] = None,
) -> None:
    """Train the synapse cluster encoder (3D conv AE or VAE) and export it to ONNX."""
    from synapse_toolkit.synapses.train_cluster_encoder import load_cluster_config

    cfg = load_cluster_config(config)
    updates: dict[str, object] = {}
    if time_limit is not None:
        updates["time_limit_minutes"] = time_limit
    if iterations is not None:
        updates["iterations"] = iterations
    if updates:
        cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update=updates)})
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise SyntkError("training needs torch: pip install 'synapse-toolkit[train]'") from exc
    from synapse_toolkit.synapses.train_cluster_encoder import train_cluster_encoder

    typer.echo(json.dumps(train_cluster_encoder(cfg, log=typer.echo)))


def _mount() -> None:
    """Also offer the command as `syntk train cluster-encoder`."""
    from synapse_toolkit.cli.train import app as train_app

    train_app.command("cluster-encoder")(cluster_encoder)


_mount()
