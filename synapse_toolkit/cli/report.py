"""`syntk report RUN_DIR`: write a run's visual report (report.html + report/*.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


@app.callback(invoke_without_command=True)
def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory (holds manifest.json).", show_default=False)
    ],
) -> None:
    """Write report.html and report/*.png into a run directory: sections with overlays, scores
    with a reading per metric, timings and warnings."""
    from synapse_toolkit.report import write_report

    typer.echo(str(write_report(run_dir)))
