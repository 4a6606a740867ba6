"""Grants: when and by what memberships were given.

A membership row is its key (persona, contact, source) and a grant's pk; the
grant holds `since`, the request and the criterion, once for all the rows an
ad hoc request, a pin-in or a stream flush adds (store/schema.py,
membership_rows). Readers see both joined in the `memberships` view.

A grant outlives its last row until `prune` removes it: rows leave one by
one (exits, untags, unpins) and nothing counts a grant's rows. `prune` scans
the rows once; the stream runs it with its reconciliation.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select

from personatag.store import Store


def add(
    conn: Connection,
    store: Store,
    since: datetime,
    *,
    request_pk: int | None = None,
    criterion_pk: int | None = None,
) -> int:
    """A new grant; returns its pk."""
    g = store.tables.membership_grants
    pk = conn.scalar(
        g.insert()
        .values(since=since, request_pk=request_pk, criterion_pk=criterion_pk)
        .returning(g.c.pk)
    )
    return int(pk)


def discard(conn: Connection, store: Store, pk: int) -> None:
    """Delete grant `pk`, which its writer knows no row references (it added none)."""
    g = store.tables.membership_grants
    conn.execute(g.delete().where(g.c.pk == pk))


def prune(conn: Connection, store: Store) -> int:
    """Delete every grant no row references; returns how many. One scan of
    the rows (SQLite and PostgreSQL both hash the subquery's grant pks)."""
    g, r = store.tables.membership_grants, store.tables.membership_rows
    result = conn.execute(
        g.delete().where(g.c.pk.not_in(select(r.c.grant_pk).distinct())),
        execution_options={"preserve_rowcount": True},
    )
    return int(result.rowcount or 0)
