"""The personatag command line (thin: parses, calls the modules, prints).

The root app only joins the command groups: each module under personatag.cli
owns its Typer app and imports what it shares from cli/common.py, never this
module, so imports go one way (root -> command modules -> common)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from personatag.cli import (
    accounts,
    contacts,
    criteria,
    data,
    deploy,
    events,
    feed_eval,
    flink,
    jobs,
    ops,
    personas,
    recommend,
    requests,
    stream,
    tagging,
    web,
)
from personatag.cli.common import STATE
from personatag.errors import PersonatagError

app = typer.Typer(
    name="personatag",
    help="Tag research readers with personas.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Top-level commands (apps joined without a name), in the order `--help` lists them.
for _commands in (
    data.app,  # init, import, generate
    tagging.app,  # preview, tag, untag, pin, unpin
    requests.app,  # submit, dispatcher
    deploy.app,
    jobs.app,  # status
    accounts.app,  # audit
    events.app,  # export-log
    recommend.app,  # feed, feed-precompute
    feed_eval.app,  # evaluate-feed
    ops.app,  # doctor
    web.app,  # serve
):
    app.add_typer(_commands)

# Command groups.
app.add_typer(personas.app, name="persona")
app.add_typer(criteria.app, name="criterion")
app.add_typer(data.attribute_app, name="attribute")
app.add_typer(contacts.app, name="contact")
app.add_typer(jobs.jobs_app, name="jobs")
app.add_typer(requests.requests_app, name="requests")
app.add_typer(accounts.user_app, name="user")
app.add_typer(accounts.token_app, name="token")
app.add_typer(events.webhook_app, name="webhook")
app.add_typer(recommend.feed_rule_app, name="feed-rule")
app.add_typer(flink.app, name="flink")
app.add_typer(stream.app, name="stream")


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    STATE.debug = debug
    from personatag.logs import configure_logging

    configure_logging(logging.DEBUG if debug else logging.WARNING, json=False)


def _is_store_error(exc: Exception) -> bool:
    """A database error (sqlalchemy is imported only by commands that use a store)."""
    exc_module = sys.modules.get("sqlalchemy.exc")
    return exc_module is not None and isinstance(exc, exc_module.DBAPIError)


def main() -> None:
    debug = "--debug" in sys.argv[1:3] or os.environ.get("PERSONATAG_DEBUG") == "1"
    try:
        rv = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: wrong option, missing argument
        ctx = getattr(exc, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = " ".join(exc.format_message().split())
        typer.echo(f"error: {message}{where}", err=True)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except PersonatagError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        if debug:
            raise
        if _is_store_error(exc):
            orig = str(exc.orig).strip().splitlines()[0]  # type: ignore[attr-defined]
            typer.echo(f"error: the store failed: {orig}", err=True)
            sys.exit(1)
        typer.echo(
            f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for details)",
            err=True,
        )
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
