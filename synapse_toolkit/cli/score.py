"""`syntk score`: score predictions against ground truth with the challenge metrics.

CREMI files (HDF5) are read through :mod:`synapse_toolkit.io.cremi` with volumes left on disk
(scored block by block); neurofinder files are JSON region lists.
"""

from __future__ import annotations

import csv
import glob as globlib
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from synapse_toolkit.errors import DataError, SyntkError
from synapse_toolkit.fsio import atomic_write_text, check_destination

app = typer.Typer(no_args_is_help=True, help="Score predictions against ground truth.")

METRICS = ("cremi-neurons", "cremi-clefts", "cremi-partners", "synapse-overlap", "neurofinder")

TruthArg = Annotated[Path, typer.Argument(help="Ground-truth file.")]
PredArg = Annotated[Path, typer.Argument(help="Prediction file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the scores as JSON.")]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=1, help="Threads for counting.")]


# -- scoring one pair ----------------------------------------------------------------------------


def _volume(data: Any, key: str, path: Path) -> Any:
    from synapse_toolkit.io.checks import check_labels

    vol = getattr(data, key)
    if vol is None:
        raise DataError(f"{path}: no {key} volume (volumes/labels/{key})")
    check_labels(vol, f"{path} ({key})")
    return vol


def _block(vol: Any, block_z: int) -> tuple[int, int, int]:
    return (block_z, vol.spatial_shape[1], vol.spatial_shape[2])


def score_files(metric: str, truth: Path, pred: Path, **opts: Any) -> dict[str, Any]:
    """Score one (truth, prediction) file pair with ``metric``; returns the metric values."""
    from synapse_toolkit.io.cremi import open_cremi

    if metric == "neurofinder":
        from synapse_toolkit.metrics.neurofinder import load_regions, score_neurofinder

        s = score_neurofinder(load_regions(truth), load_regions(pred), opts.get("threshold", 5.0))
        return s.as_dict()
    if metric not in METRICS:
        raise SyntkError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    block_z = int(opts.get("block_z", 16))
    with open_cremi(truth) as t, open_cremi(pred) as p:
        if metric == "cremi-neurons":
            from synapse_toolkit.metrics.cremi_neurons import score_neuron_ids

            tv, pv = _volume(t, "neuron_ids", truth), _volume(p, "neuron_ids", pred)
            return score_neuron_ids(
                tv, pv, border_threshold_nm=opts.get("border_nm"), block_shape=_block(tv, block_z),
                n_threads=int(opts.get("threads", 2)),
            ).as_dict()  # fmt: skip
        if metric == "cremi-clefts":
            from synapse_toolkit.metrics.cremi_clefts import score_clefts

            tv, pv = _volume(t, "clefts", truth), _volume(p, "clefts", pred)
            return score_clefts(
                tv, pv, threshold_nm=opts.get("threshold_nm") or 200.0,
                block_shape=_block(tv, block_z),
                reference_artifacts=bool(opts.get("reference_artifacts", False)),
            ).as_dict()  # fmt: skip
        if metric == "cremi-partners":
            from synapse_toolkit.metrics.cremi_partners import score_partners

            seg = _volume(t, "neuron_ids", truth)
            if t.annotations is None:
                raise DataError(f"{truth}: no annotations")
            if p.annotations is None:
                raise DataError(f"{pred}: no annotations")
            s = score_partners(
                p.annotations, t.annotations, seg,
                matching_threshold=opts.get("threshold_nm") or 400.0,
                rounding=opts.get("rounding", "half_away"),
            )  # fmt: skip
            return s.as_dict()
        # synapse-overlap
        from synapse_toolkit.metrics.overlap import score_overlap

        key = opts.get("dataset", "clefts")
        if key not in ("clefts", "neuron_ids"):
            raise DataError(f"--dataset must be 'clefts' or 'neuron_ids', got {key!r}")
        tv, pv = _volume(t, key, truth), _volume(p, key, pred)
        background = opts.get("background")
        if background is None:
            background = 0xFFFFFFFFFFFFFFFF if key == "clefts" else 0
        return score_overlap(
            tv, pv, threshold=opts.get("threshold", 0.5), measure=opts.get("measure", "iou"),
            background=int(background), block_shape=_block(tv, block_z),
        ).as_dict()  # fmt: skip


# -- output --------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        text = f"{v:.6g}"
        return text if any(c in text for c in ".e") else text + ".0"  # floats look like floats
    return str(v)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _print_scores(metric: str, values: dict[str, Any], as_json: bool) -> None:
    if as_json:
        safe = {k: _json_safe(v) for k, v in values.items()}
        typer.echo(json.dumps({"metric": metric, "values": safe}, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=metric)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in values.items():
        table.add_row(k, _fmt(v))
    Console().print(table)


# -- single-pair commands ------------------------------------------------------------------------


def _single(metric: str) -> Callable[..., None]:
    def run(truth: Path, pred: Path, as_json: bool, **opts: Any) -> None:
        _print_scores(metric, score_files(metric, truth, pred, **opts), as_json)

    return run


@app.command("cremi-neurons")
def cremi_neurons(
    truth: TruthArg,
    pred: PredArg,
    border_nm: Annotated[
        float | None, typer.Option("--border-nm", help="Border mask (nm; CREMI used 25).")
    ] = None,
    block_z: Annotated[int, typer.Option("--block-z", min=1, help="Sections per block.")] = 16,
    threads: ThreadsOpt = 2,
    as_json: JsonOpt = False,
) -> None:
    """VOI split/merge, adapted Rand and CREMI score of volumes/labels/neuron_ids."""
    _single("cremi-neurons")(truth, pred, as_json, border_nm=border_nm, block_z=block_z,
                             threads=threads)  # fmt: skip


@app.command("cremi-clefts")
def cremi_clefts(
    truth: TruthArg,
    pred: PredArg,
    threshold_nm: Annotated[float, typer.Option("--threshold-nm", help="FP/FN distance.")] = 200.0,
    reference_artifacts: Annotated[
        bool, typer.Option("--reference-artifacts", help="cremi_python numbers for empty volumes.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """FP/FN counts, distance statistics and cleft score of volumes/labels/clefts."""
    _single("cremi-clefts")(truth, pred, as_json, threshold_nm=threshold_nm,
                            reference_artifacts=reference_artifacts)  # fmt: skip


@app.command("cremi-partners")
def cremi_partners(
    truth: TruthArg,
    pred: PredArg,
    threshold_nm: Annotated[
        float, typer.Option("--threshold-nm", help="Matching distance.")
    ] = 400.0,
    rounding: Annotated[
        str, typer.Option("--rounding", help="half_away (challenge server) or half_even.")
    ] = "half_away",
    as_json: JsonOpt = False,
) -> None:
    """Synaptic-partner F-score (annotations; label check in the truth neuron_ids)."""
    if rounding not in ("half_away", "half_even"):
        raise SyntkError(f"--rounding must be half_away or half_even, got {rounding!r}")
    _single("cremi-partners")(truth, pred, as_json, threshold_nm=threshold_nm, rounding=rounding)


@app.command("synapse-overlap")
def synapse_overlap(
    truth: TruthArg,
    pred: PredArg,
    threshold: Annotated[float, typer.Option("--threshold", help="Minimum overlap.")] = 0.5,
    measure: Annotated[str, typer.Option("--measure", help="iou or coverage.")] = "iou",
    dataset: Annotated[str, typer.Option("--dataset", help="clefts or neuron_ids.")] = "clefts",
    background: Annotated[
        int | None, typer.Option("--background", help="Background id (default by dataset).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Synapse detection by overlap of label volumes (best match each way)."""
    if measure not in ("iou", "coverage"):
        raise SyntkError(f"--measure must be iou or coverage, got {measure!r}")
    _single("synapse-overlap")(truth, pred, as_json, threshold=threshold, measure=measure,
                               dataset=dataset, background=background)  # fmt: skip


@app.command("neurofinder")
def neurofinder(
    truth: TruthArg,
    pred: PredArg,
    threshold: Annotated[float, typer.Option("--threshold", help="Centre distance (px).")] = 5.0,
    as_json: JsonOpt = False,
) -> None:
    """neurofinder recall, precision, combined, inclusion, exclusion of JSON region files."""
    _single("neurofinder")(truth, pred, as_json, threshold=threshold)


# -- batch ---------------------------------------------------------------------------------------


def _pairs_from_manifest(path: Path, default_metric: str | None) -> list[dict[str, str]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"{path}: cannot read manifest ({exc})") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or not {"truth", "pred"} <= set(rows[0]):
        raise DataError(f"{path}: manifest needs a header with columns truth,pred[,metric,name]")
    out = []
    for i, r in enumerate(rows):
        metric = (r.get("metric") or default_metric or "").strip()
        if not metric:
            raise DataError(f"{path}: row {i + 2} has no metric (add a metric column or --metric)")
        base = path.parent
        t, p = Path(r["truth"].strip()), Path(r["pred"].strip())
        out.append({
            "name": (r.get("name") or "").strip() or f"{i}",
            "metric": metric,
            "truth": str(t if t.is_absolute() else base / t),
            "pred": str(p if p.is_absolute() else base / p),
        })  # fmt: skip
    return out


def _pairs_from_globs(truth_glob: str, pred_glob: str, metric: str) -> list[dict[str, str]]:
    ts, ps = sorted(globlib.glob(truth_glob)), sorted(globlib.glob(pred_glob))
    if not ts:
        raise DataError(f"no file matches --truth-glob {truth_glob!r}")
    if len(ts) != len(ps):
        raise DataError(f"--truth-glob matches {len(ts)} files but --pred-glob {len(ps)}; "
                        "pairs are formed in sorted order")  # fmt: skip
    return [{"name": Path(p).stem, "metric": metric, "truth": t, "pred": p}
            for t, p in zip(ts, ps, strict=True)]  # fmt: skip


@app.command("batch")
def batch(
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="CSV with columns truth,pred[,metric,name].")
    ] = None,
    truth_glob: Annotated[str | None, typer.Option("--truth-glob", help="Truth files.")] = None,
    pred_glob: Annotated[str | None, typer.Option("--pred-glob", help="Prediction files.")] = None,
    metric: Annotated[
        str | None, typer.Option("--metric", help=f"Metric for all pairs: {', '.join(METRICS)}.")
    ] = None,
    border_nm: Annotated[float | None, typer.Option("--border-nm")] = None,
    threshold_nm: Annotated[float | None, typer.Option("--threshold-nm")] = None,
    threshold: Annotated[float | None, typer.Option("--threshold")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write results as CSV.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --json/--csv file.")
    ] = False,
    threads: ThreadsOpt = 2,
) -> None:
    """Score many pairs (a CSV manifest or two globs paired in sorted order).

    A pair that cannot be read or scored is reported and the others are still scored; the exit
    code is 1 if any pair failed.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    if metric is not None and metric not in METRICS:
        raise SyntkError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if manifest is not None:
        pairs = _pairs_from_manifest(manifest, metric)
    elif truth_glob and pred_glob:
        if metric is None:
            raise SyntkError("--metric is required with --truth-glob/--pred-glob")
        pairs = _pairs_from_globs(truth_glob, pred_glob, metric)
    else:
        raise SyntkError("give --manifest CSV, or --truth-glob and --pred-glob")
    inputs = tuple(Path(p[k]) for p in pairs for k in ("truth", "pred"))
    inputs += (manifest,) if manifest is not None else ()
    for dest, flag in ((json_out, "--json"), (csv_out, "--csv")):
        if dest is not None:
            check_destination(dest, inputs=inputs, overwrite=overwrite, what=f"{flag} results")
    opts: dict[str, Any] = {"border_nm": border_nm, "threads": threads}
    if threshold_nm is not None:
        opts["threshold_nm"] = threshold_nm
    if threshold is not None:
        opts["threshold"] = threshold

    console = Console(stderr=True)
    results: list[dict[str, Any]] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True) as progress:  # fmt: skip
        task = progress.add_task("scoring", total=len(pairs))
        for pair in pairs:
            progress.update(task, description=f"scoring {pair['name']}")
            rec: dict[str, Any] = dict(pair)
            try:
                rec["values"] = score_files(pair["metric"], Path(pair["truth"]),
                                            Path(pair["pred"]), **opts)  # fmt: skip
                rec["status"] = "ok"
            except (SyntkError, OSError, ValueError, KeyError) as exc:
                rec["status"] = "error"
                rec["error"] = str(exc) or type(exc).__name__
                console.print(f"[red]error[/red] {pair['name']}: {rec['error']}")
            results.append(rec)
            progress.advance(task)

    keys: list[str] = []
    for r in results:
        for k in r.get("values", {}):
            if k not in keys:
                keys.append(k)
    table = Table(title=f"{len(results)} pairs")
    for col in ("name", "metric", "status", *keys):
        table.add_column(col)
    for r in results:
        vals = r.get("values", {})
        table.add_row(r["name"], r["metric"], r["status"], *(_fmt(vals.get(k, "")) for k in keys))
    Console().print(table)

    if json_out is not None:
        safe = [{**r, "values": {k: _json_safe(v) for k, v in r.get("values", {}).items()}}
                for r in results]  # fmt: skip
        atomic_write_text(json_out, json.dumps(safe, indent=1))
    if csv_out is not None:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["name", "metric", "truth", "pred", "status", "error", *keys])
        for r in results:
            vals = r.get("values", {})
            w.writerow([r["name"], r["metric"], r["truth"], r["pred"], r["status"],
                        r.get("error", ""), *(vals.get(k, "") for k in keys)])  # fmt: skip
        atomic_write_text(csv_out, buf.getvalue())
    failed = sum(r["status"] != "ok" for r in results)
    if failed:
        console.print(f"{failed} of {len(results)} pairs failed")
        raise typer.Exit(1)
