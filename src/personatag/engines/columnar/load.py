"""Read contacts, publications, reads and logins from the store into arrays.

Integer and timestamp columns (every column of reads and logins, and the
contacts' pk, INT and TIMESTAMP fields) come through the store's bulk column
reader (store.columns): whole arrays, no Python object per value. String,
list, float and boolean columns stream in chunks of rows and are encoded as
they come (a dict of provisional codes per string column: on this data a
dict lookup per value measured 3-10x faster than np.unique over object or
fixed-width string arrays), so a build never holds a table as Python
objects. A build (write_contacts) appends each column's arrays to spill
files and builds its dictionary in sorted runs (runs.py), then writes one
column at a time. Timestamps are the stored integer microseconds.
"""

from __future__ import annotations

import itertools
import operator
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    BigInteger,
    Connection,
    Select,
    Text,
    case,
    func,
    literal,
    null,
    select,
    type_coerce,
)
from sqlalchemy import Table as SqlTable
from sqlalchemy.types import NullType

from personatag.domain import (
    CUSTOM_COLUMN_PREFIX,
    PUBLICATION_FIELDS,
    STANDARD_CONTACT_FIELDS,
    FieldType,
)
from personatag.engines.columnar.encode import NUMERIC_DTYPES
from personatag.engines.columnar.frame import ODD, Array, Column, Table
from personatag.engines.columnar.patch import take_column, take_rows
from personatag.engines.columnar.runs import Runs
from personatag.engines.columnar.segment import write_column, write_dictionary, write_pk
from personatag.store import Store
from personatag.store.columns import IntColumn, iter_int_columns, read_int_columns
from personatag.store.text import REPLACEMENT, is_lenient, leniently
from personatag.store.types import decode_lists, parse_lists

# Rows per fetch of the columns read as rows: 20k held 0.1 GiB less at the
# peak of a 1M-contact build than 100k, at the same speed.
CHUNK = 20_000
# Fields read by the bulk integer reader (the rest stream as rows).
BULK_KINDS = (FieldType.INT, FieldType.TIMESTAMP)
IN_LIST = 5_000  # pks per `IN (...)`


class Encoder:
    """Builds one Column from chunks of Python values.

    With `spill` (an empty folder of its own) the chunks' arrays are appended
    to files there and the strings' dictionary is built in sorted runs
    (runs.py), so a pass over many columns holds none of them whole; `write`
    then makes and writes the column. Without it everything is held and
    `finish` returns the Column."""

    def __init__(self, kind: FieldType, spill: Path | None = None) -> None:
        self.kind = kind
        self.spill = spill
        self.strings = Runs(spill)
        self.parts: dict[str, list[Array]] = {"nulls": [], "values": [], "lengths": []}
        self.sizes = dict.fromkeys(self.parts, 0)

    def _codes(self, strings: Iterable[str]) -> Array:
        index = self.strings.index
        return np.fromiter((index.setdefault(s, len(index)) for s in strings), dtype=np.int32)

    def _append(self, part: str, array: Array) -> None:
        self.sizes[part] += len(array)
        if self.spill is None:
            self.parts[part].append(array)
        else:
            with open(self.spill / part, "ab") as out:
                array.tofile(out)

    def _read(self, part: str, dtype: Any) -> Array:
        if self.spill is None:
            got = self.parts[part]
            self.parts[part] = []
            return np.concatenate(got) if got else np.zeros(0, dtype=dtype)
        path = self.spill / part
        return np.fromfile(path, dtype=dtype) if path.exists() else np.zeros(0, dtype=dtype)

    def add_array(self, values: Array, nulls: Array | None) -> None:
        """Append numeric `values` (NULL rows: True in `nulls`; None: none)."""
        self._append("nulls", np.zeros(len(values), np.bool_) if nulls is None else nulls)
        self._append("values", np.asarray(values, dtype=NUMERIC_DTYPES[self.kind]))

    def add(self, chunk: Sequence[Any]) -> None:
        n = len(chunk)
        if self.kind is FieldType.LIST:
            chunk = decode_lists(chunk)
        nulls = np.fromiter(map(operator.is_, chunk, itertools.repeat(None)), np.bool_, count=n)
        self._append("nulls", nulls)
        if self.kind in NUMERIC_DTYPES:
            dtype = NUMERIC_DTYPES[self.kind]
            zero = dtype(0)
            self._append(
                "values", np.fromiter((zero if v is None else v for v in chunk), dtype, count=n)
            )
            return
        if self.kind is FieldType.STRING:
            if not bool(nulls.any()):
                codes = self._codes(chunk)
            else:
                codes = np.full(n, -1, dtype=np.int32)
                codes[~nulls] = self._codes(v for v in chunk if v is not None)
        else:
            lengths = (0 if v is None else len(v) for v in chunk)
            self._append("lengths", np.fromiter(lengths, dtype=np.int64, count=n))
            codes = self._codes(str(s) for v in chunk if v is not None for s in v)
        self._append("values", codes)
        if self.strings.full():
            self.strings.flush(self.sizes["values"])

    def finish(self) -> Column:
        """The Column (its dictionary held: an Encoder without `spill`)."""
        words, maps = self.strings.finish(self.sizes["values"])
        got = list(words)
        dictionary = np.empty(len(got), dtype=object)
        dictionary[:] = got
        column = self._column(maps)
        return replace(column, dictionary=None if self.kind in NUMERIC_DTYPES else dictionary)

    def write(self, folder: Path, table: str, index: int, field: str, rows: Array | None) -> Any:
        """Write the column as column `index` of `table` in `folder` (the
        dictionary streamed to its file; the column's `rows` only, when
        given); its meta entry. The spill files are removed."""
        words, maps = self.strings.finish(self.sizes["values"])
        size = None
        if self.kind not in NUMERIC_DTYPES:
            size = write_dictionary(folder, table, index, words, self.strings.nul)
        column = self._column(maps)
        if rows is not None:
            column = take_column(column, rows)
        entry = write_column(folder, table, index, field, self.kind, column, size=size)
        if self.spill is not None:
            shutil.rmtree(self.spill, ignore_errors=True)
        return entry

    def _column(self, maps: list[tuple[int, int, Array]]) -> Column:
        """The Column without its dictionary, codes final (`maps` filled)."""
        nulls = self._read("nulls", np.bool_)
        has_nulls = nulls if bool(nulls.any()) else None
        values = self._read("values", NUMERIC_DTYPES.get(self.kind, np.int32))
        if self.kind in NUMERIC_DTYPES:
            return Column(self.kind, values, has_nulls)
        for lo, hi, final in maps:  # provisional codes -> final; -1 (NULL) stays
            part = values[lo:hi]
            present = part >= 0
            part[present] = final[part[present]]
        if self.kind is FieldType.STRING:
            return Column(self.kind, values, has_nulls)
        offsets = np.zeros(len(nulls) + 1, dtype=np.int64)
        np.cumsum(self._read("lengths", np.int64), out=offsets[1:])
        return Column(
            self.kind, np.empty(0, dtype=np.int32), has_nulls, offsets=offsets, items=values
        )


def with_odd(fields: Mapping[str, FieldType]) -> dict[str, FieldType]:
    """The columns of a copy's contacts or publications: `fields` and ODD."""
    return {**fields, ODD: FieldType.STRING}


def _column(table: SqlTable, name: str, custom: bool) -> Any:
    is_custom = custom and name not in STANDARD_CONTACT_FIELDS
    return table.c[CUSTOM_COLUMN_PREFIX + name if is_custom else name]


def _odd_names(
    store: Store, table: SqlTable, fields: Mapping[str, FieldType], custom: bool = True
) -> Any:
    """The ODD column's value: the names of `fields` whose stored value is not
    of the field's type, each followed by a comma; NULL when there is none
    (None: the database's column types rule such values out)."""
    parts = []
    for name, kind in fields.items():
        test = store.backend.odd_value(_column(table, name, custom), kind)
        if test is not None:
            parts.append(case((test, literal(name + ",")), else_=literal("")))
    if not parts:
        return None
    joined: Any = parts[0]
    for part in parts[1:]:
        joined = joined.concat(part)
    return func.nullif(joined, "")


def _columns(
    store: Store,
    table: SqlTable,
    fields: Mapping[str, FieldType],
    custom: bool,
    odd_of: Mapping[str, FieldType] | None = None,
) -> list[Any]:
    """The columns that read `fields` of `table`, each as its type stores it
    whatever a row holds (Backend.typed_value); ODD reports on `odd_of`."""
    out = []
    for name, kind in fields.items():
        if name == ODD:
            marks = _odd_names(store, table, odd_of or {}, custom)
            out.append(type_coerce(null(), Text()) if marks is None else marks)
            continue
        column: Any = store.backend.typed_value(_column(table, name, custom), kind)
        if kind is FieldType.TIMESTAMP:
            column = type_coerce(column, BigInteger())
        elif kind is FieldType.LIST:  # as stored: decoded a chunk at a time (decode_lists)
            column = type_coerce(column, NullType())
        out.append(column)
    return out


def _checked(fields: Mapping[str, FieldType], cols: list[Any], lenient: bool = False) -> list[int]:
    """Decode the LIST columns of a chunk of rows in place (`cols`: the pks,
    then a sequence of values per field of `fields`), and mark in its ODD
    column, when it has one, the rows whose array holds an item that is not
    a string (read as its text, `[1]` as `["1"]`, where SQL finds no "1"):
    SQL's typeof() cannot see into an array but at a cost per row, this
    parse sees it at once. `lenient` (the chunk was read with text that is
    not UTF-8 as U+FFFD: store/text.py): a STRING value or list holding
    U+FFFD is marked too and read as NULL, since only the store can compare
    the bytes it holds. The rows so marked."""
    marked: dict[int, str] = {}

    def mark(row: int, name: str) -> None:
        marked[row] = marked.get(row, "") + name + ","

    for i, (name, kind) in enumerate(fields.items(), start=1):
        values = cols[i]
        if name == ODD:
            continue
        # Only in a lenient read; a search per chunk, then a test per value.
        if (
            lenient
            and kind in (FieldType.STRING, FieldType.LIST)
            and REPLACEMENT in "".join(v for v in values if isinstance(v, str))
        ):
            values = list(values)
            for row, v in enumerate(values):
                if isinstance(v, str) and REPLACEMENT in v:
                    mark(row, name)
                    values[row] = None
            cols[i] = values
        if kind is not FieldType.LIST or not any(isinstance(v, str) for v in values):
            continue  # not a list, or lists already (PostgreSQL arrays: text only)
        parsed = parse_lists(values)
        for row, items in enumerate(parsed):
            if items is not None and not all(type(x) is str for x in items):
                mark(row, name)
                parsed[row] = [str(x) for x in items]
        cols[i] = parsed
    if marked and ODD in fields:
        at = list(fields).index(ODD) + 1
        odd = list(cols[at])
        for row, names in marked.items():
            odd[row] = (odd[row] or "") + names
        cols[at] = odd
    return sorted(marked)


def _table(
    conn: Connection,
    query: Select[Any],
    fields: Mapping[str, FieldType],
    chunks: Iterable[Any],
    flagged: list[Array] | None = None,
) -> Table:
    """The rows of `query` (pk, then a column per field) read with each of
    `chunks` as its WHERE (None: none); with `flagged`, the pks of rows
    whose lists hold an item that is not a string are appended to it."""
    encoders = [Encoder(kind) for kind in fields.values()]
    pks: list[Array] = []
    lenient = is_lenient(conn)
    for where in chunks:
        result = conn.execute(query if where is None else query.where(where))
        while rows := result.fetchmany(CHUNK):
            cols = list(zip(*rows, strict=True))
            pks.append(np.asarray(cols[0], dtype=np.int64))
            bad = _checked(fields, cols, lenient)
            if bad and flagged is not None:
                flagged.append(pks[-1][bad])
            for enc, values in zip(encoders, cols[1:], strict=True):
                enc.add(values)
    pk = np.concatenate(pks) if pks else np.zeros(0, dtype=np.int64)
    columns = {name: enc.finish() for name, enc in zip(fields, encoders, strict=True)}
    order = np.argsort(pk, kind="stable")
    if len(pk) and bool(np.any(order != np.arange(len(pk)))):
        return take_rows(Table(pk, columns), order)
    return Table(pk, columns)


@leniently
def write_contacts(
    conn: Connection, store: Store, fields: Mapping[str, FieldType], folder: Path
) -> tuple[Any, Array]:
    """Write every contact as the table `contacts` of `folder`: (its meta
    entry, the pks). The integer columns and the pks come first (the pk set
    of the copy), then the others in one pass over the rows. Both passes
    append their arrays to spill files (each string dictionary in sorted
    runs: runs.py) and then make and write one column at a time, so the
    peak is about one column, not the table."""
    c = store.tables.contacts
    index = {name: i for i, name in enumerate(fields)}
    entries: dict[str, list[Any]] = {}
    spill = folder / ".spill-contacts"
    try:
        bulk = {name: kind for name, kind in fields.items() if kind in BULK_KINDS}
        encoders = _spill_encoders(spill, bulk, index)
        pks: list[Array] = []
        int_cols = [c.c.pk, *_columns(store, c, bulk, custom=True)]
        for chunk in iter_int_columns(conn, int_cols, key=c.c.pk):
            pks.append(chunk[0].values)
            for enc, col in zip(encoders.values(), chunk[1:], strict=True):
                enc.add_array(col.values, col.nulls)
        pk = np.concatenate(pks) if pks else np.zeros(0, dtype=np.int64)
        del pks
        order = None
        if len(pk) > 1 and not bool(np.all(pk[1:] > pk[:-1])):
            order = np.argsort(pk, kind="stable")
            pk = pk[order]
        write_pk(folder, "contacts", pk)
        for name, enc in encoders.items():
            entries[name] = enc.write(folder, "contacts", index[name], name, order)
        del order

        rest = {name: kind for name, kind in fields.items() if kind not in BULK_KINDS}
        if rest:
            encoders = _spill_encoders(spill, rest, index)
            odd_of = {name: kind for name, kind in fields.items() if name != ODD}
            columns = _columns(store, c, rest, custom=True, odd_of=odd_of)
            query = select(c.c.pk, *columns).order_by(c.c.pk)
            rows = _rows_of_all(pk, _encode_pass(conn, query, encoders))
            for name, enc in encoders.items():
                entries[name] = enc.write(folder, "contacts", index[name], name, rows)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    return {"n": len(pk), "fields": [entries[name] for name in fields]}, pk


def _spill_encoders(
    spill: Path, fields: Mapping[str, FieldType], index: Mapping[str, int]
) -> dict[str, Encoder]:
    encoders = {}
    for name, kind in fields.items():
        (spill / str(index[name])).mkdir(parents=True)
        encoders[name] = Encoder(kind, spill / str(index[name]))
    return encoders


def _encode_pass(conn: Connection, query: Select[Any], encoders: Mapping[str, Encoder]) -> Array:
    """Feed each row of `query` (pk, then a column per encoder, ascending
    pk) to the encoders; the pks read."""
    pks: list[Array] = []
    result = conn.execute(query)
    kinds = {name: enc.kind for name, enc in encoders.items()}
    lenient = is_lenient(conn)
    while rows := result.fetchmany(CHUNK):
        cols = list(zip(*rows, strict=True))
        pks.append(np.asarray(cols[0], dtype=np.int64))
        _checked(kinds, cols, lenient)
        for enc, values in zip(encoders.values(), cols[1:], strict=True):
            enc.add(values)
    return np.concatenate(pks) if pks else np.zeros(0, dtype=np.int64)


def _rows_of_all(pk: Array, their_pk: Array) -> Array | None:
    """Rows of every `pk` in the ascending `their_pk` (None: the same pks).
    A later statement may see contacts added since the first (left out:
    catch-up brings them); contacts are never deleted, so none is missing."""
    if len(pk) == len(their_pk) and bool(np.array_equal(pk, their_pk)):
        return None
    rows = np.minimum(np.searchsorted(their_pk, pk), max(len(their_pk) - 1, 0))
    if len(pk) and (not len(their_pk) or not bool(np.array_equal(their_pk[rows], pk))):
        raise RuntimeError("a contact disappeared while the columnar copy was built")
    return rows


def _in_chunks(column: Any, pks: Array) -> Iterable[Any]:
    pks = np.asarray(pks, dtype=np.int64)
    for start in range(0, len(pks), IN_LIST):
        yield column.in_(pks[start : start + IN_LIST].tolist())


def _int_column(kind: FieldType, col: IntColumn) -> Column:
    return Column(kind, col.values, col.nulls)


def _align(pk: Array, other: Array) -> tuple[Array, Array]:
    """Rows of the ascending `pk` and of the ascending `other` that hold the
    same pks (two statements may see different contacts on a store without
    a snapshot across statements: a contact added between them is in the
    feed after the copy's offset, so catch-up brings it)."""
    if len(pk) == len(other) and bool(np.array_equal(pk, other)):
        every = np.arange(len(pk))
        return every, every
    _, a, b = np.intersect1d(pk, other, assume_unique=True, return_indices=True)
    return a, b


@leniently
def contacts(
    conn: Connection,
    store: Store,
    fields: Mapping[str, FieldType],
    pks: Array | None = None,
    odd_of: Mapping[str, FieldType] | None = None,
    flagged: list[Array] | None = None,
) -> Table:
    """Every contact (or those of `pks`), ascending pk, columns by field (ODD
    among them reports on `odd_of`, by default the other fields). With
    `flagged`, the pks of those holding a value of another type in one of
    `fields` are appended to it (read with the integer columns: no statement
    more)."""
    c = store.tables.contacts
    if odd_of is None:
        odd_of = {name: kind for name, kind in fields.items() if name != ODD}
    bulk = {name: kind for name, kind in fields.items() if kind in BULK_KINDS}
    rest = {name: kind for name, kind in fields.items() if kind not in BULK_KINDS}
    int_cols = [c.c.pk, *_columns(store, c, bulk, custom=True)]
    marks = None if flagged is None else _odd_names(store, c, odd_of)
    if marks is not None:
        int_cols.append(case((marks.is_not(None), 1), else_=0))
    if pks is None:
        got = read_int_columns(conn, int_cols, key=c.c.pk)
    else:
        parts = [read_int_columns(conn, int_cols, where=w) for w in _in_chunks(c.c.pk, pks)]
        got = [IntColumn.concat([p[i] for p in parts]) for i in range(len(int_cols))]
    if marks is not None and flagged is not None:
        flagged.append(got[0].values[got[-1].values == 1])
        got = got[:-1]
    pk = got[0].values
    columns = {
        name: _int_column(kind, col)
        for (name, kind), col in zip(bulk.items(), got[1:], strict=True)
    }
    if len(pk) > 1 and not bool(np.all(pk[1:] > pk[:-1])):
        order = np.argsort(pk, kind="stable")
        pk = pk[order]
        columns = {name: take_column(col, order) for name, col in columns.items()}
    if rest:
        query = select(c.c.pk, *_columns(store, c, rest, custom=True, odd_of=odd_of))
        if pks is None:
            others = _table(conn, query.order_by(c.c.pk), rest, [None], flagged)
        else:
            others = _table(conn, query, rest, _in_chunks(c.c.pk, pks), flagged)
        mine, theirs = _align(pk, np.asarray(others.pk))
        if len(mine) != len(pk) or len(theirs) != others.n:
            pk = pk[mine]
            columns = {name: take_column(col, mine) for name, col in columns.items()}
            others = take_rows(others, theirs)
        columns.update(others.columns)
    return Table(pk, {name: columns[name] for name in fields})


@leniently
def odd_rows(conn: Connection, store: Store, fields: Mapping[str, FieldType], pks: Array) -> Table:
    """The contacts of `pks` (those a read flagged: few) with a value of
    another type in any of `fields`, with their ODD column; the others are
    left out."""
    c = store.tables.contacts
    # Lists are checked as parsed; text as read (not UTF-8: store/text.py).
    texts = {n: k for n, k in fields.items() if k in (FieldType.LIST, FieldType.STRING)}
    marks = _odd_names(store, c, fields)
    if (marks is None and not texts) or not len(pks):
        return Table(np.zeros(0, np.int64), {})
    wanted = {ODD: FieldType.STRING, **texts}
    got = _table(
        conn,
        select(c.c.pk, *_columns(store, c, wanted, custom=True, odd_of=fields)),
        wanted,
        _in_chunks(c.c.pk, pks),
    )
    col = got.columns[ODD]
    keep = np.flatnonzero(np.asarray(col.values) >= 0)
    return take_rows(Table(got.pk, {ODD: col}), keep)


@leniently
def publications(conn: Connection, store: Store) -> Table:
    p = store.tables.publications
    fields = with_odd(PUBLICATION_FIELDS)
    columns = _columns(store, p, fields, custom=False, odd_of=PUBLICATION_FIELDS)
    return _table(conn, select(p.c.pk, *columns).order_by(p.c.pk), fields, [None])


def events(
    conn: Connection, store: Store, kind: str, contact_pks: Array | None = None
) -> dict[str, Array]:
    """Reads (`contact`, `at`, `publication` pks) or logins (`contact`, `at`) of
    every contact or of `contact_pks`, in no particular order (int64 arrays)."""
    t = store.tables.reads if kind == "reads" else store.tables.logins
    at = t.c.read_at if kind == "reads" else t.c.login_at
    cols: list[Any] = [t.c.contact_pk, at]
    if kind == "reads":
        cols.append(t.c.publication_pk)
    if contact_pks is None:
        # By ranges of the clustering key: a sequential scan in chunks.
        got = read_int_columns(conn, cols, key=t.c.contact_pk)
    else:
        parts = [
            read_int_columns(conn, cols, where=w) for w in _in_chunks(t.c.contact_pk, contact_pks)
        ]
        got = [IntColumn.concat([p[i] for p in parts]) for i in range(len(cols))]
    out = {"contact": got[0].values, "at": got[1].values}
    if kind == "reads":
        out["publication"] = got[2].values
    return out


def rows_of(pk: Array, wanted: Array) -> Array:
    """The rows of `wanted` pks in the ascending `pk` array (int32)."""
    return np.searchsorted(np.asarray(pk), np.asarray(wanted)).astype(np.int32)


def event_chunks(
    conn: Connection, store: Store, kind: str, contact_pk: Array, publication_pk: Array
) -> Iterator[dict[str, Array]]:
    """Every read (login) a chunk at a time, in no time order: contact rows of
    `contact_pk` (`row`, int32), `at` and for reads publication rows of
    `publication_pk` (`publication`, int32). An event whose contact or
    publication is not in the arrays given (written after they were read, on
    a store without one snapshot across statements) is left out: it is in
    the feed after the copy's offset, so catch-up brings it."""
    t = store.tables.reads if kind == "reads" else store.tables.logins
    at_col = t.c.read_at if kind == "reads" else t.c.login_at
    cols: list[Any] = [t.c.contact_pk, at_col]
    if kind == "reads":
        cols.append(t.c.publication_pk)
    contact_pk, publication_pk = np.asarray(contact_pk), np.asarray(publication_pk)
    for chunk in iter_int_columns(conn, cols, key=t.c.contact_pk):
        ok, row = _rows_found(contact_pk, chunk[0].values)
        out = {"row": row, "at": chunk[1].values}
        if kind == "reads":
            found, out["publication"] = _rows_found(publication_pk, chunk[2].values)
            ok &= found
        yield out if bool(ok.all()) else {key: a[ok] for key, a in out.items()}


EVENT_DTYPES: dict[str, dict[str, Any]] = {
    "reads": {"row": np.int32, "at": np.int64, "publication": np.int32},
    "logins": {"row": np.int32, "at": np.int64},
}


def _rows_found(pk: Array, wanted: Array) -> tuple[Array, Array]:
    """(mask of `wanted` pks present in the ascending `pk`, their rows int32)."""
    if not len(pk):
        return np.zeros(len(wanted), np.bool_), np.zeros(len(wanted), np.int32)
    rows = np.minimum(np.searchsorted(pk, wanted), len(pk) - 1)
    return pk[rows] == wanted, rows.astype(np.int32)
