"""The membership log as events: one per contact change, in seq order.

Shared by the JSON-lines export and the webhooks. A log entry is one contact's
change, or a bulk entry holding many contacts (`bulk_ids`); a bulk entry
becomes one event per contact, all with the entry's seq, in contact pk order.

Only *settled* entries are read (see `settled_seq`): on PostgreSQL seqs are
handed out when a row is inserted but become visible when its transaction
commits, so seq 10 can appear after seq 11 was read. A reader that moved its
cursor past 11 would never see 10. Reading no further than the settled seq
closes that gap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from personatag.domain import SOURCE_ADHOC, SOURCE_MANUAL
from personatag.errors import NotFoundError
from personatag.store import Store
from personatag.store.ids import decode_ids

log = logging.getLogger(__name__)

# Log entries per read, and contact pks resolved to ids per statement.
ENTRY_CHUNK = 500
ID_CHUNK = 1000


def source_name(source: int) -> str:
    """`adhoc`, `manual` (a pin) or `criterion` (an ongoing criterion)."""
    if source == SOURCE_ADHOC:
        return "adhoc"
    if source == SOURCE_MANUAL:
        return "manual"
    return "criterion"


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


# -- the settled end of the log ------------------------------------------------


@dataclass(frozen=True)
class _Observation:
    last_seq: int  # the sequence's last value when observed
    running: frozenset[tuple[int, str]]  # (pid, xid) of this database's writers just after


def _writers(conn: Connection, store: Store) -> frozenset[tuple[int, str]]:
    # Each read is its own transaction: PostgreSQL keeps one view of
    # pg_stat_activity per transaction.
    found = store.backend.running_writers(conn)
    conn.rollback()
    return found


def _observe(conn: Connection, store: Store) -> _Observation:
    # The sequence first, then the writers: a transaction that had taken a seq
    # up to last_seq is either finished or listed as running.
    last = store.backend.serial_last_value(conn, "membership_log", "seq")
    conn.rollback()
    return _Observation(last, _writers(conn, store))


def _still_running(conn: Connection, store: Store, running: frozenset[tuple[int, str]]) -> bool:
    return bool(running) and bool(running & _writers(conn, store))


class Horizon:
    """The highest seq below which no membership-log entry can still appear.

    SQLite has one writer at a time, so every seq it shows is settled (its
    backend lists no running writers). On PostgreSQL an observation (the
    sequence's last value, then this database's transactions that have written
    something) settles once those transactions have ended; a Horizon remembers
    its oldest unsettled observation, so a long-lived reader (the webhook
    worker) advances while writers overlap.
    Every writer of the log writes memberships or pins first, so a transaction
    holding a seq is always listed.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._settled = 0
        self._pending: _Observation | None = None

    def current(self) -> int:
        """The settled seq now (never less than before)."""
        with self.store.engine.connect() as conn:
            if self._pending is not None and not _still_running(
                conn, self.store, self._pending.running
            ):
                self._settled = max(self._settled, self._pending.last_seq)
                self._pending = None
            now = _observe(conn, self.store)
            if not _still_running(conn, self.store, now.running):
                self._settled = max(self._settled, now.last_seq)
                self._pending = None
            elif self._pending is None:
                self._pending = now
        return self._settled

    def wait(self, timeout_s: float, poll_s: float = 0.05) -> int:
        """The settled seq once everything observed now has settled, or after
        `timeout_s` what has settled by then (for one-shot readers)."""
        deadline = time.monotonic() + timeout_s
        target = None
        while True:
            settled = self.current()
            if self._pending is None:
                return settled
            if target is None:
                target = self._pending.last_seq
            if settled >= target or time.monotonic() >= deadline:
                return settled
            time.sleep(poll_s)


def settled_seq(store: Store, *, wait_s: float = 10.0) -> int:
    """The highest seq a one-shot reader may read up to without leaving a gap:
    waits up to `wait_s` for transactions writing to the log to end."""
    return Horizon(store).wait(wait_s)


# -- reading entries as events ---------------------------------------------------


def persona_pks(store: Store, keys: Sequence[str]) -> dict[str, int]:
    """Persona key -> pk; NotFoundError naming the first unknown key."""
    p = store.tables.personas
    with store.read() as conn:
        found = {
            k: int(pk) for k, pk in conn.execute(select(p.c.key, p.c.pk).where(p.c.key.in_(keys)))
        }
    for key in keys:
        if key not in found:
            raise NotFoundError(f"unknown persona {key!r}")
    return found


@dataclass(frozen=True)
class Entry:
    """One membership-log entry with what its events share."""

    seq: int
    bulk_count: int | None  # None: one contact (contact_id)
    contact_id: str | None
    head: dict[str, Any]  # every event field but contact_id


def read_entries(
    store: Store,
    *,
    after: int,
    until: int,
    personas: Sequence[int] | None = None,
    limit: int = ENTRY_CHUNK,
) -> list[Entry]:
    """Up to `limit` entries with after < seq <= until, in seq order (blobs not read)."""
    t = store.tables
    lg = t.membership_log
    query = (
        select(
            lg.c.seq,
            lg.c.at,
            lg.c.change,
            lg.c.source,
            lg.c.bulk_count,
            t.personas.c.key.label("persona"),
            t.contacts.c.id.label("contact_id"),
            t.criteria.c.name.label("criterion_name"),
            t.criteria.c.version.label("criterion_version"),
            t.requests.c.request_id,
        )
        .select_from(
            lg.outerjoin(t.personas, t.personas.c.pk == lg.c.persona_pk)
            .outerjoin(t.contacts, t.contacts.c.pk == lg.c.contact_pk)
            .outerjoin(t.criteria, t.criteria.c.pk == lg.c.criterion_pk)
            .outerjoin(t.requests, t.requests.c.pk == lg.c.request_pk)
        )
        .where(lg.c.seq > after, lg.c.seq <= until)
        .order_by(lg.c.seq)
        .limit(limit)
    )
    if personas is not None:
        query = query.where(lg.c.persona_pk.in_(list(personas)))
    with store.read() as conn:
        rows = conn.execute(query).all()
    entries = []
    for r in rows:
        criterion = (
            None if r.criterion_name is None else f"{r.criterion_name}@{r.criterion_version}"
        )
        head = {
            "seq": int(r.seq),
            "at": iso(r.at),
            "persona": r.persona,
            "change": r.change,
            "source": source_name(int(r.source)),
            "criterion": criterion,
            "request_id": r.request_id,
        }
        entries.append(
            Entry(
                int(r.seq),
                None if r.bulk_count is None else int(r.bulk_count),
                r.contact_id,
                head,
            )
        )
    return entries


def event(entry: Entry, contact_id: str | None) -> dict[str, Any]:
    """The event object: seq, at, persona, contact_id, change, source, criterion, request_id."""
    h = entry.head
    return {
        "seq": h["seq"],
        "at": h["at"],
        "persona": h["persona"],
        "contact_id": contact_id,
        "change": h["change"],
        "source": h["source"],
        "criterion": h["criterion"],
        "request_id": h["request_id"],
    }


# The last bulk entry decoded: a webhook sends a large one in many batches,
# each of which would otherwise decode it again. Entries never change.
_LAST_BULK: tuple[tuple[str, int], Any] | None = None


def bulk_pks(store: Store, seq: int) -> Any:
    """The sorted contact pks of bulk entry `seq` (a read-only numpy array)."""
    global _LAST_BULK
    key = (store.engine.url.render_as_string(hide_password=True), seq)
    cached = _LAST_BULK
    if cached is not None and cached[0] == key:
        return cached[1]
    lg = store.tables.membership_log
    with store.read() as conn:
        blob = conn.scalar(select(lg.c.bulk_ids).where(lg.c.seq == seq))
    pks = decode_ids(bytes(blob or b""))
    pks.setflags(write=False)
    _LAST_BULK = (key, pks)
    return pks


def contact_ids(store: Store, pks: Sequence[int]) -> list[str | None]:
    """The external ids of `pks`, in the same order (None for a contact gone since)."""
    c = store.tables.contacts
    found: dict[int, str] = {}
    with store.read() as conn:
        for i in range(0, len(pks), ID_CHUNK):
            chunk = [int(pk) for pk in pks[i : i + ID_CHUNK]]
            found.update(
                (int(pk), cid)
                for pk, cid in conn.execute(select(c.c.pk, c.c.id).where(c.c.pk.in_(chunk)))
            )
    return [found.get(int(pk)) for pk in pks]


def entry_events(store: Store, entry: Entry, *, skip: int = 0) -> Iterator[dict[str, Any]]:
    """The events of one entry, from its `skip`-th contact on (bounded memory)."""
    if entry.bulk_count is None:
        if skip == 0:
            yield event(entry, entry.contact_id)
        return
    pks = bulk_pks(store, entry.seq)
    for i in range(skip, len(pks), ID_CHUNK):
        for cid in contact_ids(store, pks[i : i + ID_CHUNK]):
            yield event(entry, cid)
