"""`syntk pipeline validate|run`: check and run a pipeline TOML."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from synapse_toolkit.config import load_config
from synapse_toolkit.errors import ConfigError
from synapse_toolkit.fsio import dumps
from synapse_toolkit.pipeline import Plan, RunResult, plan_pipeline, run_pipeline
from synapse_toolkit.stages import ProgressTask

app = typer.Typer(no_args_is_help=True)

ConfigArg = Annotated[Path, typer.Argument(help="Pipeline TOML file.", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a key: --set input.dataset=cremi/sample_A (repeatable)."),
]


class _RateColumn(ProgressColumn):
    """Items (blocks, tiles) per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.2f}/s")


def _print_plan(plan: Plan, console: Console) -> None:
    table = Table(title=f"pipeline {plan.config.name!r} → {plan.config.output.dir}")
    for col in ("#", "stage", "kind", "plugin", "inputs", "outputs"):
        table.add_column(col)
    for i, s in enumerate(plan.describe(), 1):
        ins = ", ".join(f"{k}←{v}" for k, v in s["inputs"].items())
        table.add_row(str(i), s["stage"], s["kind"], s["plugin"], ins, ", ".join(s["outputs"]))
    console.print(table)


def _plan(config: Path, sets: list[str] | None, download: bool) -> Plan:
    """The config's plan; a config error names the file at fault."""
    cfg = load_config(config, sets or [])
    try:
        return plan_pipeline(cfg, download=download)
    except ConfigError as exc:
        raise ConfigError(f"{config}: {exc}") from None


@app.command("validate")
def validate(
    config: ConfigArg,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Validate a config against the installed plugins without running anything."""
    plan = _plan(config, set_, download=False)
    if as_json:
        doc = {"config": str(config), "valid": True, "input": str(plan.input_path),
               "stages": plan.describe()}  # fmt: skip
        typer.echo(dumps(doc, indent=2))
        return
    typer.echo(f"{config}: valid ({len(plan.stages)} stages, input {plan.input_path})")


def _print_scores(result: RunResult, console: Console) -> None:
    scores = result.scores()
    if not scores:
        return
    table = Table(title="scores")
    for col in ("artifact", "metric", "value"):
        table.add_column(col)
    for name, rec in scores.items():
        for key, value in rec["values"].items():
            table.add_row(name, f"{rec['metric']}.{key}", f"{value:.6g}")
    console.print(table)


@app.command("run")
def run(
    config: ConfigArg,
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and stop.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip stages whose inputs and options are unchanged.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress output (results still print).")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary on stdout.")
    ] = False,
    no_report: Annotated[
        bool, typer.Option("--no-report", help="Do not write report.html (see `syntk report`).")
    ] = False,
) -> None:
    """Run a pipeline: stages in dependency order, artifacts and manifest in output.dir."""
    plan = _plan(config, set_, download=not dry_run)
    console = Console(stderr=True, quiet=quiet or as_json)
    if dry_run:
        if as_json:
            typer.echo(dumps({"input": str(plan.input_path), "stages": plan.describe()}, indent=2))
        else:
            _print_plan(plan, Console())
        return
    with ExitStack() as stack:
        progress = None
        if not (quiet or as_json):
            progress = stack.enter_context(
                Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    _RateColumn(),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    console=console,
                    transient=False,
                )
            )

        def factory(description: str, total: int | None) -> ProgressTask:
            if progress is None:
                return ProgressTask()
            task_id = progress.add_task(description, total=total)
            return ProgressTask(lambda n: progress.advance(task_id, n))

        def on_stage(name: str, state: str) -> None:
            if state != "running":
                console.print(f"[bold]{name}[/bold]: {state}")

        result = run_pipeline(plan, resume=resume, progress_factory=factory, on_stage=on_stage)
    try:
        summary = {
            "run_dir": str(result.run_dir),
            "stages": [{"stage": s.name, "status": s.status, "seconds": round(s.seconds, 3)}
                       for s in result.stages],
            "scores": result.scores(),
        }  # fmt: skip
        if as_json:
            typer.echo(dumps(summary, indent=2))
        else:  # --quiet hides progress, never the results
            _print_scores(result, Console())
            typer.echo(f"run directory: {result.run_dir}")
    finally:
        result.close()
    if not no_report:
        try:
            from synapse_toolkit.report import write_report

            console.print(f"report: {write_report(result.run_dir)}")
        except Exception as exc:  # a report failure never fails the run
            typer.echo(f"warning: no report ({type(exc).__name__}: {exc})", err=True)
