"""`syntk` entry point: joins the command groups and turns SyntkError into one error line."""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import typer
import typer.core

from synapse_toolkit import __version__
from synapse_toolkit.errors import SyntkError

#: Command groups: (name, module under synapse_toolkit.cli, help). Each module exposes `app`.
COMMAND_GROUPS: list[tuple[str, str, str]] = [
    ("plugins", "plugins", "List installed plugins and their stages."),
    ("pipeline", "pipeline", "Validate and run pipelines from TOML configs."),
    ("config", "config", "Show the pipeline config schema."),
    ("train", "train", "Train detector networks (needs torch)."),
    ("export", "export", "Export trained networks (ONNX)."),
    ("datasets", "datasets", "List, fetch and verify registry datasets and models."),
    ("phantom", "phantom", "Generate synthetic EM and calcium data with full ground truth."),
    ("train-synapses", "train_synapses", "Train synapse models: clefts, polarity, pruner, synful."),
    ("score", "score", "Score predictions against ground truth (CREMI, neurofinder, overlap)."),
    ("evaluate", "evaluate", "Evaluate shipped models against classical baselines."),
    ("report", "report", "Write a run's visual report (HTML + PNGs)."),
    ("view", "view", "Open a run, a CREMI file or a zarr volume in napari (viewer extra)."),
    ("cluster", "cluster", "Synapse clustering: train the cluster encoder (autoencoder/VAE)."),
    ("adapt", "adapt", "Adapt shipped models to your volume without labels (needs torch)."),
]


class _Group(typer.core.TyperGroup):
    """Root command group: a SyntkError, or an OSError about a path (unwritable output folder,
    a directory where a file belongs, ...), becomes one line `error: <message>` and exit 1."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except SyntkError as exc:
            typer.echo("error: " + " ".join(str(exc).split()), err=True)
            raise typer.Exit(1) from None
        except OSError as exc:  # a path the user gave cannot be read or written
            if exc.filename is None:
                raise
            where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
            typer.echo(f"error: {where}: {exc.strerror or type(exc).__name__}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    name="syntk",
    cls=_Group,
    help="syntk: connectomics on EM volumes and calcium imaging, one plugin pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"syntk {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """syntk command line."""


for _name, _module, _help in COMMAND_GROUPS:
    _sub = importlib.import_module(f"synapse_toolkit.cli.{_module}").app
    app.add_typer(_sub, name=_name, help=_help)


def main() -> None:
    """Console-script entry point."""
    app()
