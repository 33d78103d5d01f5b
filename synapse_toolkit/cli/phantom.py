"""`syntk phantom em|calcium`: synthetic data with complete ground truth."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from synapse_toolkit.errors import SyntkError

app = typer.Typer(no_args_is_help=True)


@app.command("em")
def em(
    out: Annotated[Path, typer.Argument(help="Output: CREMI HDF5 (.h5/.hdf) or zarr (.zarr).")],
    shape: Annotated[
        tuple[int, int, int], typer.Option("--shape", help="Volume shape Z Y X (voxels).")
    ] = (20, 256, 256),
    voxel_size: Annotated[
        tuple[float, float, float], typer.Option("--voxel-size", help="Voxel size Z Y X (nm).")
    ] = (40.0, 4.0, 4.0),
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same bytes).")] = 0,
    synapses: Annotated[
        int | None, typer.Option("--synapses", help="Number of synapses (default: by density).")
    ] = None,
    types: Annotated[int, typer.Option("--types", help="Number of synapse types K (1-6).")] = 3,
    misalign: Annotated[
        bool, typer.Option("--misalign", help="Shift sections (recorded).")
    ] = False,
    defects: Annotated[
        bool, typer.Option("--defects", help="Add missing and defective sections.")
    ] = False,
    block: Annotated[
        tuple[int, int, int], typer.Option("--block", help="Block shape Z Y X for streaming.")
    ] = (16, 512, 512),
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT if it exists.")
    ] = False,
) -> None:
    """Generate a synthetic serial-section EM volume with neurons, synapses and annotations."""
    from synapse_toolkit.phantom.em import EMPhantom
    from synapse_toolkit.phantom.params import EMPhantomParams
    from synapse_toolkit.phantom.store import write_phantom

    if out.suffix not in (".h5", ".hdf", ".hdf5", ".zarr"):
        raise SyntkError(f"{out}: output must end in .h5, .hdf, .hdf5 or .zarr")
    if min(block) < 1:
        raise SyntkError(f"--block must be positive, got {block}")
    t0 = time.perf_counter()
    params = EMPhantomParams(shape=shape, voxel_size_nm=voxel_size, seed=seed, n_synapses=synapses,
                             n_types=types, misalign=misalign, defects=defects)  # fmt: skip
    ph = EMPhantom(params)
    write_phantom(ph, out, overwrite=overwrite, block_shape=block)
    n_posts = sum(len(s.contacts) for s in ph.synapses)
    if len(ph.synapses) < params.synapse_count():
        typer.echo(
            f"note: placed {len(ph.synapses)} of {params.synapse_count()} requested synapses "
            f"(no more contacts at least {params.min_synapse_distance_nm:g} nm apart)",
            err=True,
        )
    typer.echo(
        f"wrote {out}: {shape[0]}x{shape[1]}x{shape[2]} voxels at {voxel_size} nm, "
        f"{ph.field.n_neurons} neurons grown, {len(ph.synapses)} synapses "
        f"({n_posts} partner pairs, {types} types), {len(ph.defects)} defective sections, "
        f"seed {seed} [{time.perf_counter() - t0:.1f} s]"
    )


@app.command("calcium")
def calcium(
    out: Annotated[Path, typer.Argument(help="Output folder (neurofinder layout).")],
    frames: Annotated[int, typer.Option("--frames", help="Number of frames T.")] = 300,
    shape: Annotated[tuple[int, int], typer.Option("--shape", help="Frame shape H W.")] = (
        128,
        128,
    ),
    cells: Annotated[int, typer.Option("--cells", help="Number of cells.")] = 40,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT if it exists.")
    ] = False,
) -> None:
    """Generate a two-photon calcium movie (TIFF frames, regions/regions.json, info.json)."""
    from synapse_toolkit.phantom.calcium import generate_calcium, write_calcium
    from synapse_toolkit.phantom.params import CalciumPhantomParams

    params = CalciumPhantomParams(frames=frames, shape=shape, n_cells=cells, seed=seed)
    ph = generate_calcium(params)
    write_calcium(ph, out, overwrite=overwrite)
    typer.echo(
        f"wrote {out}: {frames} frames of {shape[0]}x{shape[1]}, "
        f"{len(ph.regions)} cells, seed {seed}"
    )
