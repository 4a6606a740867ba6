"""Read contacts, publications, reads and logins from the store into arrays.

Rows stream in chunks and each column is encoded as it comes (a running
dictionary per string column), so a full build never holds the table as
Python objects. Timestamps are read as the stored integer microseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, Connection, Select, select, type_coerce
from sqlalchemy import Table as SqlTable

from personatag.domain import (
    CUSTOM_COLUMN_PREFIX,
    PUBLICATION_FIELDS,
    STANDARD_CONTACT_FIELDS,
    FieldType,
)
from personatag.engines.columnar.encode import NUMERIC_DTYPES
from personatag.engines.columnar.frame import Array, Column, Events, Frame, Table
from personatag.engines.columnar.patch import take_rows
from personatag.store import Store

CHUNK = 100_000
IN_LIST = 5_000  # pks per `IN (...)`


class Encoder:
    """Builds one Column from chunks of Python values."""

    def __init__(self, kind: FieldType) -> None:
        self.kind = kind
        self.index: dict[str, int] = {}
        self.values: list[Array] = []
        self.nulls: list[Array] = []
        self.lengths: list[Array] = []

    def _codes(self, strings: Iterable[str]) -> Array:
        index = self.index
        return np.fromiter((index.setdefault(s, len(index)) for s in strings), dtype=np.int32)

    def add(self, chunk: Sequence[Any]) -> None:
        n = len(chunk)
        self.nulls.append(np.fromiter((v is None for v in chunk), dtype=np.bool_, count=n))
        if self.kind in NUMERIC_DTYPES:
            dtype = NUMERIC_DTYPES[self.kind]
            zero = dtype(0)
            self.values.append(
                np.fromiter((zero if v is None else v for v in chunk), dtype=dtype, count=n)
            )
        elif self.kind is FieldType.STRING:
            codes = np.full(n, -1, dtype=np.int32)
            present = ~self.nulls[-1]
            codes[present] = self._codes(v for v in chunk if v is not None)
            self.values.append(codes)
        else:
            self.lengths.append(
                np.fromiter((0 if v is None else len(v) for v in chunk), dtype=np.int64, count=n)
            )
            self.values.append(self._codes(str(s) for v in chunk if v is not None for s in v))

    def finish(self) -> Column:
        nulls = np.concatenate(self.nulls) if self.nulls else np.zeros(0, dtype=np.bool_)
        has_nulls = nulls if bool(nulls.any()) else None
        empty = np.zeros(0, dtype=NUMERIC_DTYPES.get(self.kind, np.int32))
        values = np.concatenate(self.values) if self.values else empty
        if self.kind in NUMERIC_DTYPES:
            return Column(self.kind, values, has_nulls)
        # Sort the dictionary; remap the provisional codes (first-seen order).
        words = np.empty(len(self.index), dtype=object)
        words[:] = list(self.index)
        order = np.argsort(words, kind="stable")
        remap = np.empty(len(order) + 1, dtype=np.int32)
        remap[order] = np.arange(len(order), dtype=np.int32)
        remap[-1] = -1  # code -1 (NULL) maps to itself
        codes = remap[values]
        dictionary = words[order]
        if self.kind is FieldType.STRING:
            return Column(self.kind, codes, has_nulls, dictionary=dictionary)
        offsets = np.zeros(len(nulls) + 1, dtype=np.int64)
        if self.lengths:
            np.cumsum(np.concatenate(self.lengths), out=offsets[1:])
        return Column(
            self.kind,
            np.empty(0, dtype=np.int32),
            has_nulls,
            dictionary=dictionary,
            offsets=offsets,
            items=codes,
        )


def _columns(table: SqlTable, fields: Mapping[str, FieldType], custom: bool) -> list[Any]:
    out = []
    for name, kind in fields.items():
        is_custom = custom and name not in STANDARD_CONTACT_FIELDS
        column = table.c[CUSTOM_COLUMN_PREFIX + name if is_custom else name]
        out.append(type_coerce(column, BigInteger()) if kind is FieldType.TIMESTAMP else column)
    return out


def _table(
    conn: Connection, query: Select[Any], fields: Mapping[str, FieldType], chunks: Iterable[Any]
) -> Table:
    encoders = [Encoder(kind) for kind in fields.values()]
    pks: list[Array] = []
    for where in chunks:
        result = conn.execute(query if where is None else query.where(where))
        while rows := result.fetchmany(CHUNK):
            cols = list(zip(*rows, strict=True))
            pks.append(np.asarray(cols[0], dtype=np.int64))
            for enc, values in zip(encoders, cols[1:], strict=True):
                enc.add(values)
    pk = np.concatenate(pks) if pks else np.zeros(0, dtype=np.int64)
    columns = {name: enc.finish() for name, enc in zip(fields, encoders, strict=True)}
    order = np.argsort(pk, kind="stable")
    if len(pk) and bool(np.any(order != np.arange(len(pk)))):
        return take_rows(Table(pk, columns), order)
    return Table(pk, columns)


def _in_chunks(column: Any, pks: Array) -> Iterable[Any]:
    pks = np.asarray(pks, dtype=np.int64)
    for start in range(0, len(pks), IN_LIST):
        yield column.in_(pks[start : start + IN_LIST].tolist())


def contacts(
    conn: Connection, store: Store, fields: Mapping[str, FieldType], pks: Array | None = None
) -> Table:
    """Every contact (or those of `pks`), ascending pk, columns by field."""
    c = store.tables.contacts
    query = select(c.c.pk, *_columns(c, fields, custom=True))
    if pks is None:
        return _table(conn, query.order_by(c.c.pk), fields, [None])
    return _table(conn, query, fields, _in_chunks(c.c.pk, pks))


def publications(conn: Connection, store: Store) -> Table:
    p = store.tables.publications
    query = select(p.c.pk, *_columns(p, PUBLICATION_FIELDS, custom=False)).order_by(p.c.pk)
    return _table(conn, query, PUBLICATION_FIELDS, [None])


def events(
    conn: Connection, store: Store, kind: str, contact_pks: Array | None = None
) -> dict[str, Array]:
    """Reads (`contact`, `at`, `publication` pks) or logins (`contact`, `at`) of
    every contact or of `contact_pks`, in no particular order."""
    t = store.tables.reads if kind == "reads" else store.tables.logins
    at = t.c.read_at if kind == "reads" else t.c.login_at
    cols: list[Any] = [t.c.contact_pk, type_coerce(at, BigInteger())]
    if kind == "reads":
        cols.append(t.c.publication_pk)
    query = select(*cols)
    chunks: Iterable[Any] = (
        [None] if contact_pks is None else _in_chunks(t.c.contact_pk, contact_pks)
    )
    parts: list[Array] = []
    for where in chunks:
        result = conn.execute(query if where is None else query.where(where))
        while rows := result.fetchmany(CHUNK * 5):
            parts.append(np.array(rows, dtype=np.int64).reshape(len(rows), len(cols)))
    data = np.concatenate(parts) if parts else np.zeros((0, len(cols)), dtype=np.int64)
    out = {"contact": np.ascontiguousarray(data[:, 0]), "at": np.ascontiguousarray(data[:, 1])}
    if kind == "reads":
        out["publication"] = np.ascontiguousarray(data[:, 2])
    return out


def rows_of(pk: Array, wanted: Array) -> Array:
    """The rows of `wanted` pks in the ascending `pk` array (int32)."""
    return np.searchsorted(np.asarray(pk), np.asarray(wanted)).astype(np.int32)


def full_frame(conn: Connection, store: Store, fields: list[list[str]]) -> Frame:
    """Every contact, publication, read and login (events unsorted, one segment)."""
    kinds = {name: FieldType(kind) for name, kind in fields}
    table = contacts(conn, store, kinds)
    pubs = publications(conn, store)
    reads = events(conn, store, "reads")
    logins = events(conn, store, "logins")
    return Frame(
        contacts=table,
        publications=pubs,
        reads=(
            Events(
                rows_of(table.pk, reads["contact"]),
                reads["at"],
                rows_of(pubs.pk, reads["publication"]),
            ),
        ),
        logins=(Events(rows_of(table.pk, logins["contact"]), logins["at"]),),
    )
