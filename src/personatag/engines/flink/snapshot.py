"""Snapshots: the contact columns (and readership aggregates) a Flink job reads.

A snapshot is a folder of JSON-lines part files in the staging bucket,
`snapshots/<key>-<time>-<rand>/part-NNNNN.json`, one object per contact:
{"pk": 1, "job_title": "...", "interests": [...], "_n0": 3, "_p0": true}.
`_snapshot.json` is written into the folder last (Flink skips files starting
with `_`), then `snapshots/<key>.json` names the folder as the current
snapshot of its key. The key hashes the columns, the store, the as-of time
when aggregates depend on it, and the data versions of every table the
columns come from, so an unchanged store reuses its snapshot.

The JSON is built by the store itself (its backend's json_object), a chunk
of contacts per statement, so 10M contacts never become 10M Python rows.

A value another program wrote into a column of another type (`abc` or 2.5
in an INT column, `yesterday` in a TIMESTAMP one, a list that is not an
array: Backend.odd_value) is not the job's to read: the job's JSON format
would fail on it, or read 2.5 as 2. Such a contact's row carries null in
that column and `"_odd": true`; the job leaves those contacts out and the
store answers for them (`odd_contacts`), as the columnar engine leaves such
fields to the store.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    case,
    exists,
    func,
    literal,
    null,
    or_,
    select,
)

from personatag.buckets import Bucket
from personatag.criteria.ast import to_json
from personatag.criteria.to_flink import FlinkQuery, SnapshotColumn
from personatag.criteria.to_sql import event_counts
from personatag.domain import Catalog, FieldType, utcnow
from personatag.store import Store, versions
from personatag.store.matchset import fresh, temp_table
from personatag.store.types import to_micros

PREFIX = "snapshots/"
MANIFEST = "_snapshot.json"
ROWS_PER_PART = 1_000_000
FORMAT = 2
ODD_COLUMN = "_odd"  # the contact holds an odd value in a column the query reads
_FOLDER_RE = re.compile(r"-(\d{14})-[0-9a-f]{8}/$")


@dataclass(frozen=True)
class Snapshot:
    key: str  # its folder in the staging bucket, ending in "/"
    url: str  # where Flink reads it (file:///... or s3://...)
    rows: int
    reused: bool
    seconds: float
    bytes: int
    # Contacts whose row says ODD_COLUMN: the job leaves them out (`where`)
    # and the store answers for them (odd_contacts).
    odd: int = 0

    def schema(self, query: FlinkQuery) -> list[tuple[str, str]]:
        """The columns the job reads: the query's, and ODD_COLUMN when written."""
        return _schema(query, self.odd)

    def where(self, query: FlinkQuery) -> str:
        """The job's condition: the query's, on the contacts it may answer."""
        return f"({query.where}) AND {ODD_COLUMN} = FALSE" if self.odd else query.where


def _schema(query: FlinkQuery, odd: int) -> list[tuple[str, str]]:
    return [*query.schema, *([(ODD_COLUMN, "BOOLEAN")] if odd else [])]


def _describe(column: SnapshotColumn) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": column.name, "kind": column.kind}
    if column.column is not None:
        doc["column"] = column.column
    if column.field_type is not None:
        doc["type"] = column.field_type.value
    if column.count is not None:
        doc["count"] = to_json(column.count)
    if column.persona is not None:
        doc["persona"] = column.persona
    return doc


def _tables_read(query: FlinkQuery) -> set[str]:
    names = {"contacts"}
    for c in query.columns:
        if c.count is not None:
            names |= {"reads", "publications"} if c.count.event == "read" else {"logins"}
    return names


def snapshot_key(conn: Connection, store: Store, query: FlinkQuery) -> str:
    """A key that changes whenever the snapshot's content could."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "store": store.engine.url.render_as_string(hide_password=True),
        "columns": [_describe(c) for c in query.columns],
        "versions": versions.current(conn, store.tables, _tables_read(query)),
    }
    if any(c.kind == "count" for c in query.columns):
        doc["as_of"] = to_micros(query.as_of)
    if any(c.kind == "persona" for c in query.columns):
        log = store.tables.membership_log
        doc["memberships"] = conn.scalar(select(func.max(log.c.seq)))
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:32]


class _Rows:
    """The per-contact JSON expression for one dialect."""

    def __init__(
        self,
        conn: Connection,
        store: Store,
        query: FlinkQuery,
        catalog: Catalog,
        persona_pks: dict[str, int],
        with_odd: bool,
    ) -> None:
        """`with_odd`: some contact holds an odd value in a column `query`
        reads (such values become null, and ODD_COLUMN is written)."""
        self.store = store
        self.backend = store.backend
        self.with_odd = with_odd
        self.c = store.tables.contacts
        self.joins: list[tuple[Any, ColumnElement[Any]]] = []
        self.temps: list[Any] = []
        pairs: list[ColumnElement[Any]] = [literal("pk"), self.c.c.pk]
        for col in query.columns:
            pairs += [literal(col.name), self.value(conn, col, catalog, persona_pks, query)]
        odd = odd_test(store, query) if with_odd else None
        if odd is not None:
            pairs += [literal(ODD_COLUMN), self.backend.json_bool(odd)]
        self.row = self.backend.json_object(*pairs)

    def value(
        self,
        conn: Connection,
        col: SnapshotColumn,
        catalog: Catalog,
        persona_pks: dict[str, int],
        query: FlinkQuery,
    ) -> ColumnElement[Any]:
        c = self.c.c
        if col.kind == "field":
            if col.column is None:
                raise TypeError(f"snapshot column {col.name} lacks column")
            column = c[col.column]
            if col.field_type is None:
                return column
            shown = self.backend.json_field(column, col.field_type)
            return self._unless_odd(column, col.field_type, shown)
        if col.kind == "folded":
            if col.column is None:
                raise TypeError(f"snapshot column {col.name} lacks column")
            column = c[col.column]
            return self._unless_odd(column, FieldType.STRING, self.backend.fold(column))
        if col.kind == "persona":
            if col.persona is None:
                raise TypeError(f"snapshot column {col.name} lacks persona")
            m = self.store.tables.membership_rows
            held = exists().where(
                m.c.persona_pk == persona_pks[col.persona], m.c.contact_pk == c.pk
            )
            return self.backend.json_bool(held)
        if col.count is None:
            raise TypeError(f"snapshot column {col.name} lacks count")
        counts = event_counts(
            col.count,
            tables=self.store.tables,
            catalog=catalog,
            as_of=query.as_of,
            dialect=self.store.dialect,
        ).subquery()
        table = fresh(
            conn,
            temp_table(
                f"pt_snap{col.name}",
                Column("contact_pk", BigInteger, primary_key=True),
                Column("n", BigInteger),
            ),
        )
        conn.execute(table.insert().from_select(["contact_pk", "n"], select(counts)))
        self.temps.append(table)
        self.joins.append((table, table.c.contact_pk == c.pk))
        return func.coalesce(table.c.n, 0)

    def _unless_odd(
        self, column: ColumnElement[Any], field_type: FieldType, shown: ColumnElement[Any]
    ) -> ColumnElement[Any]:
        """`shown` where `column`'s stored value is of `field_type`, else NULL
        (only when some contact holds such a value: the test costs per row)."""
        odd = self.backend.odd_value(column, field_type) if self.with_odd else None
        return shown if odd is None else case((odd, null()), else_=shown)

    def chunk(self, conn: Connection, lo: int, hi: int) -> str:
        source: Any = self.c
        for table, on in self.joins:
            source = source.outerjoin(table, on)
        stmt = (
            select(self.backend.lines(self.row))
            .select_from(source)
            .where(self.c.c.pk > lo, self.c.c.pk <= hi)
        )
        # One text value per part: stored text that is not UTF-8 (written
        # outside personatag) reaches the job as U+FFFD (store/text.py).
        with self.backend.lenient_text(conn):
            return conn.execute(stmt).scalar() or ""

    def drop(self, conn: Connection) -> None:
        for table in self.temps:
            table.drop(conn, checkfirst=True)


def odd_test(store: Store, query: FlinkQuery) -> ColumnElement[bool] | None:
    """True for a contact holding, in a contact column `query` reads, a value
    that is not of the column's type (Backend.odd_value); None when the
    store's column types rule that out."""
    contacts = store.tables.contacts.c
    tests = []
    for col in query.columns:
        if col.column is None or col.kind not in ("field", "folded"):
            continue
        ft = FieldType.STRING if col.kind == "folded" else col.field_type
        if ft is None:
            continue
        test = store.backend.odd_value(contacts[col.column], ft)
        if test is not None:
            tests.append(test)
    return or_(*tests) if tests else None


def count_odd(conn: Connection, store: Store, query: FlinkQuery) -> int:
    """How many contacts hold an odd value in a column `query` reads."""
    test = odd_test(store, query)
    if test is None:
        return 0
    c = store.tables.contacts
    return int(conn.scalar(select(func.count()).select_from(c).where(test)) or 0)


def odd_contacts(
    conn: Connection, store: Store, query: FlinkQuery, criterion: ColumnElement[bool]
) -> list[int]:
    """The contacts a snapshot of `query` marks odd where the store's own
    `criterion` (compile_sql of the same AST) holds: the store's answer for
    the contacts the job leaves out."""
    test = odd_test(store, query)
    if test is None:
        return []
    c = store.tables.contacts
    return [int(pk) for pk in conn.scalars(select(c.c.pk).where(test, criterion).order_by(c.c.pk))]


def _ranges(conn: Connection, store: Store) -> Iterator[tuple[int, int]]:
    c = store.tables.contacts
    lo, hi = conn.execute(select(func.min(c.c.pk), func.max(c.c.pk))).one()
    if lo is None:
        return
    start = int(lo) - 1
    while start < int(hi):
        yield start, start + ROWS_PER_PART
        start += ROWS_PER_PART


def _stamp(now: datetime) -> str:
    return now.strftime("%Y%m%d%H%M%S")


def _folder_time(folder: str) -> datetime | None:
    match = _FOLDER_RE.search(folder)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y%m%d%H%M%S").replace(tzinfo=UTC)


def export_snapshot(
    store: Store,
    staging: Bucket,
    query: FlinkQuery,
    *,
    catalog: Catalog,
    persona_pks: dict[str, int],
    stop: threading.Event | None = None,
    keep_s: float = 3600.0,
) -> Snapshot:
    """The snapshot `query` needs: reused when current, else written now.

    Each export writes its own folder, `snapshots/<key>-<time>-<rand>/`, and
    then `snapshots/<key>.json` naming it: exports of the same key at once (two
    workers, two dispatchers) never touch each other's files, and a reader
    only ever sees complete folders. Folders no manifest names, and snapshots
    unused for `keep_s` seconds (a job may still read one that long), are
    removed after each export.
    """
    started = time.monotonic()
    with store.read() as conn:
        key = snapshot_key(conn, store, query)
        manifest_key = f"{PREFIX}{key}.json"
        if staging.exists(manifest_key):
            manifest = json.loads(staging.get(manifest_key))
            folder = str(manifest["folder"])
            if staging.exists(f"{folder}{MANIFEST}"):
                manifest["used_at"] = utcnow().isoformat()
                staging.put(manifest_key, json.dumps(manifest, sort_keys=True).encode())
                return Snapshot(
                    folder,
                    staging.url(folder.rstrip("/")),
                    int(manifest["rows"]),
                    True,
                    time.monotonic() - started,
                    int(manifest["bytes"]),
                    int(manifest.get("odd", 0)),
                )
        folder = f"{PREFIX}{key}-{_stamp(utcnow())}-{uuid.uuid4().hex[:8]}/"
        odd = count_odd(conn, store, query)
        rows = _Rows(conn, store, query, catalog, persona_pks, with_odd=odd > 0)
        total_rows = total_bytes = 0
        # Writing a part overlaps with the store building the next one.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot") as writer:
            pending: list[Future[None]] = []
            try:
                for index, (lo, hi) in enumerate(_ranges(conn, store)):
                    if stop is not None and stop.is_set():
                        raise InterruptedError("the snapshot export was stopped")
                    block = rows.chunk(conn, lo, hi)
                    if not block:
                        continue
                    data = block.encode() + b"\n"
                    total_rows += block.count("\n") + 1
                    total_bytes += len(data)
                    part = f"{folder}part-{index:05d}.json"
                    pending.append(writer.submit(staging.put, part, data))
                if not pending:  # no contacts: Flink still needs a file to read
                    pending.append(writer.submit(staging.put, f"{folder}part-00000.json", b""))
                for f in pending:
                    f.result()
            finally:
                rows.drop(conn)
    now = utcnow().isoformat()
    manifest = {
        "format": FORMAT,
        "folder": folder,
        "rows": total_rows,
        "bytes": total_bytes,
        "odd": odd,
        "columns": [_describe(c) for c in query.columns],
        "schema": _schema(query, odd),
        "created_at": now,
        "used_at": now,
    }
    body = json.dumps(manifest, sort_keys=True).encode()
    staging.put(f"{folder}{MANIFEST}", body)  # the folder is complete
    staging.put(manifest_key, body)  # and now the current one for its key
    prune(staging, keep_s=keep_s)
    return Snapshot(
        folder,
        staging.url(folder.rstrip("/")),
        total_rows,
        False,
        time.monotonic() - started,
        total_bytes,
        odd,
    )


def prune(staging: Bucket, *, keep_s: float) -> int:
    """Remove snapshots unused for `keep_s` seconds and folders no manifest names
    that are older than that; returns how many folders went."""
    now = utcnow()
    keys = staging.list(PREFIX)
    current: set[str] = set()
    for manifest_key in (k for k in keys if k.count("/") == 1 and k.endswith(".json")):
        try:
            manifest = json.loads(staging.get(manifest_key))
            used = datetime.fromisoformat(str(manifest["used_at"]))
        except (ValueError, KeyError, FileNotFoundError):
            continue
        if (now - used).total_seconds() > keep_s:
            staging.delete(manifest_key)
        else:
            current.add(str(manifest["folder"]))
    folders = {k.rsplit("/", 1)[0] + "/" for k in keys if k.count("/") >= 2}
    removed = 0
    for folder in folders - current:
        made = _folder_time(folder)
        if made is not None and (now - made).total_seconds() > keep_s:
            for k in staging.list(folder):
                staging.delete(k)
            removed += 1
    return removed
