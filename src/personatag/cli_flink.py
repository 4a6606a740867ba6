"""`personatag flink ...`: the local Flink session cluster."""

from __future__ import annotations

from typing import Annotated, Any

import typer

# Made before importing personatag.cli: cli imports this module and cli_ops at
# its end, and cli_ops adds commands to flink_app, which must exist by then
# whichever module is imported first.
flink_app = typer.Typer(help="Run and inspect the Flink session cluster.", no_args_is_help=True)

from personatag.cli import JsonOpt, app, emit, settings  # noqa: E402

app.add_typer(flink_app, name="flink")

# `flink status` exits with this when the cluster does not answer (as LSB `status` does).
EXIT_DOWN = 3


def _tm_count(st: dict[str, Any]) -> str:
    n = len(st["task_managers"])
    return f"{n} task manager{'' if n == 1 else 's'}"


@flink_app.command("start")
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
        f"flink cluster {st['url']} {how}: {_tm_count(st)}, {st['slots_total']} slots "
        f"(supervisor pid {st['supervisor_pid']})"
    )


@flink_app.command("stop")
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


@flink_app.command("status")
def flink_status(as_json: JsonOpt = False) -> None:
    """Task managers, slots and running jobs of the cluster (exit 3 when it does not answer)."""
    from personatag.engines.flink.runtime.cluster import status

    st = status(settings())
    if as_json:
        emit(st)
    elif not st["reachable"]:
        typer.echo(f"flink cluster {st['url']}: down ({st.get('error', 'no answer')})")
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
        for job in st["running_jobs"]:
            secs = (job["duration_ms"] or 0) / 1000
            typer.echo(f"  job {job['id']} {job['state']:<10} {secs:8.1f}s  {job['name']}")
    if not st["reachable"]:
        raise typer.Exit(EXIT_DOWN)
