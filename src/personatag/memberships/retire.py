"""Retiring an ongoing criterion: every membership it holds is removed."""

from __future__ import annotations

from sqlalchemy import Connection

from personatag.config import Settings
from personatag.definitions import criteria, watch
from personatag.domain import utcnow
from personatag.memberships.rows import Holders, Writer
from personatag.store import Store, changefeed


def remove_memberships(
    conn: Connection, store: Store, criterion_pk: int, persona_pk: int, reason: str
) -> int:
    """Delete criterion `criterion_pk`'s rows; log exits where nothing else holds the
    persona. Returns the number of contacts that left the persona."""
    store.lock_persona(conn, persona_pk)
    holders = Holders.load_persona(conn, store, persona_pk)
    members = sorted(c for (_, c), s in holders.sources.items() if criterion_pk in s)
    writer = Writer(store, utcnow(), Settings().bulk_log_threshold)
    writer.decide(holders, persona_pk, criterion_pk, True, members, ())
    outcome = writer.flush(conn, reason=reason)
    # Moved outside a step: the persona(...) criteria reading it re-check those contacts.
    watch.record_moved(
        conn, store, changefeed.KIND_PERSONA, persona_pk, [c for _, c in outcome.exited]
    )
    rc = store.tables.stream_rechecks
    conn.execute(rc.delete().where(rc.c.criterion_pk == criterion_pk))
    return len(outcome.exited)


def set_ongoing_status(
    store: Store, name: str, action: str, *, actor: str | None = None, source: str = "cli"
) -> criteria.Criterion:
    """Pause, resume or retire the live version of ongoing criterion `name`
    (see definitions.criteria.set_ongoing_status). Retiring removes the
    memberships of every version it retires, in the same transaction, with
    exits logged where no other source holds the persona."""
    return criteria.set_ongoing_status(
        store, name, action, actor=actor, source=source, remove_memberships=remove_memberships
    )
