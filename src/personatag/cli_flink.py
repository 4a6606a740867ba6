"""`personatag flink ...`: the local Flink session cluster."""

from __future__ import annotations

import typer

from personatag.cli import app

flink_app = typer.Typer(help="Run and inspect the Flink session cluster.", no_args_is_help=True)
app.add_typer(flink_app, name="flink")
