"""`personatag doctor`: what is wrong with this installation, one line per problem."""

from __future__ import annotations

import typer

from personatag.cli.common import JsonOpt, emit, settings
from personatag.errors import ConfigError

# Commands at the top level (joined into the root app without a name).
app = typer.Typer()


@app.command()
def doctor(as_json: JsonOpt = False) -> None:
    """Check Java, Flink, the store, the buckets and disk space; one line per problem."""
    from personatag.doctor import diagnose, settings_report

    try:
        report = diagnose(settings())
    except ConfigError as exc:  # bad settings: nothing else can be checked
        report = settings_report(exc)
    if as_json:
        emit(report.as_dict())
    else:
        for line in report.lines():
            typer.echo(line)
    if not report.ok:
        raise typer.Exit(1)
