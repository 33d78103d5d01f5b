"""`syntk plugins list`: every discovered plugin with distribution, version, stages and status."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from synapse_toolkit.plugin_manager import get_plugins

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List plugins: name, distribution, version, stages, status (errors of broken plugins)."""
    plugins = get_plugins()
    if as_json:
        typer.echo(json.dumps([s.to_dict() for s in plugins.statuses], indent=2))
        return
    table = Table(title="syntk plugins")
    for col in ("plugin", "distribution", "version", "stages", "status"):
        table.add_column(col)
    for s in plugins.statuses:
        status = s.status if s.status == "ok" else f"[red]{s.status}[/red]: {s.error}"
        table.add_row(s.name, s.distribution, s.version, "\n".join(s.stages), status)
    Console(width=160).print(table)


@app.command("stages")
def list_stages(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON contracts.")] = False,
) -> None:
    """List registered stages with their ports (the contracts a pipeline wires together)."""
    registry = get_plugins().stages
    if as_json:
        typer.echo(json.dumps([r.cls.contract() | {"plugin": r.plugin} for r in registry.all()],
                              indent=2))  # fmt: skip
        return
    table = Table(title="syntk stages")
    for col in ("kind", "name", "plugin", "inputs", "outputs"):
        table.add_column(col)
    for r in registry.all():
        ins = ", ".join(f"{k}:{p.type}{'' if p.required else '?'}" for k, p in r.cls.inputs.items())
        outs = ", ".join(f"{k}:{p.type}" for k, p in r.cls.outputs.items())
        table.add_row(r.kind, r.name, r.plugin, ins, outs)
    Console(width=160).print(table)
