"""`syntk view RUN_DIR|FILE`: open a run directory, a CREMI file or a zarr volume in napari."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


@app.callback(invoke_without_command=True)
def view(
    path: Annotated[
        Path,
        typer.Argument(
            help="A run directory, a CREMI .hdf file or a .zarr volume.", show_default=False
        ),
    ],
) -> None:
    """Open napari (the `viewer` extra) with raw, segmentation, clefts, synaptic sites and
    partner vectors, placed in nanometres."""
    from synapse_toolkit.viewer import open_viewer

    open_viewer(path)
