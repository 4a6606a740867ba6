"""`personatag status` and `jobs ...`: the queue and the jobs, local or on a server."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from personatag.cli.client import open_client
from personatag.cli.common import JsonOpt, emit, settings
from personatag.domain import JobStatus

# Commands at the top level (joined into the root app without a name).
app = typer.Typer()
jobs_app = typer.Typer(help="List, inspect and cancel jobs.", no_args_is_help=True)


def _job_line(j: dict[str, Any]) -> str:
    from personatag.jobs.progress import describe

    c = j["counts"] or {}
    took = f"{j['seconds']}s" if j["seconds"] is not None else "-"
    line = (
        f"{j['id']:>6} {j['request_id']:<36} {j['status']:<10} {j['engine']:<8} {took:>9} "
        f"tagged {c.get('tagged', 0):,} untagged {c.get('untagged', 0):,} "
        f"failed {c.get('failed', 0):,}"
    )
    if j["status"] == JobStatus.RUNNING and j.get("progress"):
        line += f"  [{describe(j['progress'], j['status'])}]"
    return line + (f"  {j['error']}" if j["error"] else "")


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help="Only jobs with this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    with open_client(settings()) as client:
        found = client.list_jobs(status, limit)
    if as_json:
        emit({"jobs": found})
        return
    for j in found:
        typer.echo(_job_line(j))


@jobs_app.command("show")
def jobs_show(
    ref: Annotated[str, typer.Argument(metavar="ID", help="Job number or request id.")],
    as_json: JsonOpt = False,
) -> None:
    """Show one job: status, timings, counts, error."""
    with open_client(settings()) as client:
        j = client.get_job(ref)
    if as_json:
        emit(j)
        return
    from personatag.jobs.progress import describe

    for k, v in j.items():
        if k == "progress" and v:
            v = f"{describe(v, j['status'])} (at {v['updated_at']})"
        typer.echo(f"{k:<15} {v if v is not None else '-'}")


@jobs_app.command("cancel")
def jobs_cancel(
    ref: Annotated[str, typer.Argument(metavar="ID", help="Job number or request id.")],
    as_json: JsonOpt = False,
) -> None:
    """Cancel a queued job, or ask a running one to stop."""
    with open_client(settings()) as client:
        j = client.cancel_job(ref)
    if as_json:
        emit(j)
    else:
        typer.echo(f"job {j['id']} ({j['request_id']}): {j['status']}")


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Queue and recent jobs at a glance."""
    with open_client(settings()) as client:
        out = client.status()
    if as_json:
        emit(out)
        return
    typer.echo(f"queued {out['queued']}, running {out['running']}")
    for j in out["recent"]:
        typer.echo(_job_line(j))
