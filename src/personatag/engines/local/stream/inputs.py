"""Loading what the evaluator needs for a batch of contacts, in a few queries."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, select

from personatag.criteria.to_python import EvalInput
from personatag.domain import CUSTOM_COLUMN_PREFIX
from personatag.store import Store, changefeed, versions
from personatag.store.rowwise import fetch_tuples, fetch_typed, grouped, in_parts
from personatag.store.text import leniently
from personatag.store.types import from_micros, to_micros

__all__ = ["Needs", "Publications", "changes_between", "grouped", "load_inputs"]


def changes_between(
    conn: Connection, store: Store, after: int, upto: int
) -> Iterator[changefeed.Change]:
    """The feed's changes after seq `after` up to seq `upto`, read in pages."""
    while after < upto:
        batch = changefeed.read(conn, store, after, 10_000)
        batch = [ch for ch in batch if ch.seq <= upto]
        if not batch:
            return
        yield from batch
        after = batch[-1].seq


@dataclass(frozen=True)
class Needs:
    """What the criteria being evaluated read (so nothing else is loaded)."""

    read_days: int = 0
    login_days: int = 0
    personas: bool = False


class Publications:
    """Publication fields by pk, reloaded when the publications table changes."""

    def __init__(self) -> None:
        self.version = -1
        self.by_pk: dict[int, dict[str, Any]] = {}

    def get(self, conn: Connection, store: Store) -> dict[int, dict[str, Any]]:
        version = versions.current(conn, store.tables, ["publications"])["publications"]
        if version != self.version or not self.by_pk:
            self.by_pk = _publications(conn, store)
            self.version = version
        return self.by_pk


@leniently
def _publications(conn: Connection, store: Store) -> dict[int, dict[str, Any]]:
    p = store.tables.publications
    return {
        int(r.pk): {k: v for k, v in r._mapping.items() if k != "pk"}
        for r in conn.execute(select(p))
    }


@leniently
def load_inputs(
    conn: Connection,
    store: Store,
    pks: Sequence[int],
    needs: Needs,
    as_of: datetime,
    pubs: Publications,
    persona_keys: dict[int, str],
) -> dict[int, EvalInput]:
    """An EvalInput for every contact in `pks` that exists (deleted ones are
    absent). Stored text that is not UTF-8 is read with U+FFFD in place of
    the bytes (store/text.py): it equals no text a criterion names, as in
    the store, but a pattern may match the U+FFFD where the store's
    comparison of the bytes does not."""
    t = store.tables
    c = t.contacts
    rows: dict[int, dict[str, Any]] = {}
    fields = [col for col in c.columns if col.name != "pk"]
    names = [col.name.removeprefix(CUSTOM_COLUMN_PREFIX) for col in fields]
    backend = store.backend
    for within in in_parts(backend, c.c.pk, pks):
        for pk, *values in fetch_typed(conn, select(c.c.pk, *fields).where(within)):
            rows[pk] = dict(zip(names, values, strict=True))
    # Reads and logins come through the driver's cursor as stored (integer
    # microseconds; store/types.py), turned into datetimes here as their
    # column type does (int(): a fraction SQLite may hold is cut): a batch
    # reads hundreds of thousands, and a Row with its type processing each
    # cost about three times the read (fetch_tuples). A read of a publication
    # pk that names none (a value of another type) is left out, as the
    # store's join leaves it.
    reads: dict[int, list[tuple[dict[str, Any], datetime]]] = {}
    if needs.read_days:
        by_pk = pubs.get(conn, store)
        since = to_micros(as_of - timedelta(days=needs.read_days))
        rd = t.reads
        for within in in_parts(backend, rd.c.contact_pk, list(rows)):
            q = select(rd.c.contact_pk, rd.c.read_at, rd.c.publication_pk).where(
                within, rd.c.read_at > since
            )
            for cpk, at, ppk in fetch_tuples(conn, q):
                pub = by_pk.get(ppk)
                if pub is not None:
                    got = reads.get(cpk)
                    if got is None:
                        got = reads[cpk] = []
                    got.append((pub, from_micros(int(at))))
    logins: dict[int, list[datetime]] = {}
    if needs.login_days:
        since = to_micros(as_of - timedelta(days=needs.login_days))
        lg = t.logins
        for within in in_parts(backend, lg.c.contact_pk, list(rows)):
            q2: Select[Any] = select(lg.c.contact_pk, lg.c.login_at).where(
                within, lg.c.login_at > since
            )
            for cpk, at in fetch_tuples(conn, q2):
                got_at = logins.get(cpk)
                if got_at is None:
                    got_at = logins[cpk] = []
                got_at.append(from_micros(int(at)))
    held: dict[int, set[str]] = {}
    if needs.personas:
        ms = t.membership_rows
        for within in in_parts(backend, ms.c.contact_pk, list(rows)):
            q = select(ms.c.contact_pk, ms.c.persona_pk).where(within).distinct()
            for cpk, ppk in conn.execute(q):
                key = persona_keys.get(int(ppk))
                if key is not None:
                    held.setdefault(int(cpk), set()).add(key)
    return {
        pk: EvalInput(
            contact=row,
            reads=reads.get(pk, ()),
            logins=logins.get(pk, ()),
            personas=frozenset(held.get(pk, ())),
            as_of=as_of,
        )
        for pk, row in rows.items()
    }
