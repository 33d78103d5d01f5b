"""`syntk config schema`: the JSON schema of pipeline TOML files."""

from __future__ import annotations

import json

import typer

from synapse_toolkit.config import config_json_schema

app = typer.Typer(no_args_is_help=True)


@app.command("schema")
def schema() -> None:
    """Print the JSON schema of a pipeline config (stage options: `syntk plugins stages --json`)."""
    typer.echo(json.dumps(config_json_schema(), indent=2))
