"""What every command module shares: settings, the store, the actor, output.

Command modules import from here and never from the root app (cli/root.py),
so imports go one way: root -> command modules -> common."""

from __future__ import annotations

import getpass
import json
import os
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from personatag.config import Settings, load_settings
from personatag.domain import parse_timestamp
from personatag.errors import InputError

if TYPE_CHECKING:
    from personatag.buckets import Buckets
    from personatag.store import Store


class _State:
    settings: Settings | None = None
    debug: bool = False


STATE = _State()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def settings() -> Settings:
    if STATE.settings is None:
        STATE.settings = load_settings()
    return STATE.settings


def actor() -> str:
    """Who the audit log names for a change made here: the `actor` setting
    (PERSONATAG_ACTOR), else the OS user; never empty."""
    configured = (settings().actor or "").strip()
    if configured:
        return configured
    try:
        user = os.environ.get("USER", "").strip() or getpass.getuser()
    except (OSError, KeyError):  # no USER and a uid without a passwd entry (containers)
        user = ""
    return user or f"uid-{os.getuid()}"


def audit(action: str, target: str | None, detail: dict[str, Any] | None = None) -> None:
    """Record a change this command made in the audit log, by actor(), source `cli`."""
    from personatag.audit_log import record_now

    record_now(store(), actor=actor(), action=action, target=target, detail=detail)


def store(*, create: bool = False) -> Store:
    from personatag.store import open_store

    s = settings()
    return open_store(s.resolved_store_url, create=create)


def buckets() -> Buckets:
    from personatag.buckets import open_buckets

    return open_buckets(settings())


def emit(obj: Any) -> None:
    typer.echo(json.dumps(obj, default=str))


def as_of_option(value: str | None, option: str = "--as-of") -> datetime | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except ValueError:
        raise InputError(
            f"invalid {option} {value!r}: use ISO-8601, e.g. 2026-06-30T12:00:00Z"
        ) from None
