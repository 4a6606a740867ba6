"""Operations commands: `personatag doctor`, `personatag flink ui`."""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from personatag.cli import JsonOpt, app, emit, settings
from personatag.cli_flink import flink_app
from personatag.errors import ConfigError, PersonatagError


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


@flink_app.command("ui")
def flink_ui(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8082,
) -> None:
    """Serve the Flink web UI and REST API read-only (GET and HEAD only) until Ctrl-C."""
    from personatag.engines.flink.runtime.home import rest_url
    from personatag.engines.flink.runtime.proxy import make_proxy_server
    from personatag.engines.flink.runtime.rest import FlinkRest, FlinkUnreachable

    upstream = rest_url(settings())
    server = make_proxy_server(upstream, host, port)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(
        f"Flink UI (read-only) at http://{shown}:{server.server_port}/ for {upstream}; Ctrl-C stops"
    )
    if host not in ("127.0.0.1", "::1", "localhost"):
        typer.echo(
            f"note: listening on {host}: whoever reaches it can read Flink's jobs, logs "
            "and configuration",
            err=True,
        )
    try:
        FlinkRest(upstream, timeout=3.0).overview()
    except FlinkUnreachable as exc:
        typer.echo(f"note: {exc}; pages answer 502 until it is up", err=True)
    except PersonatagError as exc:
        typer.echo(f"note: {exc}", err=True)

    # Ctrl-C and SIGTERM stop it cleanly, also when started from a script that
    # ran it in the background (which leaves SIGINT ignored for the process).
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)
    finally:
        server.server_close()
