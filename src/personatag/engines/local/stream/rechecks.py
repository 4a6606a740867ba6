"""Time-window re-checks: when time alone can change a criterion's answer.

A window criterion (`count(reads in 30d) >= 3`, `last_login within 7d`) can
change its answer for a contact with no change to that contact. Each
evaluation stores the exact next moment it could (`Ongoing.next_due`) in
`stream_rechecks`; the step picks the due pairs up beside the feed, so nobody
is swept on a timer. Written in the step's transaction, with its offset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection, select

from personatag.definitions.personas import persona_pks
from personatag.domain import Catalog
from personatag.engines.local.stream import ongoing as og
from personatag.memberships.rows import Outcome
from personatag.store import Store
from personatag.store.rowwise import bound, fetch_tuples, in_parts, to_driver


def _replace(
    conn: Connection,
    store: Store,
    drop: Sequence[tuple[int, int]],
    add: Sequence[tuple[int, int, int]],
) -> None:
    """Delete the re-checks of the (criterion, contact) pairs `drop`, then
    insert `add` (with their due time as stored): thousands of scattered
    rows a step, one statement each way on PostgreSQL (Backend.insert_int_rows;
    an executemany of a statement per row took a quarter of a step there)."""
    rc = store.tables.stream_rechecks
    store.backend.delete_int_rows(conn, rc, ("criterion_pk", "contact_pk"), drop)
    store.backend.insert_int_rows(conn, rc, ("criterion_pk", "contact_pk", "due_at"), add)


def due(
    conn: Connection,
    store: Store,
    now: datetime,
    limit: int,
    partition: tuple[int, int] | None = None,
) -> list[tuple[int, int]]:
    """Up to `limit` (criterion pk, contact pk) pairs whose re-check is due at
    `now` (of partition (p, n)'s contacts only, when given)."""
    rc = store.tables.stream_rechecks
    q = select(rc.c.criterion_pk, rc.c.contact_pk).where(rc.c.due_at <= now)
    if partition is not None:
        q = q.where(rc.c.contact_pk % partition[1] == partition[0])
    rows = conn.execute(q.order_by(rc.c.due_at).limit(limit)).all()
    return [(int(a), int(b)) for a, b in rows]


def write(
    conn: Connection,
    store: Store,
    done: list[tuple[int, int]],
    next_due: Mapping[tuple[int, int], datetime | None],
) -> None:
    """Store the next re-check of every evaluated window pair (`next_due`; the
    `done` pairs were due and have none unless it says so); write only what
    changed (most pairs have none before and none after)."""
    rc = store.tables.stream_rechecks
    wanted: dict[tuple[int, int], datetime | None] = {pair: None for pair in done}
    wanted.update(next_due)
    if not wanted:
        return
    # Every re-check of the contacts at once (a few per contact; one query per
    # chunk of contacts, not one per group of criteria), kept where wanted.
    # Compared as stored (microseconds; fetch_tuples converts nothing).
    have: dict[tuple[int, int], int] = {}
    for within in in_parts(store.backend, rc.c.contact_pk, sorted({k for _, k in wanted})):
        q = select(rc.c.criterion_pk, rc.c.contact_pk, rc.c.due_at).where(within)
        for c, k, at in fetch_tuples(conn, q):
            if (c, k) in wanted:
                have[(c, k)] = at
    # One pass: most pairs want none and have none.
    stored = to_driver(conn, rc.c.due_at)
    drop: list[tuple[int, int]] = []
    add: list[tuple[int, int, int]] = []
    for pair, at in wanted.items():
        old = have.get(pair)
        if at is None:
            if old is not None:
                drop.append(pair)
            continue
        us = stored(at)
        if old != us:
            if old is not None:
                drop.append(pair)
            add.append((pair[0], pair[1], us))
    _replace(conn, store, drop, add)


def recheck_readers(
    conn: Connection, store: Store, index: og.Index, outcome: Outcome, now: datetime
) -> None:
    """Personas moved outside a step (a swap, a repair): the persona(...)
    criteria reading them get a re-check now, so the next step settles
    their cascade for those contacts as it would a change's."""
    if not index.by_persona or not (outcome.entered or outcome.exited):
        return
    keys = {pk: key for key, pk in persona_pks(conn, store).items()}
    pairs = sorted(
        {
            (crit.pk, cpk)
            for ppk, cpk in outcome.entered + outcome.exited
            for crit in index.by_persona.get(keys.get(ppk, ""), ())
        }
    )
    if not pairs:
        return
    at = bound(conn, store.tables.stream_rechecks.c.due_at, now)
    _replace(conn, store, pairs, [(c, k, at) for c, k in pairs])


def schedule_swapped(
    conn: Connection, store: Store, crit: og.Ongoing, matched: set[int], now: datetime
) -> None:
    """A window criterion just swapped in: its members, and those time alone can
    bring in (events or timestamps after now; with `count(...) < k` also those
    in the window), get their exact re-check time from a first evaluation."""
    rc = store.tables.stream_rechecks
    conn.execute(rc.delete().where(rc.c.criterion_pk == crit.pk))
    recheck = set(matched)
    catalog = store.catalog(conn)
    for name, days in crit.windows:
        since = now if crit.falls_only else now - timedelta(days=days)
        recheck |= moving(conn, store, catalog, name, since)
    if recheck:
        conn.execute(
            rc.insert(),
            [{"criterion_pk": crit.pk, "contact_pk": c, "due_at": now} for c in sorted(recheck)],
        )


def drop_criterion(conn: Connection, store: Store, crit_pk: int) -> None:
    """Forget every re-check of a criterion (superseded)."""
    rc = store.tables.stream_rechecks
    conn.execute(rc.delete().where(rc.c.criterion_pk == crit_pk))


def moving(
    conn: Connection,
    store: Store,
    catalog: Catalog,
    name: str,
    since: datetime,
    cpks: list[int] | None = None,
) -> set[int]:
    """Contacts (of `cpks`, or all) with a read or login (`name`), or a value
    of the timestamp field `name`, after `since`."""
    t = store.tables
    if name == og.EVENT_READ:
        who, at = t.reads.c.contact_pk, t.reads.c.read_at
    elif name == og.EVENT_LOGIN:
        who, at = t.logins.c.contact_pk, t.logins.c.login_at
    else:
        who, at = t.contacts.c.pk, t.contacts.c[catalog.column_for(name)]
    q = select(who).where(at > since).distinct()
    if cpks is None:
        return {int(c) for c in conn.scalars(q)}
    found: set[int] = set()
    for within in in_parts(store.backend, who, cpks):
        found.update(int(c) for c in conn.scalars(q.where(within)))
    return found
