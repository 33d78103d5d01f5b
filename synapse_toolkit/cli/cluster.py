"""`syntk cluster run FILE.hdf`: cluster the synapses of a CREMI file outside a pipeline;
`syntk cluster train CONFIG.toml`: train the synapse cluster encoder (also mounted as
`syntk train cluster-encoder`). torch is imported only inside the training command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from synapse_toolkit.cli._training import (
    OverwriteOpt,
    ResumeOpt,
    need_torch,
    with_training_overrides,
)
from synapse_toolkit.errors import SyntkError
from synapse_toolkit.nn.run import check_export

if TYPE_CHECKING:
    from synapse_toolkit.data import Volume
    from synapse_toolkit.io.cremi import CremiData

app = typer.Typer(no_args_is_help=True, help="Synapse clustering (autoencoder + k-means).")


@app.command("train")
def cluster_encoder(
    config: Annotated[Path, typer.Argument(help="Training config TOML.")],
    time_limit: Annotated[
        float | None, typer.Option(help="Override training.time_limit_minutes.")
    ] = None,
    iterations: Annotated[int | None, typer.Option(help="Override training.iterations.")] = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train the synapse cluster encoder and export it to ONNX (export.path)."""
    from synapse_toolkit.synapses.train_cluster_encoder import load_cluster_config

    cfg = with_training_overrides(
        load_cluster_config(config), time_limit_minutes=time_limit, iterations=iterations
    )
    check_export(cfg.export.path, resume, overwrite)
    need_torch()
    from synapse_toolkit.synapses.train_cluster_encoder import train_cluster_encoder

    typer.echo(json.dumps(train_cluster_encoder(cfg, log=typer.echo, resume=resume)))


@app.command("run")
def run(
    path: Annotated[
        Path, typer.Argument(help="CREMI HDF5 file with raw, annotations and neuron_ids.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for clusters.json and PNGs.")] = Path(
        "clusters"
    ),
    k: Annotated[int | None, typer.Option("--k", help="Number of clusters (none: choose).")] = None,
    model: Annotated[str | None, typer.Option(help="Registry name of the encoder.")] = None,
    straighten_on: Annotated[
        Literal["auto", "neuron_ids", "clefts"],
        typer.Option(
            help="What the patches are straightened on: the file's volumes/labels/neuron_ids "
            "(pre/post boundary) or its volumes/labels/clefts (cleft centre); auto: neuron_ids "
            "when the file has them, else clefts."
        ),
    ] = "auto",
) -> None:
    """Cluster the annotated synapses of PATH (autoencoder-kmeans); scores against the true
    types when PATH is a phantom."""
    from synapse_toolkit.api import run_stage
    from synapse_toolkit.data import PartnerTable
    from synapse_toolkit.fsio import atomic_write_text
    from synapse_toolkit.io.cremi import open_cremi

    opts: dict[str, object] = {"k": k}
    if model:
        opts["model"] = model
    truth = run_stage("loader", "phantom-synapse-types", {}, {"path": str(path)}).get("types")
    with open_cremi(path) as data:
        if data.raw is None or data.annotations is None:
            raise SyntkError(f"{path}: needs volumes/raw and annotations")
        inputs = {"raw": data.raw, "partners": PartnerTable.from_annotations(data.annotations)}
        inputs.update(_contact_inputs(path, data, straighten_on))
        if truth is not None:
            inputs["truth"] = truth
        out.mkdir(parents=True, exist_ok=True)  # only once the input is known to be usable
        clusters = run_stage("clusterer", "autoencoder-kmeans", inputs, opts, scratch_dir=out)[
            "clusters"
        ]
    atomic_write_text(out / "clusters.json", json.dumps(clusters.to_dict()))
    counts = {int(c): int((clusters.labels == c).sum()) for c in set(clusters.labels.tolist())}
    typer.echo(f"{len(clusters.labels)} synapses in {len(counts)} clusters {counts}; "
               f"wrote {out / 'clusters.json'} and PNGs")  # fmt: skip
    if truth is not None:
        score = run_stage("scorer", "clustering", {"prediction": clusters, "truth": truth})
        v = score["scores"].values
        typer.echo(f"against the true types: ARI {v['ari']:.3f} NMI {v['nmi']:.3f} "
                   f"AMI {v['ami']:.3f}")  # fmt: skip


def _contact_inputs(path: Path, data: CremiData, straighten_on: str) -> dict[str, Volume]:
    """The clusterer input the shipped encoders straighten patches on: ``labels`` (the file's
    neuron ids) or ``clefts`` (its cleft labels as a cleft map); none if the file has neither
    (the clusterer then names what is missing)."""
    from synapse_toolkit.synapses.patches import cleft_mask_map

    if straighten_on == "auto":
        if data.neuron_ids is None and data.clefts is None:
            return {}
        straighten_on = "neuron_ids" if data.neuron_ids is not None else "clefts"
    volume = data.neuron_ids if straighten_on == "neuron_ids" else data.clefts
    if volume is None:
        raise SyntkError(f"{path}: --straighten-on {straighten_on} needs volumes/labels/"
                         f"{straighten_on}")  # fmt: skip
    if straighten_on == "neuron_ids":
        return {"labels": volume}
    return {"clefts": cleft_mask_map(volume)}


def _mount() -> None:
    """Also offer the command as `syntk train cluster-encoder`."""
    from synapse_toolkit.cli.train import app as train_app

    train_app.command("cluster-encoder")(cluster_encoder)


_mount()
