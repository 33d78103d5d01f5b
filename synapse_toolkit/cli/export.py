"""`syntk export ...`: export trained checkpoints (needs the `train` extra: torch, onnx)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Export trained networks.")


@app.command("onnx")
def onnx(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (.pt) written by syntk train.")],
    out: Annotated[Path, typer.Argument(help="Output .onnx file (weights embedded).")],
    input_shape: Annotated[
        str | None, typer.Option(help="Input tile shape z,y,x (default: the training shape).")
    ] = None,
    intensity_reference: Annotated[
        bool,
        typer.Option(
            help="Store the training volumes' grey-value quantiles, so inference matches "
            "other volumes' intensities to them (reads the training files)."
        ),
    ] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT file.")] = False,
) -> None:
    """Export CHECKPOINT to ONNX (opset 20) and check ONNX Runtime against torch (< 1e-4)."""
    from synapse_toolkit.fsio import check_destination
    from synapse_toolkit.nn.export import export_checkpoint

    check_destination(out, inputs=(checkpoint,), overwrite=overwrite, what="ONNX model")

    shape = None
    if input_shape is not None:
        try:
            shape = tuple(int(v) for v in input_shape.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 3:
            from synapse_toolkit.errors import SyntkError

            raise SyntkError(f"--input-shape must be three integers z,y,x, got {input_shape!r}")
    report = export_checkpoint(
        checkpoint, out, input_shape=shape, intensity_reference=intensity_reference
    )
    typer.echo(json.dumps(report))


@app.command("ome-zarr")
def ome_zarr(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (holds manifest.json).")],
    levels: Annotated[
        int, typer.Option(min=0, help="Downsampled pyramid levels (intensity mean, labels mode).")
    ] = 0,
) -> None:
    """OME-Zarr (NGFF 0.5, nm) beside every volume artifact of a run: linked views of zarr
    artifacts, copies of volumes read in place from the input file (e.g. CREMI raw)."""
    from synapse_toolkit.io.ngff import export_run

    for path in export_run(run_dir, levels):
        typer.echo(str(path))


@app.command("neuroglancer")
def neuroglancer(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (holds manifest.json).")],
    serve: Annotated[
        bool, typer.Option("--serve", help="Serve the run directory (CORS open) until Ctrl-C.")
    ] = False,
    port: Annotated[
        int, typer.Option(help="Port of the local file server.", min=1, max=65535)
    ] = 9015,
    levels: Annotated[
        int, typer.Option(min=0, help="Downsampled pyramid levels of the OME-Zarr views.")
    ] = 0,
) -> None:
    """Write RUN_DIR/neuroglancer.json (OME-Zarr image and segmentation layers, partner lines)
    and print the neuroglancer URL; --serve answers the URL's data requests locally."""
    from synapse_toolkit import neuroglancer_export as ng

    path = ng.write_state(run_dir, f"http://127.0.0.1:{port}", levels=levels)
    typer.echo(f"state: {path}")
    typer.echo(ng.state_url(json.loads(path.read_text())))
    if serve:
        server = ng.serve(run_dir, port=port)
        typer.echo(f"serving {run_dir} on http://127.0.0.1:{port} (Ctrl-C stops)", err=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
