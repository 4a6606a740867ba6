"""SQLite: the embedded store, one file (WAL), one writer at a time."""

# ruff: noqa: S608  - SQL text here joins quoted schema identifiers only (see store.backends.bulk)

from __future__ import annotations

import json
import operator
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    Boolean,
    Connection,
    Engine,
    Float,
    Integer,
    LargeBinary,
    Table,
    Text,
    case,
    cast,
    event,
    exists,
    func,
    literal,
    literal_column,
    null,
    select,
    text,
    type_coerce,
)
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import URL
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine

from personatag.domain import FieldType, fold_case
from personatag.store.backends import wal
from personatag.store.backends.base import BUSY, LENIENT, Backend, Col, Cond, ListOp, Slice, bind
from personatag.store.backends.bulk import BulkWriter, Row
from personatag.store.backends.columns import (
    IntColumn,
    parse_decimal_list,
    parse_flags,
    with_nulls,
)
from personatag.store.backends.leases import Lease, try_file_lease

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# How long a SQLite writer waits for another one's lock before it fails.
BUSY_MS = 60_000
# Decodes stored text as UTF-8, any other bytes as U+FFFD (lenient_text):
# a C call per value, about 0.3 us more than the driver's own decoding.
_replacing = operator.methodcaller("decode", "utf-8", "replace")

_PRAGMAS = (
    "journal_mode=WAL",
    "synchronous=NORMAL",
    f"busy_timeout={BUSY_MS}",
    "case_sensitive_like=ON",
    "cache_size=-131072",
    "temp_store=FILE",
)
# Writers take the lock up front: a deferred transaction that later upgrades
# to a writer can fail with SQLITE_BUSY without waiting.
_BEGIN = {True: "BEGIN IMMEDIATE", False: "BEGIN DEFERRED"}
# Primary result codes (the low byte of an extended code) worth a second try.
_TRANSIENT_CODES = {5: BUSY, 6: BUSY}  # SQLITE_BUSY, SQLITE_LOCKED
# Contact ids of a list of pks, NUL-separated (an id never holds NUL: imports
# refuse it), so one str.replace makes the CSV lines.
_ID_LINES = (
    "SELECT group_concat(c.id, char(0)) FROM (SELECT value AS pk FROM json_each(:pks)) "
    "AS t JOIN contacts AS c ON c.pk = t.pk"
)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _fold_bytes(value: bytes | None) -> str | None:
    """pt_fold: text, which _fold passes as its bytes (a sequence that is not
    UTF-8 read as U+FFFD), folded."""
    return None if value is None else fold_case(value.decode("utf-8", "replace"))


def _fold(col: Col) -> Col:
    # pt_fold (domain.fold_case, registered on every connection above) is a
    # Python call per row; SQLite's lower() folds ASCII alike, in C, ~5x
    # faster. A string is ASCII when it has as many characters as bytes (a NUL
    # makes it shorter: such rare strings take pt_fold too, which is exact).
    # pt_fold gets text as its bytes: sqlite3 fails the statement on text
    # that is not UTF-8 (another program can store it), which it reads as
    # U+FFFD, as a lenient read does (store/text.py).
    ascii_only = func.length(col) == func.length(cast(col, LargeBinary()))
    return case(
        (ascii_only, func.lower(col)),
        (func.typeof(col) == "text", func.pt_fold(cast(col, LargeBinary()))),
        else_=col,
    )


def _json_array(col: Col) -> Col:
    """`col` where it holds the JSON text of an array, else NULL: another
    program can store any text (`hello`, `"Credit"`, `{}`) or a blob in a
    LIST column. CASE tests in order and stops at the first that holds, so
    json_type (which fails on what is not JSON) only sees valid JSON."""
    return case(
        (func.typeof(col) != "text", null()),
        (func.json_valid(col) == 0, null()),
        (func.json_type(col) != "array", null()),
        else_=col,
    )


def _list_null(col: Col, test: Cond) -> Cond:
    # json_each(NULL) has no rows, which would make the test FALSE, not UNKNOWN.
    # A value that is not an array is UNKNOWN too, as the Python evaluator and
    # the columnar copy read it: json_each would fail the whole statement on
    # text that is not JSON.
    return type_coerce(case((_json_array(col).is_(None), null()), else_=test), Boolean())


def _json_values(col: Col, name: str = "je") -> Any:
    return func.json_each(col).table_valued("value", "type").alias(name)


def _strings(je: Any) -> Cond:
    # An item that is not a string equals no string: json_each gives a
    # nested array or object as its JSON text, which a criterion's value
    # could otherwise spell.
    test: Cond = je.c.type == "text"
    return test


def _contains(col: Col, values: list[str], name: str) -> Cond:
    je = _json_values(col)
    test = exists(
        select(je.c.value).where(je.c.value == bind(name, values[0], Text()), _strings(je))
    )
    return _list_null(col, test)


def _contains_any(col: Col, values: list[str], name: str) -> Cond:
    je = _json_values(col)
    binds = [bind(name, v, Text()) for v in values]
    return _list_null(col, exists(select(je.c.value).where(je.c.value.in_(binds), _strings(je))))


def _contains_all(col: Col, values: list[str], name: str) -> Cond:
    je = _json_values(col)
    wanted = sorted(set(values))
    binds = [bind(name, v, Text()) for v in wanted]
    found = (
        select(func.count(je.c.value.distinct()))
        .where(je.c.value.in_(binds), _strings(je))
        .scalar_subquery()
    )
    return _list_null(col, found == bind(f"{name}_n", len(wanted), Integer()))


def _string_items(col: Col) -> Col:
    """The JSON text of `col`'s array (NULL where it holds none) with each
    item that is not a string read as null: a reader that takes the items as
    strings (Flink's JSON format) would otherwise turn 1 into '1'."""
    arr = _json_array(col)
    je = _json_values(arr, "items")
    items = select(func.json_group_array(case((_strings(je), je.c.value)))).scalar_subquery()
    odd = _json_values(arr, "odd")
    # Rebuilt only where some item is not a string: a test per row costs half
    # of the rebuild (1M lists: 0.5 s as they are, 0.8 s tested, 1.1 s rebuilt).
    return func.json(
        case(
            (arr.is_(None), null()),
            (~exists(select(odd.c.value).where(~_strings(odd))), arr),
            else_=items,
        )
    )


# What SQLite's typeof() says of a value of each field type (see odd_value).
_STORED_AS: dict[FieldType, tuple[str, ...]] = {
    FieldType.INT: ("integer",),
    FieldType.TIMESTAMP: ("integer",),
    FieldType.FLOAT: ("real", "integer"),
    FieldType.STRING: ("text",),
}


class SQLiteBackend(Backend):
    name = "sqlite"
    schemes = ("sqlite",)
    driver = "sqlite"
    one_writer = True
    temp_pk_type = Integer  # INTEGER PRIMARY KEY is the rowid: no index to fill
    id_lines_nul_separated = True
    SLICES: ClassVar[Mapping[str, Slice]] = {
        "prefix": lambda col, n: func.substr(col, 1, n),
        "suffix": lambda col, n: func.substr(col, -n),
    }
    LIST_OPS: ClassVar[Mapping[str, ListOp]] = {
        "contains": _contains,
        "contains_any": _contains_any,
        "contains_all": _contains_all,
    }

    def create_engine(
        self, url: URL, *, create: bool = False, connect_timeout_s: float | None = None
    ) -> Engine:
        path = self.local_file(url)
        if create and path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa_create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 60}, hide_parameters=True
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy (the "begin" hook below) own transaction boundaries.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            for pragma in _PRAGMAS:
                cur.execute(f"PRAGMA {pragma}")
            cur.close()
            dbapi_conn.create_function("pt_fold", 1, _fold_bytes, deterministic=True)

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql(_BEGIN[bool(conn.get_execution_options().get("pt_write"))])

        if path is not None:
            wal.follow(engine)
        return engine

    def checkpoint_beside(self, engine: Engine) -> wal.Checkpointer | None:
        path = self.local_file(engine.url)
        if path is None or path.startswith("file:"):
            return None
        return wal.Checkpointer(engine, path).start()

    def local_file(self, url: URL) -> str | None:
        db = url.database
        return db if db and db != ":memory:" else None

    def shared(self, url: URL) -> bool:
        return self.local_file(url) is not None

    def connect_timeout_args(self, timeout_s: float) -> dict[str, Any]:
        return {"timeout": timeout_s}

    @contextmanager
    def write_briefly(self, conn: Connection, wait_ms: int) -> Iterator[Connection]:
        raw: Any = conn.connection.dbapi_connection
        raw.execute(f"PRAGMA busy_timeout={wait_ms}")
        try:
            conn = conn.execution_options(pt_write=True)
            with conn.begin():
                yield conn
        finally:
            raw.execute(f"PRAGMA busy_timeout={BUSY_MS}")

    def analyze(self, conn: Connection) -> None:
        # Sampled statistics: milliseconds even on 100M reads.
        conn.exec_driver_sql("PRAGMA analysis_limit=1000")
        conn.exec_driver_sql("ANALYZE")

    def analyze_skip_scan(self, conn: Connection, table: Table) -> None:
        # Sampled: milliseconds on 10M rows. SQLite skip-scans a primary key
        # only when statistics show few distinct values in its first column.
        conn.exec_driver_sql("PRAGMA analysis_limit=1000")
        conn.exec_driver_sql(f"ANALYZE {conn.dialect.identifier_preparer.quote(table.name)}")
        # Other connections load statistics only with the schema, and ANALYZE
        # does not change its version: a change of schema makes them reload.
        conn.exec_driver_sql("CREATE TABLE pt_reload_statistics (x INTEGER)")
        conn.exec_driver_sql("DROP TABLE pt_reload_statistics")

    def analyze_temp(self, conn: Connection, table: Table) -> None:
        return None  # only PostgreSQL's planner needs it: autovacuum never sees temp tables

    # One writer at a time already: Store.write() holds the only write lock.
    def lock(self, conn: Connection, space: int, key: int) -> None:
        return None

    def lock_shared(self, conn: Connection, space: int, key: int) -> None:
        return None

    def lock_all(self, conn: Connection, space: int, keys: Sequence[int]) -> None:
        return None

    def running_writers(self, conn: Connection) -> frozenset[tuple[int, str]]:
        return frozenset()

    def serial_last_value(self, conn: Connection, table: str, column: str) -> int:
        # The only writer commits before anyone else reads: the largest value shown.
        q = conn.dialect.identifier_preparer.quote
        return int(conn.exec_driver_sql(f"SELECT max({q(column)}) FROM {q(table)}").scalar() or 0)

    def try_lease(self, engine: Engine, name: str) -> Lease | None:
        # One machine: an exclusive lock on a file beside the database.
        db = self.local_file(engine.url)
        if db is None:
            return Lease(name)  # an in-memory store: nobody else can reach it
        return try_file_lease(f"{db}.{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.lease", name)

    def list_type(self) -> TypeEngine[Any]:
        return Text()

    def bind_list(self, values: Sequence[str]) -> Any:
        return json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))

    def bind_ints(self, values: Sequence[int]) -> Any:
        return json.dumps(list(values))

    def int_rows_sql(self, param: str) -> str:
        return f"SELECT value AS pk FROM json_each(:{param})"

    def int_rows_statement(self, kind: str, table: str, columns: Sequence[str]) -> str:
        if kind == "insert":
            marks = ", ".join("?" * len(columns))
            return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
        return f"DELETE FROM {table} WHERE " + " AND ".join(f"{c} = ?" for c in columns)

    def int_rows_params(self, rows: Sequence[Sequence[int]]) -> Any:
        return rows if isinstance(rows, list) else list(rows)  # executemany

    def json_object(self, *pairs: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.json_object(*pairs)

    def json_bool(self, test: ColumnElement[Any]) -> ColumnElement[Any]:
        return case((test, func.json("true")), else_=func.json("false"))

    def json_field(self, column: ColumnElement[Any], field_type: FieldType) -> ColumnElement[Any]:
        if field_type is FieldType.LIST:
            # JSON text, else it would be a string; NULL for a value that is
            # not an array (as criteria read it: _list_null), which json()
            # would fail on, or pass on as a string; null for an item that is
            # not a string (equal to no string, as criteria read it).
            return _string_items(column)
        if field_type is FieldType.BOOL:
            return case(
                (column.is_(None), None),
                (column != 0, func.json("true")),
                else_=func.json("false"),
            )
        return column

    def typed_value(self, column: ColumnElement[Any], field_type: FieldType) -> ColumnElement[Any]:
        # A column takes any value here: CAST converts an odd one (2.5 or
        # 'high' in an INT column) instead of failing the read of all rows.
        if field_type in (FieldType.INT, FieldType.TIMESTAMP, FieldType.BOOL):
            return cast(column, Integer)
        if field_type is FieldType.FLOAT:
            return cast(column, Float)
        if field_type is FieldType.STRING:  # a blob may not be UTF-8: read as NULL
            return case((func.typeof(column) == "text", column))
        if field_type is FieldType.LIST:
            return _json_array(column)
        return column

    def odd_value(
        self, column: ColumnElement[Any], field_type: FieldType
    ) -> ColumnElement[bool] | None:
        kind = func.typeof(column)
        if field_type is FieldType.BOOL:  # stored as 0 / 1
            return (
                case(
                    (column.is_(None), literal(0)),
                    (kind != "integer", literal(1)),
                    (type_coerce(column, Integer()).in_([0, 1]), literal(0)),
                    else_=literal(1),
                )
                == 1
            )
        if field_type is FieldType.LIST:  # JSON text of an array (its items
            # are not checked: json_each per row made a 1M build 40% slower)
            return (
                case(
                    (column.is_(None), literal(0)),
                    (_json_array(column).is_(None), literal(1)),
                    else_=literal(0),
                )
                == 1
            )
        stored = _STORED_AS.get(field_type)
        if stored is None:
            return None
        return kind.not_in([*stored, "null"])

    def fold(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        return _fold(column)

    def search_fold(self, text: str) -> str:
        # search_key is SQLite's lower(), which folds ASCII letters only (an
        # index cannot call pt_fold: every reader of the file would need it).
        return text.translate(_ASCII_LOWER)

    def id_list(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.group_concat(column, literal(","))

    def nul_list(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        # As a BLOB: the bytes as stored (UTF-8), no decoding into a str and back.
        return cast(func.group_concat(column, func.char(0)), LargeBinary)

    def lines(self, row: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.group_concat(row, literal_column("char(10)"))

    def contact_id_lines(self, conn: Connection, pks: Sequence[int], suffix: str) -> str | None:
        return conn.execute(text(_ID_LINES), {"pks": self.bind_ints(pks)}).scalar()

    def int_columns(
        self,
        conn: Connection,
        columns: Sequence[ColumnElement[Any]],
        where: ColumnElement[bool] | None,
        nullable: Sequence[bool],
    ) -> list[IntColumn]:
        # One text per column (decimal, comma-separated) and one of '0'/'1'
        # is-NULL flags per nullable column: group_concat skips NULLs, so the
        # values are coalesced and the flags say which were NULL. Every
        # aggregate of one statement sees the rows in the same order.
        aggregates: list[ColumnElement[Any]] = [func.count()]
        for column, can_be_null in zip(columns, nullable, strict=True):
            value: ColumnElement[Any] = type_coerce(column, Integer())
            if can_be_null:
                value = func.coalesce(value, 0)
            aggregates.append(type_coerce(func.group_concat(value, literal(",")), Text()))
            if can_be_null:
                flag = type_coerce(column, Integer()).is_(None)
                aggregates.append(type_coerce(func.group_concat(flag, literal("")), Text()))
        query = select(*aggregates)
        row = conn.execute(query if where is None else query.where(where)).one()
        n = int(row[0])
        out, at = [], 1
        for i, can_be_null in enumerate(nullable):
            what = f"column {i + 1}"
            values = parse_decimal_list(row[at], n, what)
            at += 1
            nulls = None
            if can_be_null:
                nulls = parse_flags(row[at], n, what)
                at += 1
            out.append(with_nulls(values, nulls))
        return out

    def bulk_writer(self, conn: Connection) -> BulkWriter:
        return SQLiteBulk(conn)

    def undecodable(self, orig: BaseException) -> bool:
        # sqlite3 decodes TEXT as UTF-8 and fails the fetch on other bytes,
        # which any program writing the file may have stored.
        return isinstance(orig, sqlite3.OperationalError) and str(orig).startswith(
            "Could not decode to UTF-8"
        )

    @contextmanager
    def lenient_text(self, conn: Connection) -> Iterator[None]:
        raw: Any = conn.connection.dbapi_connection
        info = conn.info  # taken now: an invalidated connection has none after
        before = raw.text_factory, info.get(LENIENT)
        raw.text_factory = _replacing
        info[LENIENT] = True
        try:
            yield
        finally:
            raw.text_factory = before[0]
            if before[1] is None:
                info.pop(LENIENT, None)
            else:
                info[LENIENT] = before[1]

    def transient_kind(self, orig: BaseException) -> str | None:
        code = getattr(orig, "sqlite_errorcode", None)
        if isinstance(code, int):
            return _TRANSIENT_CODES.get(code & 0xFF)
        return None


class SQLiteBulk(BulkWriter):
    def upsert(self, table: Table, columns: Sequence[str], rows: Sequence[Row]) -> tuple[int, int]:
        if not rows:
            return 0, 0
        key = list(columns).index("id")
        existing = self.lookup_pks(table, [r[key] for r in rows])
        updates = [c for c in columns if c != "id"]
        on_conflict = (
            "DO UPDATE SET "
            + ", ".join(f"{self._quote(c)} = excluded.{self._quote(c)}" for c in updates)
            if updates
            else "DO NOTHING"
        )
        sql = (
            f"INSERT INTO {self._quote(table.name)} ({self._names(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))}) ON CONFLICT (id) {on_conflict}"
        )
        self._executemany(sql, self._encode(table, columns, rows))
        return len(rows) - len(existing), len(existing)

    def insert(
        self,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        *,
        skip_conflicts: bool = False,
    ) -> int:
        if not rows:
            return 0
        sql = (
            f"INSERT INTO {self._quote(table.name)} ({self._names(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})"
            + (" ON CONFLICT DO NOTHING" if skip_conflicts else "")
        )
        return self._executemany(sql, self._encode(table, columns, rows))

    def insert_int_arrays(
        self, table: Table, columns: Sequence[str], arrays: Sequence[npt.NDArray[np.int64]]
    ) -> int:
        sql = (
            f"INSERT INTO {self._quote(table.name)} ({self._names(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})"
        )
        return self._executemany(sql, list(zip(*(a.tolist() for a in arrays), strict=True)))

    def lookup_pks(self, table: Table, ids: Sequence[str]) -> dict[str, int]:
        if not ids:
            return {}
        # One JSON parameter instead of thousands of placeholders.
        sql = (
            f"SELECT id, pk FROM {self._quote(table.name)} "
            "WHERE id IN (SELECT value FROM json_each(?))"
        )
        cur = self._driver().cursor()
        try:
            cur.execute(sql, (json.dumps(list(ids), ensure_ascii=False),))
            return {i: int(pk) for i, pk in cur.fetchall()}
        finally:
            cur.close()

    def sync_sequence(self, table: Table) -> None:
        # An INTEGER PRIMARY KEY continues from max(pk) by itself.
        return None

    def _executemany(self, sql: str, rows: Sequence[Row]) -> int:
        cur = self._driver().cursor()
        try:
            cur.executemany(sql, rows)
            return int(cur.rowcount)
        finally:
            cur.close()
