"""`syntk adapt affinities`: label-free adaptation of an affinity model to your volume.

Logic: :mod:`synapse_toolkit.nn.adapt` (mean-teacher consistency on your volume, the source's
labelled data kept in the loss).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from synapse_toolkit.evaluation.fib import DEFAULT_MODEL

app = typer.Typer(no_args_is_help=True, help="Adapt shipped models to your data without labels.")


@app.command("affinities")
def affinities(
    unlabelled: Annotated[
        str, typer.Option(help="Your raw volume, FILE.h5[:DATASET] (no labels needed).")
    ],
    out: Annotated[str, typer.Option(help="Where to write the adapted MODEL.onnx.")],
    model: Annotated[
        str, typer.Option(help="Registry name or .onnx file to start from.")
    ] = DEFAULT_MODEL,
    minutes: Annotated[float, typer.Option(help="Wall-clock training budget.", min=0.1)] = 20.0,
    voxel_size: Annotated[
        tuple[float, float, float] | None,
        typer.Option(help="Your volume's voxel size Z Y X in nm (checked against the model's)."),
    ] = None,
    iterations: Annotated[int, typer.Option(help="Iteration cap.", min=1)] = 1_000_000,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 2e-4,
    threads: Annotated[int, typer.Option(min=1)] = 2,
    seed: Annotated[int, typer.Option()] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Adapt an affinity model to --unlabelled; writes --out with the source's and the volume's
    sha256 and the settings in its metadata (use it as options.model = "MODEL.onnx")."""
    from pathlib import Path

    from synapse_toolkit.fsio import check_destination
    from synapse_toolkit.models import names_a_file
    from synapse_toolkit.nn.adapt import adapt_affinities

    inputs = (Path(unlabelled.split(":", 1)[0]), *([Path(model)] if names_a_file(model) else []))
    check_destination(Path(out), inputs=inputs, overwrite=overwrite, what="adapted model")

    def say(msg: str) -> None:
        if not quiet:
            typer.echo(msg, err=True)

    result = adapt_affinities(
        model, unlabelled, out, minutes=minutes, voxel_size_nm=voxel_size,
        iterations=iterations, lr=lr, num_threads=threads, seed=seed, log=say,
    )  # fmt: skip
    typer.echo(json.dumps(result, indent=1))
