"""`syntk score`: score files with any registered scorer (built-in or third-party).

``syntk score NAME TRUTH PRED`` runs the scorer stage ``NAME`` exactly as a pipeline would
(:mod:`synapse_toolkit.scoring`), with one ``--<option>`` per option of that scorer and the
same defaults. ``syntk score list`` shows the scorers; ``syntk score batch`` scores many pairs.
"""

from __future__ import annotations

import csv
import glob as globlib
import inspect
import io
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
import typer.main

from synapse_toolkit.errors import ConfigError, DataError, SyntkError
from synapse_toolkit.fsio import atomic_write_text, check_destination, dumps

STATIC = ("list", "batch")


class _ScoreGroup(typer.core.TyperGroup):
    """`list` and `batch` plus one command per registered scorer, built on demand."""

    def list_commands(self, ctx: Any) -> list[str]:
        from synapse_toolkit.scoring import scorers

        return [*STATIC, *(r.name for r in scorers())]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in STATIC:
            return super().get_command(ctx, cmd_name)
        from synapse_toolkit.plugin_manager import get_plugins

        reg = get_plugins().stages
        if cmd_name not in reg.names("scorer"):
            return None
        return _scorer_command(reg.get("scorer", cmd_name).cls)


app = typer.Typer(
    cls=_ScoreGroup,
    no_args_is_help=True,
    help="Score predictions against ground truth with the registered scorers.",
)
KW = inspect.Parameter.KEYWORD_ONLY


# -- output --------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.6g}"
    return str(v)


def _directions(cls: Any, keys: list[str]) -> list[str]:
    lower = [k for k in cls.lower_is_better if k in keys]
    higher = [k for k in cls.higher_is_better if k in keys]
    lines = []
    if lower:
        lines.append(f"{cls.name}: lower is better for {', '.join(lower)}")
    if higher:
        lines.append(f"{cls.name}: higher is better for {', '.join(higher)}")
    return lines


def _print_scores(cls: Any, values: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(dumps({"metric": cls.name, "values": values}, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=cls.name)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in values.items():
        table.add_row(k, _fmt(v))
    console = Console()
    console.print(table)
    for line in _directions(cls, list(values)):
        console.print(line)


# -- one command per scorer ----------------------------------------------------------------------


def _option_type(info: Any) -> type | None:
    """The CLI type of a simple pydantic field (numbers, strings, bools, choices), or None."""
    ann = info.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) in (typing.Union, types.UnionType) and len(args) == 1:
        ann = args[0]
    if typing.get_origin(ann) is typing.Literal:  # choices: listed in the help, checked by
        return str  # the options model (one error line naming the option)
    return ann if ann in (bool, int, float, str) else None


def _scorer_command(cls: Any) -> Any:
    """A typer command for scorer ``cls``: TRUTH PRED, one option per simple option field."""
    fields: dict[str, Any] = {}
    params = [
        inspect.Parameter("truth", KW, annotation=Annotated[Path, typer.Argument(
            help="Ground-truth file (CREMI HDF5, zarr, or neurofinder JSON).")]),
        inspect.Parameter("pred", KW, annotation=Annotated[Path, typer.Argument(
            help="Prediction file.")]),
    ]  # fmt: skip
    for field, info in cls.Options.model_fields.items():
        kind = _option_type(info)
        if kind is None:
            continue
        fields[field] = kind
        flag = "--" + field.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        choices = typing.get_args(info.annotation) if typing.get_origin(
            info.annotation) is typing.Literal else ()  # fmt: skip
        one_of = f"one of {', '.join(map(str, choices))}; " if choices else ""
        text = f"{info.description or ''} ({one_of}default {info.default})"
        option = typer.Option(*decls, help=text, show_default=False)
        params.append(
            inspect.Parameter(field, KW, default=None, annotation=Annotated[kind | None, option])
        )
    params += [
        inspect.Parameter("dataset", KW, default=None, annotation=Annotated[str | None,
            typer.Option("--dataset", help="Read this dataset (e.g. neuron_ids) for the "
                         "volume inputs instead of the scorer's default.")]),
        inspect.Parameter("block_z", KW, default=32, annotation=Annotated[int,
            typer.Option("--block-z", min=1, help="Sections counted at a time.")]),
        inspect.Parameter("threads", KW, default=2, annotation=Annotated[int,
            typer.Option("--threads", min=1, help="Threads.")]),
        inspect.Parameter("as_json", KW, default=False, annotation=Annotated[bool,
            typer.Option("--json", help="Print the scores as JSON.")]),
    ]  # fmt: skip

    def command(**kw: Any) -> None:
        from synapse_toolkit.scoring import score_files

        options = {f: getattr(kw[f], "value", kw[f]) for f in fields}
        record = score_files(cls.name, kw["truth"], kw["pred"], options,
                             dataset=kw["dataset"], n_threads=kw["threads"],
                             block_z=kw["block_z"])  # fmt: skip
        _print_scores(cls, dict(record.values), kw["as_json"])

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = f"{cls.description} (scorer plugin {cls.name})."
    single = typer.Typer(add_completion=False)
    single.command(cls.name)(command)
    return typer.main.get_command(single)


@app.command("list")
def list_scorers(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The registered scorers (built-in and third-party) with their inputs."""
    from synapse_toolkit.scoring import scorers

    rows: list[dict[str, Any]] = [
        {"name": r.name, "plugin": r.plugin, "description": r.cls.description,
         "inputs": {k: p.describe() for k, p in r.cls.inputs.items()}}
        for r in scorers()
    ]  # fmt: skip
    if as_json:
        typer.echo(dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="scorers (syntk score NAME TRUTH PRED)")
    for col in ("name", "plugin", "inputs", "description"):
        table.add_column(col)
    for r in rows:
        ins = ", ".join(f"{k}:{v}" for k, v in r["inputs"].items())
        table.add_row(r["name"], r["plugin"], ins, r["description"])
    Console(width=160).print(table)


# -- batch ---------------------------------------------------------------------------------------


def _pairs_from_manifest(path: Path, default_metric: str | None) -> list[dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # missing, a folder, a binary file
        raise DataError(f"{path}: cannot read the pairs manifest ({type(exc).__name__})") from None
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


def _parse_options(items: list[str]) -> dict[str, Any]:
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r}: expected NAME=VALUE")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


@app.command("batch")
def batch(
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="CSV with columns truth,pred[,metric,name].")
    ] = None,
    truth_glob: Annotated[str | None, typer.Option("--truth-glob", help="Truth files.")] = None,
    pred_glob: Annotated[str | None, typer.Option("--pred-glob", help="Prediction files.")] = None,
    metric: Annotated[
        str | None, typer.Option("--metric", help="Scorer for all pairs (see `syntk score list`).")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option", help="A scorer option NAME=VALUE (repeatable), e.g. border_threshold_nm=0."
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write results as CSV.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --json/--csv file.")
    ] = False,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Threads.")] = 2,
) -> None:
    """Score many pairs (a CSV manifest or two globs paired in sorted order).

    A pair that cannot be read or scored is reported and the others are still scored; the exit
    code is 1 if any pair failed.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    from synapse_toolkit.scoring import get_scorer, score_files

    if metric is not None:
        get_scorer(metric)  # unknown name: one line listing the scorers
    if manifest is not None and (truth_glob or pred_glob):
        raise SyntkError("give --manifest CSV or --truth-glob/--pred-glob, not both")
    if json_out is not None and csv_out is not None and json_out.resolve() == csv_out.resolve():
        raise SyntkError(f"--json and --csv both name {json_out}: one would replace the other")
    if manifest is not None:
        pairs = _pairs_from_manifest(manifest, metric)
    elif truth_glob and pred_glob:
        if metric is None:
            raise SyntkError("--metric is required with --truth-glob/--pred-glob")
        pairs = _pairs_from_globs(truth_glob, pred_glob, metric)
    else:
        raise SyntkError("give --manifest CSV, or --truth-glob and --pred-glob")
    for name in {p["metric"] for p in pairs}:
        get_scorer(name)
    inputs = tuple(Path(p[k]) for p in pairs for k in ("truth", "pred"))
    inputs += (manifest,) if manifest is not None else ()
    for dest, flag in ((json_out, "--json"), (csv_out, "--csv")):
        if dest is not None:
            check_destination(dest, inputs=inputs, overwrite=overwrite, what=f"{flag} results")
    opts = _parse_options(option or [])

    console = Console(stderr=True)
    results: list[dict[str, Any]] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True) as progress:  # fmt: skip
        task = progress.add_task("scoring", total=len(pairs))
        for pair in pairs:
            progress.update(task, description=f"scoring {pair['name']}")
            rec: dict[str, Any] = dict(pair)
            try:
                record = score_files(pair["metric"], Path(pair["truth"]), Path(pair["pred"]),
                                     opts, n_threads=threads)  # fmt: skip
                rec["values"] = dict(record.values)
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
    out = Console()
    out.print(table)
    for name in dict.fromkeys(r["metric"] for r in results):
        for line in _directions(get_scorer(name).cls, keys):
            out.print(line)

    if json_out is not None:
        atomic_write_text(json_out, dumps(results, indent=1))
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
