"""The audit log: who did what to which thing, from where (CLI, API, web).

Events are append-only rows in `audit_events`, numbered by `seq`. `record`
writes inside the caller's transaction, so an event commits exactly when the
change it describes does; `record_now` is for events that are not part of a
change (a login, a refused login).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from personatag.domain import utcnow
from personatag.errors import InputError
from personatag.store.db import Store
from personatag.times import iso

SOURCES = ("cli", "api", "web", "stream")
MAX_LIMIT = 1000


def _json_default(value: object) -> str:
    return iso(value) if isinstance(value, datetime) else str(value)


def record(
    conn: Connection,
    store: Store,
    *,
    actor: str | None,
    action: str,
    target: str | None,
    detail: dict[str, Any] | None = None,
    source: str = "cli",
) -> None:
    """Append one event inside `conn`'s transaction (it commits or rolls back with it).

    `detail` is stored as JSON: datetimes as ISO-8601 text, other values JSON
    cannot hold as their str().
    """
    if source not in SOURCES:
        raise InputError(f"unknown audit source {source!r}: use {', '.join(SOURCES)}")
    if not action:
        raise InputError("an audit event needs an action")
    conn.execute(
        store.tables.audit_events.insert().values(
            at=utcnow(),
            actor=actor,
            action=action,
            target=target,
            detail=None
            if detail is None
            else json.dumps(detail, sort_keys=True, default=_json_default, ensure_ascii=False),
            source=source,
        )
    )


def record_now(
    store: Store,
    *,
    actor: str | None,
    action: str,
    target: str | None,
    detail: dict[str, Any] | None = None,
    source: str = "cli",
) -> None:
    """Append one event in a transaction of its own."""
    with store.write() as conn:
        record(conn, store, actor=actor, action=action, target=target, detail=detail, source=source)


def _matches(column: Any, action: str) -> Any:
    if action.endswith(".*"):
        return column.startswith(action[:-1], autoescape=True)
    return column == action


def list_events(
    store: Store,
    *,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    before_seq: int | None = None,
    exclude_actions: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Events newest first, each `{seq, at, actor, action, target, detail, source}`.

    Filters are exact matches, except that an `action` ending in `.*` matches
    every action with that prefix (`user.*`). `since` is inclusive, `until`
    exclusive. Page back with `before_seq` = the smallest `seq` seen.
    `exclude_actions` leaves out actions, in the same syntax as `action`.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise InputError(f"invalid limit {limit}: use 1 to {MAX_LIMIT}")
    e = store.tables.audit_events
    query = select(e).order_by(e.c.seq.desc()).limit(limit)
    if actor is not None:
        query = query.where(e.c.actor == actor)
    if action is not None:
        query = query.where(_matches(e.c.action, action))
    for excluded in exclude_actions:
        query = query.where(~_matches(e.c.action, excluded))
    if target is not None:
        query = query.where(e.c.target == target)
    if since is not None:
        query = query.where(e.c.at >= since)
    if until is not None:
        query = query.where(e.c.at < until)
    if before_seq is not None:
        query = query.where(e.c.seq < before_seq)
    with store.read() as conn:
        rows = conn.execute(query).all()
    return [
        {
            "seq": r.seq,
            "at": iso(r.at),
            "actor": r.actor,
            "action": r.action,
            "target": r.target,
            "detail": None if r.detail is None else json.loads(r.detail),
            "source": r.source,
        }
        for r in rows
    ]
