"""The change feed: an outbox written in the same transaction as the data.

Every write to contacts, reads or logins calls `record` inside its own write
transaction, so a change is in the feed exactly when it is in the store. A
row names one contact, or a batch of them (an import batch) as a packed id
block. Memberships moved outside the stream (pins, ad hoc requests, a retired
criterion) are recorded too, as KIND_PERSONA / KIND_PIN rows, when a live
ongoing criterion is concerned (definitions.watch.record_moved). Rows are read back in seq
order by the stream processor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from personatag.domain import utcnow
from personatag.store import Store
from personatag.store.ids import decode_ids, encode_ids

KIND_CONTACT = "contact"
KIND_READ = "read"
KIND_LOGIN = "login"
# Memberships moved outside the stream (a pin, an ad hoc request, a retired
# criterion): `fields` names the persona keys whose holders changed, so the
# stream re-evaluates the ongoing criteria reading them (persona(...)).
KIND_PERSONA = "persona"
# A pin-out was lifted: `fields` names the persona keys, so the stream
# re-evaluates the ongoing criteria tagging them (pins no longer win there).
KIND_PIN = "pin"
KINDS = (KIND_CONTACT, KIND_READ, KIND_LOGIN, KIND_PERSONA, KIND_PIN)


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    at: datetime
    kind: str
    pks: Sequence[int]
    # Contact fields written (None: all of them, or not a contact change).
    fields: frozenset[str] | None


# A read change names up to this many publications (as `pub:PK` fields), so the
# stream evaluates only criteria counting reads of such publications; more and
# it names none (every read criterion is evaluated).
MAX_NAMED_PUBLICATIONS = 1000


def publication_fields(publication_pks: Iterable[int]) -> list[str] | None:
    """The `fields` of a read change of these publications."""
    unique = sorted({int(p) for p in publication_pks})
    if not unique or len(unique) > MAX_NAMED_PUBLICATIONS:
        return None
    return [f"pub:{p}" for p in unique]


def record(
    conn: Connection,
    store: Store,
    kind: str,
    pks: Iterable[int],
    fields: Iterable[str] | None = None,
) -> None:
    """Append one change (of `kind`, to the contacts `pks`) to the feed."""
    if kind not in KINDS:
        raise ValueError(f"unknown change kind {kind!r}")
    if hasattr(pks, "dtype"):  # a bulk change's ids (numpy), usually sorted already
        import numpy as np

        unique: Any = np.asarray(pks, dtype=np.int64)
        if len(unique) > 1 and not bool(np.all(unique[1:] > unique[:-1])):
            unique = np.unique(unique)
    else:
        unique = sorted({int(pk) for pk in pks})
    if not len(unique):
        return
    store.lock_feed(conn)
    names = None if fields is None else ",".join(sorted(set(fields)))
    values: dict[str, Any] = {"at": utcnow(), "kind": kind, "n": len(unique), "fields": names}
    if len(unique) == 1:
        values["contact_pk"] = int(unique[0])
    else:
        import numpy as np

        values["pks"] = encode_ids(np.asarray(unique, dtype=np.int64))
    conn.execute(store.tables.changes.insert().values(**values))


def record_each(
    conn: Connection,
    store: Store,
    kind: str,
    items: Iterable[tuple[int, Iterable[str] | None]],
) -> None:
    """Append one change per (contact pk, fields) item: a batch of separate
    changes written in one transaction (not one change to many contacts)."""
    if kind not in KINDS:
        raise ValueError(f"unknown change kind {kind!r}")
    at = utcnow()
    rows = [
        {
            "at": at,
            "kind": kind,
            "contact_pk": int(pk),
            "n": 1,
            "fields": None if fields is None else ",".join(sorted(set(fields))),
        }
        for pk, fields in items
    ]
    if rows:
        store.lock_feed(conn)
        conn.execute(store.tables.changes.insert(), rows)


def read(conn: Connection, store: Store, after: int, limit: int) -> list[Change]:
    """Up to `limit` feed rows with seq > `after`, in order."""
    ch = store.tables.changes
    rows = conn.execute(select(ch).where(ch.c.seq > after).order_by(ch.c.seq).limit(limit)).all()
    out = []
    for r in rows:
        if r.contact_pk is not None:
            pks: Sequence[int] = (int(r.contact_pk),)
        else:
            pks = decode_ids(r.pks).tolist()
        fields = None if r.fields is None else frozenset(r.fields.split(","))
        out.append(Change(int(r.seq), r.at, r.kind, pks, fields))
    return out


def head(conn: Connection, store: Store) -> int:
    """The newest seq in the feed (0 when empty)."""
    ch = store.tables.changes
    return int(conn.scalar(select(func.max(ch.c.seq))) or 0)


def changes_after(conn: Connection, store: Store, after: int) -> int:
    """Contact changes in the feed after seq `after` (a change naming many
    contacts, an import's, counts each)."""
    ch = store.tables.changes
    return int(conn.scalar(select(func.coalesce(func.sum(ch.c.n), 0)).where(ch.c.seq > after)) or 0)


def pending(conn: Connection, store: Store, name: str) -> int:
    """Contact changes consumer `name` has yet to read."""
    return changes_after(conn, store, get_offset(conn, store, name))


def oldest_after(conn: Connection, store: Store, after: int) -> datetime | None:
    """When the oldest change after `after` was written (None: none waiting)."""
    ch = store.tables.changes
    return conn.scalar(select(ch.c.at).where(ch.c.seq > after).order_by(ch.c.seq).limit(1))


def get_offset(conn: Connection, store: Store, name: str) -> int:
    so = store.tables.stream_offsets
    return int(conn.scalar(select(so.c.seq).where(so.c.name == name)) or 0)


def set_offset(conn: Connection, store: Store, name: str, seq: int) -> None:
    """Store how far `name` has got (in the caller's transaction)."""
    so = store.tables.stream_offsets
    now = utcnow()
    done = conn.execute(
        so.update().where(so.c.name == name).values(seq=seq, updated_at=now)
    ).rowcount
    if not done:
        conn.execute(so.insert().values(name=name, seq=seq, updated_at=now))
