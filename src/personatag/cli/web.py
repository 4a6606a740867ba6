"""`personatag serve`: the REST API (and a dispatcher) in one process."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from personatag.cli.common import STATE, settings

# Commands at the top level (joined into the root app without a name).
app = typer.Typer()


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default PERSONATAG_HOST).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Port (default PERSONATAG_PORT; 0: a free one)."),
    ] = None,
    no_dispatcher: Annotated[
        bool,
        typer.Option("--no-dispatcher", help="Serve the API only; run no jobs in this process."),
    ] = False,
    no_stream: Annotated[
        bool,
        typer.Option(
            "--no-stream",
            help="Run no stream processor or webhook deliveries in this process.",
        ),
    ] = False,
    log_json: Annotated[bool, typer.Option("--log-json", help="Log JSON lines on stderr.")] = False,
) -> None:
    """Serve the workbench and REST API with a dispatcher and the stream processor,
    until SIGINT/SIGTERM."""
    from personatag.logs import configure_logging
    from personatag.serve import run

    configure_logging(logging.DEBUG if STATE.debug else logging.INFO, json=log_json)
    run(
        settings(),
        host=host,
        port=port,
        dispatcher=not no_dispatcher,
        stream=not no_stream,
        echo=typer.echo,
    )
