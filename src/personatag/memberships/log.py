"""The membership log: one row per change, or one compact row per bulk change.

A bulk entry stores the changed contact pks as a packed id block (see
store/ids.py): 10M consecutive contacts take about 10 KB, 10M scattered
over 20M about 4 MB — instead of 10M log rows — and the entry stays
answerable (decode, then binary search).

Every enter and exit logged here moves a persona outside the stream (a pin, an
ad hoc request): when a live ongoing criterion reads that persona, the same
transaction adds one change to the feed naming the persona and the contacts
(a packed id block for a bulk change), so the stream re-evaluates them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Select, literal, select

from personatag.definitions import watch
from personatag.store import Store, changefeed
from personatag.store.ids import decode_ids, encode_ids, encode_run

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "IdCapture",
    "LogContext",
    "decode_ids",
    "encode_ids",
    "fetch_ids",
    "insert_bulk_entry",
    "insert_indexed_entries",
    "log_for_contact",
    "log_from_select",
    "log_one",
    "moved",
]


class _DecodedBulk:
    """Decoded bulk entries, bounded by their size in bytes.

    A bulk entry never changes once written, so a contact lookup (the API's
    contact page, under load) decodes a 10M-id entry once, not per request.
    The key is the store's URL with the entry's seq, count and pk range, so
    entries of different stores sharing a process are not confused.
    """

    def __init__(self, budget_bytes: int = 256 * 2**20) -> None:
        self.budget = budget_bytes
        self._items: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], blob: Callable[[], bytes]) -> Any:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        ids = decode_ids(blob())
        ids.setflags(write=False)
        with self._lock:
            if key not in self._items and ids.nbytes <= self.budget:
                self._items[key] = ids
                self._bytes += ids.nbytes
                while self._bytes > self.budget:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
        return ids


_DECODED = _DecodedBulk()


class IdCapture:
    """Fetch the ids a query returns on another connection, in a thread.

    SQLite only: the caller holds the write lock (BEGIN IMMEDIATE) and has not
    yet changed what the query reads, so this reader's snapshot is exactly the
    state the caller's next statement sees. The fetch then runs on the second
    core while the caller's INSERT runs on the first (sqlite3 releases the GIL
    while it steps), taking the audit's id read-back off the critical path.

    A query of two columns (pk, text label) also returns the labels of those
    pks, in the same order, as UTF-8 bytes NUL-separated (labels never hold
    NUL), from the same scan; `then(pks, labels)` gets both (labels None for
    one column).
    """

    def __init__(
        self,
        store: Store,
        query: Select[Any],
        then: Callable[[np.ndarray, bytes | None], None] | None = None,
    ) -> None:
        self._result: np.ndarray | None = None
        self._error: BaseException | None = None
        self._then = then
        self._thread = threading.Thread(target=self._run, args=(store, query), daemon=True)
        self._thread.start()

    def _run(self, store: Store, query: Select[Any]) -> None:
        try:
            with store.read() as conn:
                self._result, labels = _fetch_ids_labels(conn, store, query)
            if self._then is not None:  # more work on these ids, still beside the insert
                self._then(self._result, labels)
        except BaseException as exc:  # handed to the caller in result()
            self._error = exc

    def abandon(self) -> None:
        """Wait for the reader and drop its result (the caller's write failed)."""
        self._thread.join()

    def result(self) -> np.ndarray:
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise RuntimeError("id capture finished without a result")
        return self._result


def _parse_ids(text: str | None) -> np.ndarray:
    import numpy as np  # only bulk changes need it; keeps CLI start-up light

    if not text:
        return np.empty(0, dtype=np.int64)
    return np.fromstring(text, dtype=np.int64, sep=",")  # a new array, no copy needed


def _fetch_ids_labels(
    conn: Connection, store: Store, query: Select[Any]
) -> tuple[np.ndarray, bytes | None]:
    sub = query.subquery()
    cols = list(sub.c)
    if len(cols) == 1:
        return fetch_ids(conn, store, query), None
    # One string of ids and one of labels: far cheaper than a row per id
    # through the driver. (Only where text cannot hold NUL: SQLite, see IdCapture.)
    labels = store.backend.nul_list(cols[1])
    pks, blob = conn.execute(select(store.backend.id_list(cols[0]), labels).select_from(sub)).one()
    return _parse_ids(pks), bytes(blob or b"")


def fetch_ids(conn: Connection, store: Store, query: Select[Any]) -> np.ndarray:
    """Run a one-column query of integer ids and return them as a numpy array."""
    sub = query.subquery()
    col = next(iter(sub.c))
    # One string of comma-separated ids: far cheaper than a row per id
    # through the driver (8M ids: ~0.7 s instead of ~2 s on SQLite).
    return _parse_ids(conn.scalar(select(store.backend.id_list(col)).select_from(sub)))


@dataclass(frozen=True)
class LogContext:
    """Who, why and when for every log entry a change writes."""

    at: datetime
    persona_pk: int
    source: int
    request_pk: int | None
    criterion_pk: int | None
    actor: str | None
    reason: str | None


def log_from_select(
    conn: Connection,
    store: Store,
    ctx: LogContext,
    change: str,
    contact_pks: Select[Any],
    *,
    count: int,
    bulk_threshold: int,
    ids: np.ndarray | None = None,
    run: tuple[int, int] | None = None,
) -> np.ndarray | None:
    """Log `change` for every contact pk the query returns (`count` of them).

    `ids`, when given, are those pks already fetched (see IdCapture); `run`,
    when given instead, says they are the consecutive pks lo..hi, so a bulk
    entry is written without building them. Returns the pks of a bulk entry
    written from `ids` or the query (None when the change was logged row by
    row, or from `run`).
    """
    if count == 0:
        return None
    log = store.tables.membership_log
    values = {
        "at": ctx.at,
        "persona_pk": ctx.persona_pk,
        "change": change,
        "source": ctx.source,
        "request_pk": ctx.request_pk,
        "criterion_pk": ctx.criterion_pk,
        "actor": ctx.actor,
        "reason": ctx.reason,
    }
    if count <= bulk_threshold:
        sub = contact_pks.subquery()
        pk_col = next(iter(sub.c))
        cols = [*values.keys(), "contact_pk"]
        src = select(
            *[
                literal(v, type_=log.c[k].type).label(k)
                if v is not None
                else literal(None).label(k)
                for k, v in values.items()
            ],
            pk_col.label("contact_pk"),
        ).select_from(sub)
        conn.execute(log.insert().from_select(cols, src))
        moved(conn, store, ctx.persona_pk, lambda: fetch_ids(conn, store, contact_pks))
        return None
    if run is not None and ids is None:
        lo, hi = run
        if hi - lo + 1 != count:
            raise RuntimeError(f"audit: {hi - lo + 1} ids for {count} changes; not applying")
        moved(conn, store, ctx.persona_pk, lambda: _run_ids(lo, hi))
        _insert_block(conn, store, values, encode_run(lo, hi), count, lo, hi)
        return None
    if ids is None:
        ids = fetch_ids(conn, store, contact_pks)
    if len(ids) != count:
        raise RuntimeError(f"audit: {len(ids)} ids for {count} changes; not applying")
    moved(conn, store, ctx.persona_pk, ids)
    insert_bulk_entry(conn, store, values, ids)
    return ids


def insert_bulk_entry(
    conn: Connection, store: Store, values: dict[str, Any], ids: np.ndarray
) -> None:
    """One compact log entry for the contacts `ids` (sorted, unique, at least one);
    `values` holds the other columns (who, why, when; no contact_pk)."""
    _insert_block(conn, store, values, encode_ids(ids), len(ids), int(ids.min()), int(ids.max()))


def insert_indexed_entries(
    conn: Connection, store: Store, entries: list[tuple[dict[str, Any], np.ndarray]]
) -> None:
    """Compact entries whose contacts are scattered (a stream step's enters of
    one persona through one criterion), each also listed by contact in
    membership_log_members so `log_for_contact` finds it without decoding
    others. `entries`: (the other columns, as for insert_bulk_entry; the
    contact pks, sorted, unique, at least one)."""
    if not entries:
        return
    t = store.tables
    log = t.membership_log
    rows = [
        {
            **values,
            "contact_pk": None,
            "bulk_count": len(ids),
            "bulk_ids": encode_ids(ids),
            # No pk range: a contact's entries are found by contact instead.
            "bulk_min": None,
            "bulk_max": None,
        }
        for values, ids in entries
    ]
    seqs = (
        conn.execute(log.insert().returning(log.c.seq, sort_by_parameter_order=True), rows)
        .scalars()
        .all()
    )
    # As many rows as the memberships moved (Backend.insert_int_rows).
    store.backend.insert_int_rows(
        conn,
        t.membership_log_members,
        ("contact_pk", "seq"),
        [
            (cpk, int(seq))
            for seq, (_, ids) in zip(seqs, entries, strict=True)
            for cpk in ids.tolist()
        ],
    )


def _insert_block(
    conn: Connection,
    store: Store,
    values: dict[str, Any],
    block: bytes,
    count: int,
    lo: int,
    hi: int,
) -> None:
    conn.execute(
        store.tables.membership_log.insert().values(
            **values, bulk_count=count, bulk_ids=block, bulk_min=lo, bulk_max=hi
        )
    )


def _run_ids(lo: int, hi: int) -> np.ndarray:
    import numpy as np  # only bulk changes need it; keeps CLI start-up light

    return np.arange(lo, hi + 1, dtype=np.int64)


def moved(conn: Connection, store: Store, persona_pk: int, contact_pks: Any) -> None:
    """Persona `persona_pk` moved for these contacts outside the stream (every
    enter and exit logged here is one): the ongoing criteria reading it re-check
    them at the stream's next step, through one change in the feed (only when
    such a criterion exists). `contact_pks`: the pks, or a callable giving them."""
    watch.record_moved(conn, store, changefeed.KIND_PERSONA, persona_pk, contact_pks)


def log_one(conn: Connection, store: Store, ctx: LogContext, change: str, contact_pk: int) -> None:
    moved(conn, store, ctx.persona_pk, [contact_pk])
    conn.execute(
        store.tables.membership_log.insert().values(
            at=ctx.at,
            persona_pk=ctx.persona_pk,
            contact_pk=contact_pk,
            change=change,
            source=ctx.source,
            request_pk=ctx.request_pk,
            criterion_pk=ctx.criterion_pk,
            actor=ctx.actor,
            reason=ctx.reason,
        )
    )


def log_for_contact(
    conn: Connection, store: Store, contact_pk: int, *, limit: int = 50
) -> list[dict[str, Any]]:
    """The newest log entries about one contact, single and bulk, newest first."""
    import numpy as np

    t = store.tables
    log = t.membership_log
    single = conn.execute(
        select(log).where(log.c.contact_pk == contact_pk).order_by(log.c.seq.desc()).limit(limit)
    ).all()
    entries: list[Any] = [row._mapping for row in single]
    # Bulk entries whose pk range covers the contact, newest first; stop once
    # `limit` entries newer than the next candidate are already in hand.
    # The blobs are read only for entries not decoded before.
    # (length(bulk_ids) would read the whole blob on SQLite: not in the key.)
    meta = [c for c in log.c if c.name != "bulk_ids"]
    where = store.engine.url.render_as_string(hide_password=True)
    bulk = conn.execute(
        select(*meta)
        .where(
            log.c.bulk_min.is_not(None),  # the partial index's predicate
            log.c.bulk_min <= contact_pk,
            log.c.bulk_max >= contact_pk,
        )
        .order_by(log.c.seq.desc())
    ).all()
    # The stream's compact entries naming the contact (membership_log_members).
    lm = t.membership_log_members
    indexed = conn.execute(
        select(*meta)
        .where(
            log.c.seq.in_(
                select(lm.c.seq)
                .where(lm.c.contact_pk == contact_pk)
                .order_by(lm.c.seq.desc())
                .limit(limit)
            )
        )
        .order_by(log.c.seq.desc())
    ).all()
    entries += [{**row._mapping, "bulk_ids": None} for row in indexed]
    for row in bulk:
        if sum(1 for e in entries if e["seq"] > row.seq) >= limit:
            break
        key = (where, row.seq, row.bulk_count, row.bulk_min, row.bulk_max)

        def blob(seq: int = row.seq) -> bytes:
            data = conn.scalar(select(log.c.bulk_ids).where(log.c.seq == seq))
            return bytes(data or b"")

        ids = _DECODED.get(key, blob)
        i = int(np.searchsorted(ids, contact_pk))
        if i < len(ids) and ids[i] == contact_pk:
            entries.append({**row._mapping, "bulk_ids": None})
    entries.sort(key=lambda m: m["seq"], reverse=True)
    return [dict(m) for m in entries[:limit]]
