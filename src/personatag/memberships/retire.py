"""Removing every membership an ongoing criterion holds (retiring it)."""

from __future__ import annotations

from sqlalchemy import Connection

from personatag.definitions import watch
from personatag.domain import utcnow
from personatag.memberships.rows import Holders, Writer
from personatag.store import Store, changefeed


def remove_memberships(
    conn: Connection, store: Store, criterion_pk: int, persona_pk: int, reason: str
) -> int:
    """Delete criterion `criterion_pk`'s rows; log exits where nothing else holds the
    persona. Returns the number of contacts that left the persona."""
    from personatag.config import Settings

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
