"""`personatag submit|dispatcher`: request files and the dispatcher that runs them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from personatag.cli.client import open_client
from personatag.cli.common import STATE, JsonOpt, buckets, emit, settings, store
from personatag.domain import JobStatus

# Commands at the top level (joined into the root app without a name).
app = typer.Typer()
requests_app = typer.Typer(
    help="List requests: who submitted them, from where.", no_args_is_help=True
)


@requests_app.command("list")
def requests_list(
    persona: Annotated[
        str | None, typer.Option(help="Only requests that name this persona.")
    ] = None,
    action: Annotated[str | None, typer.Option(help="Only this action: tag or untag.")] = None,
    engine: Annotated[str | None, typer.Option(help="Only this engine.")] = None,
    dry_run: Annotated[
        bool | None,
        typer.Option("--dry-run/--no-dry-run", help="Only dry runs, or only real runs."),
    ] = None,
    who: Annotated[str | None, typer.Option(help="Only requests submitted by this user.")] = None,
    source: Annotated[
        str | None, typer.Option(help="Only from here: workbench, api, cli or file.")
    ] = None,
    status: Annotated[
        str | None, typer.Option(help="Only with this (newest job's) status.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many (paging).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """List requests, newest first, with who submitted each, from where, and its newest job."""
    filters = {
        "persona": persona,
        "action": action,
        "engine": engine,
        "dry_run": dry_run,
        "who": who,
        "source": source,
        "status": status,
    }
    with open_client(settings()) as client:
        found = client.list_requests(filters, limit, offset)
    if as_json:
        emit(found)
        return
    for item in found["requests"]:
        r, j = item["request"], item["job"]
        c = j["counts"] or {}
        changed = c.get("tagged", 0) + c.get("untagged", 0)
        typer.echo(
            f"{j['id']:>6} {item['request_id']:<36} {item['status']:<10} "
            f"{','.join(r['personas']):<20} {','.join(r['actions']):<10} {r['engine']:<6} "
            f"{'dry-run ' if r['dry_run'] else ''}by {r['submitted_by'] or '-'} "
            f"via {r['source'] or '-'}: matched {c.get('matched', 0):,}, changed {changed:,}"
        )
    shown = len(found["requests"])
    if shown:
        typer.echo(f"{offset + 1:,}-{offset + shown:,} of {found['total']:,} requests")
    else:
        typer.echo(f"no requests (of {found['total']:,} that match)")


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="A request file (.json or .csv).")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result.")] = False,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait with --wait.")] = 600,
    as_json: JsonOpt = False,
) -> None:
    """Validate a request file and put it in the requests bucket for the dispatcher."""
    with open_client(settings()) as client:
        answer = client.submit(file, wait=wait, timeout=timeout)
    if not wait:
        if as_json:
            emit(answer)
        else:
            typer.echo(f"submitted {answer['request_id']} as {answer['key']}")
        return
    summary = answer
    if as_json:
        emit(summary)
    else:
        c = summary.get("counts", {})
        typer.echo(
            f"{summary['request_id']} {summary['status']}: matched {c.get('matched', 0):,}, "
            f"tagged {c.get('tagged', 0):,}, untagged {c.get('untagged', 0):,}, "
            f"failed {c.get('failed', 0):,}"
            + (f" ({summary['error']})" if summary.get("error") else "")
        )
    if summary["status"] in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise typer.Exit(1)


@app.command()
def dispatcher(
    workers: Annotated[int | None, typer.Option(min=1, help="Jobs run at once.")] = None,
    deadline: Annotated[float | None, typer.Option(min=0.1, help="Seconds a job may run.")] = None,
    poll: Annotated[float | None, typer.Option(min=0.05, help="Seconds between scans.")] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Scan once, run what is there, exit.")
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Port for /metrics and /healthz (0: any free one)."),
    ] = None,
    log_json: Annotated[
        bool, typer.Option("--log-json", help="Log JSON lines (with request ids) on stderr.")
    ] = False,
) -> None:
    """Run the dispatcher: claim request files from the requests bucket and run them."""
    import signal
    import threading

    from personatag.logs import configure_logging
    from personatag.metrics import start_metrics_server, stop_metrics_server
    from personatag.requests.dispatcher import Dispatcher

    configure_logging(logging.DEBUG if STATE.debug else logging.INFO, json=log_json)

    d = Dispatcher(
        store(), buckets(), settings(), workers=workers, deadline_s=deadline, poll_s=poll
    )
    if once:
        waiting = d.run_once()
        d.close()
        typer.echo(f"dispatcher: {d.stats.claimed} claimed, finished {d.stats.finished}")
        for key, why in waiting.items():
            typer.echo(f"dispatcher: {key} not run: {why} in another dispatcher; run again later")
        for key, why in d.stats.deferred.items():
            typer.echo(f"dispatcher: {key} not run: {why}; run again later")
        if d.stats.finished.get("results_failed"):
            typer.echo(
                f"dispatcher: {d.stats.finished['results_failed']} file(s) finished but their "
                "result files could not be written; the next run writes them"
            )
        return
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        d.request_stop()  # ends the dispatcher's wait at once, not at its next poll

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    s = settings()
    port = s.metrics_port if metrics_port is None else metrics_port
    served = start_metrics_server(port, s.metrics_host)
    typer.echo(f"dispatcher {d.owner} watching {d.buckets['requests'].url('')}", err=True)
    typer.echo(f"metrics on http://{s.metrics_host}:{served.port}/metrics", err=True)
    try:
        d.serve(stop)
    finally:
        stop_metrics_server(served.server)
