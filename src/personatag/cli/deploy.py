"""`personatag deploy`: job bundles (the code and properties engines run)."""

from __future__ import annotations

from typing import Annotated

import typer

from personatag.cli.common import JsonOpt, actor, buckets, emit
from personatag.errors import InputError

# Commands at the top level (joined into the root app without a name).
app = typer.Typer()


@app.command()
def deploy(
    prop: Annotated[
        list[str] | None,
        typer.Option("--property", help="An engine property KEY=VALUE (repeatable)."),
    ] = None,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Make the previous version active again.")
    ] = False,
    list_: Annotated[bool, typer.Option("--list", help="List job bundles.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Build and activate a job bundle (the code and properties engines run)."""
    from personatag.engines.flink import deploy as dp

    if sum([bool(prop), rollback, list_]) > 1:
        raise InputError("give at most one of --property, --rollback or --list")
    b = buckets()
    if list_:
        bundles = [x.to_json() for x in dp.list_bundles(b)]
        if as_json:
            emit({"bundles": bundles})
            return
        for x in bundles:
            mark = "*" if x.get("active") else " "
            typer.echo(f"{mark} {x['version']:<40} {x.get('state', ''):<9} {x.get('checksum', '')}")
        return
    if rollback:
        done = dp.rollback(b, actor=actor())
    else:
        done = dp.deploy(b, properties=dp.parse_properties(prop or []), actor=actor())
    if as_json:
        emit(done.to_json())
    else:
        verb = "rolled back to" if rollback else "deployed"
        typer.echo(f"{verb} {done.version} (sha256 {done.checksum})")
