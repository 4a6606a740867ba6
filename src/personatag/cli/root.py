"""The personatag command line (thin: parses, calls the modules, prints).

The root app only joins the command groups: each module under personatag.cli
owns its Typer app and imports what it shares from cli/common.py, never this
module, so imports go one way (root -> command modules -> common).

`main` builds only what the command it runs needs (`build_app(command)`): a
new process running `preview` imports the tagging module and what it uses,
not the web, Flink or feed commands, and Typer builds five commands instead of
all of them. `app` (every command, for `--help`, an unknown command, tests and
docs) is built on first use."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Annotated, Any

# Before pydantic is imported (cli.common imports the settings): a command's
# process validates only its own settings and arguments, and pydantic's look-up
# of validation plugins reads every installed package's entry points (~20-40 ms
# of each start). Setting the variable to an empty value keeps plugins on.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import typer

from personatag.cli.common import STATE
from personatag.errors import PersonatagError

# Top-level commands (apps joined without a name), module by module in the
# order `--help` lists them, with the commands each adds (tests/test_cli_layout.py
# checks these names against the modules).
TOP_LEVEL: dict[str, tuple[str, ...]] = {
    "data": ("init", "import", "generate"),
    "tagging": ("preview", "tag", "untag", "pin", "unpin"),
    "requests": ("submit", "dispatcher"),
    "deploy": ("deploy",),
    "jobs": ("status",),
    "accounts": ("audit",),
    "events": ("export-log",),
    "recommend": ("feed", "feed-precompute"),
    "feed_eval": ("evaluate-feed",),
    "ops": ("doctor",),
    "web": ("serve",),
}
# Command groups: name -> (module, its Typer app's attribute).
GROUPS: dict[str, tuple[str, str]] = {
    "persona": ("personas", "app"),
    "criterion": ("criteria", "app"),
    "attribute": ("data", "attribute_app"),
    "contact": ("contacts", "app"),
    "jobs": ("jobs", "jobs_app"),
    "requests": ("requests", "requests_app"),
    "user": ("accounts", "user_app"),
    "token": ("accounts", "token_app"),
    "webhook": ("events", "webhook_app"),
    "feed-rule": ("recommend", "feed_rule_app"),
    "flink": ("flink", "app"),
    "stream": ("stream", "app"),
}
_MODULE_OF = {command: module for module, names in TOP_LEVEL.items() for command in names}


def _module(name: str) -> Any:
    return importlib.import_module(f"personatag.cli.{name}")


def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    STATE.debug = debug
    from personatag.logs import configure_logging

    configure_logging(logging.DEBUG if debug else logging.WARNING, json=False)


def build_app(command: str | None = None) -> typer.Typer:
    """The command line: every command, or (`command` given and known) only the
    commands of the module that defines it, so running one command imports
    and builds one module's commands, not all of them."""
    app = typer.Typer(
        name="personatag",
        help="Tag research readers with personas.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    app.callback()(_root)
    if command in GROUPS:
        module, attribute = GROUPS[command]
        app.add_typer(getattr(_module(module), attribute), name=command)
        return app
    if command in _MODULE_OF:
        app.add_typer(_module(_MODULE_OF[command]).app)
        return app
    for module in TOP_LEVEL:
        app.add_typer(_module(module).app)
    for name, (module, attribute) in GROUPS.items():
        app.add_typer(getattr(_module(module), attribute), name=name)
    return app


def _command_named(argv: list[str]) -> str | None:
    """The command `argv` runs (its first word after the root's options)."""
    for arg in argv:
        if arg == "--debug":
            continue
        return None if arg.startswith("-") else arg
    return None


_APP: typer.Typer | None = None


def __getattr__(name: str) -> Any:
    """`app`: the whole command line, built on first use."""
    global _APP
    if name == "app":
        if _APP is None:
            _APP = build_app()
        return _APP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _is_store_error(exc: Exception) -> bool:
    """A database error (sqlalchemy is imported only by commands that use a store)."""
    exc_module = sys.modules.get("sqlalchemy.exc")
    return exc_module is not None and isinstance(exc, exc_module.DBAPIError)


def main() -> None:
    debug = "--debug" in sys.argv[1:3] or os.environ.get("PERSONATAG_DEBUG") == "1"
    try:
        rv = build_app(_command_named(sys.argv[1:]))(standalone_mode=False)
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
