"""`personatag stream`: the processor that keeps ongoing criteria true."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer

from personatag.cli.common import STATE, JsonOpt, emit, settings, store
from personatag.times import iso_any

app = typer.Typer(
    help="Run and inspect the stream processor (ongoing criteria).",
    invoke_without_command=True,
)


# A long-running processor waits this long for its database at start-up (it
# may be restarting); steps that fail later are retried for ever.
STARTUP_WAIT_S = 300.0


def _store_when_reachable(timeout_s: float) -> Any:
    """The store, retrying while the database does not answer (up to timeout_s)."""
    import time

    from personatag.store.db import StoreUnreachable

    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        try:
            return store()
        except StoreUnreachable as exc:
            if time.monotonic() + delay > deadline:
                raise
            logging.getLogger("personatag.stream").warning("%s; retrying in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


@app.callback()
def stream(
    ctx: typer.Context,
    once: Annotated[
        bool,
        typer.Option("--once", help="Process what is in the feed (and swaps, re-checks), exit."),
    ] = False,
    no_webhooks: Annotated[
        bool, typer.Option("--no-webhooks", help="Do not deliver webhooks in this process.")
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Port for /metrics and /healthz (0: any free one)."),
    ] = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="Log JSON lines on stderr.")] = False,
    partitions: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Run the local processor as this many processes, each stepping its "
            "share of the contacts (default: the stream_partitions setting).",
        ),
    ] = None,
) -> None:
    """Run the stream processor until SIGINT/SIGTERM (webhook deliveries too)."""
    if ctx.invoked_subcommand is not None:
        return
    import signal
    import threading

    from personatag.logs import configure_logging
    from personatag.metrics import start_metrics_server, stop_metrics_server
    from personatag.service import Service, stop_all
    from personatag.streaming import runner

    configure_logging(logging.DEBUG if STATE.debug else logging.INFO, json=log_json)
    s = settings()
    if partitions is not None:
        s = s.model_copy(update={"stream_partitions": partitions})
    st = _store_when_reachable(timeout_s=0 if once else STARTUP_WAIT_S)
    if once:
        from personatag.engines.local.stream.partitioned import catch_up_all
        from personatag.engines.local.stream.standby import lease_name
        from personatag.engines.local.stream.status import OFFSET_NAME
        from personatag.errors import PersonatagError
        from personatag.store.leases import try_lease

        lease = try_lease(st, lease_name(OFFSET_NAME))
        if lease is None:
            raise PersonatagError(
                "another stream processor is running on this store and keeps it current: "
                "stop it before `personatag stream --once`"
            )
        try:
            done = catch_up_all(st, s, timeout_s=24 * 3600)
        finally:
            lease.release()
        typer.echo(
            f"stream: {done.changes} changes, {done.rechecks} re-checks, "
            f"{done.entered} entered, {done.exited} exited, {done.errors} errors; "
            f"offset {done.offset}"
        )
        for line in done.lifecycle:
            typer.echo(f"  {line}")
        return
    stop = threading.Event()
    services: list[Service] = []

    def on_signal(*_: object) -> None:
        stop.set()
        for service in services:
            service.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    port = s.metrics_port if metrics_port is None else metrics_port
    served = start_metrics_server(port, s.metrics_host)
    services += runner.services(st, s, webhooks=not no_webhooks)
    n = s.stream_partitions
    shown = f"{s.stream_engine}, {n} partitions" if n > 1 else s.stream_engine
    typer.echo(f"stream processor ({shown}) following the change feed", err=True)
    typer.echo(f"metrics on http://{s.metrics_host}:{served.port}/metrics", err=True)
    for service in services:
        service.start()
    try:
        while not stop.wait(0.5):
            if not any(service.is_alive() for service in services):
                raise typer.Exit(1)
    finally:
        stop_all(services, 30)
        stop_metrics_server(served.server)


@app.command("status")
def stream_status(as_json: JsonOpt = False) -> None:
    """Where the stream is: offset, lag, re-checks, errors, last reconciliations."""
    from personatag.engines.local.stream.status import status

    data = status(store())
    if as_json:
        emit(data)
        return
    typer.echo(
        f"offset {data['offset']} of {data['head']} "
        f"(lag {data['lag_changes']} changes, {data['lag_seconds']} s)"
    )
    typer.echo(
        f"re-checks scheduled {data['rechecks']}, next at {iso_any(data['next_recheck_at']) or '-'}"
    )
    typer.echo(f"evaluation errors {data['errors']}")
    for e in data["recent_errors"]:
        typer.echo(f"  {iso_any(e['at'])} {e['criterion']}: {e['error']}")
    typer.echo("criteria:")
    for c in data["criteria"]:
        typer.echo(f"  {c['criterion']:<28} {c['persona']:<24} {c['status']}")
    if data["reconciliations"]:
        typer.echo("recent reconciliations:")
        for r in data["reconciliations"]:
            typer.echo(
                f"  {iso_any(r['at'])} {r['criterion']}: {r['missing']} missing, {r['extra']} extra"
            )


@app.command("history")
def stream_history(
    hours: Annotated[float, typer.Option(min=0.01, help="How many hours back.")] = 24.0,
    as_json: JsonOpt = False,
) -> None:
    """The stream's lag and changes/s over time, from the samples its processor stores."""
    from personatag.engines.local.stream.status import health

    data = health(store(), settings().stream_sample_s, hours)
    if as_json:
        emit(data)
        return
    state = "running" if data["running"] else "not running"
    typer.echo(f"stream {state}, last sample {iso_any(data['last_sample_at']) or 'never'}")
    for s in data["samples"]:
        typer.echo(
            f"  {iso_any(s['at'])}  lag {s['lag_changes']} changes, {s['lag_seconds']} s"
            f"  {s['changes_per_s']} changes/s"
        )


@app.command("reconcile")
def stream_reconcile(
    name: Annotated[str | None, typer.Argument(help="One criterion (default: all active).")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report drift without repairing it.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Compare ongoing memberships with a full evaluation now; repair drift."""
    from personatag.engines.local.stream import ongoing
    from personatag.engines.local.stream.processor import StreamProcessor
    from personatag.errors import NotFoundError

    st = store()
    proc = StreamProcessor(st, settings())
    with st.read() as conn:
        crits = ongoing.load(conn, st, (ongoing.ACTIVE,))
    if name is not None:
        crits = [c for c in crits if c.name == name]
        if not crits:
            raise NotFoundError(f"no active ongoing criterion {name!r}")
    out: list[dict[str, Any]] = []
    for c in crits:
        r = proc.reconcile(c, repair=not dry_run)
        out.append({"criterion": c.label, **r})
    if as_json:
        emit({"reconciled": out, "repaired": not dry_run})
        return
    for r in out:
        typer.echo(f"{r['criterion']:<28} missing {r['missing']}, extra {r['extra']}")
