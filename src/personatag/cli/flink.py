"""`personatag flink ...`: the local Flink session cluster and its read-only UI."""

from __future__ import annotations

import signal
from typing import Annotated, Any

import typer

from personatag.cli.common import JsonOpt, emit, settings
from personatag.errors import PersonatagError

app = typer.Typer(help="Run and inspect the Flink session cluster.", no_args_is_help=True)

# `flink status` exits with this when the cluster does not answer (as LSB `status` does).
EXIT_DOWN = 3


def _tm_count(st: dict[str, Any]) -> str:
    n = len(st["task_managers"])
    return f"{n} task manager{'' if n == 1 else 's'}"


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


@app.command("start")
def flink_start(
    wait: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for every task manager.")
    ] = 90,
    as_json: JsonOpt = False,
) -> None:
    """Start the local cluster (supervised) and wait until it is ready; idempotent."""
    from personatag.engines.flink.runtime.cluster import start

    st = start(settings(), wait_s=wait)
    if as_json:
        emit(st)
        return
    how = f"started in {st['seconds']} s" if st["started"] else "already running"
    typer.echo(
        f"flink cluster {st['url']} {how}: {_tm_count(st)}, {st['slots_total']} "
        f"slot{'' if st['slots_total'] == 1 else 's'} "
        f"(supervisor pid {st['supervisor_pid']})"
    )


@app.command("stop")
def flink_stop(
    wait: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for the processes to end.")
    ] = 60,
    as_json: JsonOpt = False,
) -> None:
    """Stop the local cluster and wait until its processes are gone; idempotent."""
    from personatag.engines.flink.runtime.cluster import stop

    done = stop(settings(), wait_s=wait)
    if as_json:
        emit(done)
        return
    if done["stopped"]:
        typer.echo(f"flink cluster stopped in {done['seconds']} s")
    else:
        typer.echo("flink cluster was not running")


@app.command("status")
def flink_status(as_json: JsonOpt = False) -> None:
    """Task managers, slots and running jobs of the cluster (exit 3 when it does not answer)."""
    from personatag.engines.flink.runtime.cluster import status

    st = status(settings())
    if as_json:
        emit(st)
    elif not st["reachable"]:
        why = st.get("reason") or st.get("error") or "no answer"
        typer.echo(f"flink cluster {st['url']}: down: {why}")
    else:
        owner = f"supervisor pid {st['supervisor_pid']}" if st["managed"] else "not managed here"
        j = st["jobs"]
        typer.echo(
            f"flink cluster {st['url']}: up, {_tm_count(st)}, {st['slots_available']} of "
            f"{st['slots_total']} slots free, jobs running {j['running']} finished "
            f"{j['finished']} failed {j['failed']} cancelled {j['cancelled']} ({owner})"
        )
        for tm in st["task_managers"]:
            typer.echo(
                f"  taskmanager {tm['id']}: {tm['slots_free']} of {tm['slots_total']} slots "
                f"free, last heartbeat {tm['last_heartbeat'] or '-'}"
            )
        scale = st.get("autoscale") or {}
        if scale.get("enabled"):
            typer.echo(
                f"  autoscale {scale['minimum']}-{scale['maximum']} task managers: now "
                f"{_or_dash(scale.get('current'))}, target {_or_dash(scale.get('target'))} "
                f"({scale.get('rescales_last_hour', 0)} of {scale.get('rescales_per_hour')} "
                f"rescales this hour): {scale.get('reason')}"
            )
            if scale.get("problem"):
                typer.echo(f"  autoscale: {scale['problem']}")
        for job in st["running_jobs"]:
            secs = (job["duration_ms"] or 0) / 1000
            typer.echo(f"  job {job['id']} {job['state']:<10} {secs:8.1f}s  {job['name']}")
    if not st["reachable"]:
        raise typer.Exit(EXIT_DOWN)


@app.command("ui")
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
