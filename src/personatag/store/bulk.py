"""Dialect-specific bulk writes behind one small interface.

Callers hand over Python values (str, int, float, bool, datetime, list[str]);
each writer binds them through the table's column types, so timestamps become
UTC microseconds and lists become JSON text (SQLite) or text[] (PostgreSQL).
SQLite uses executemany on the raw driver cursor; PostgreSQL uses COPY, into a
temporary staging table when conflicts must be resolved.

All methods run inside the caller's transaction (`Store.write()`): nothing here
commits. SQL text is assembled only from schema identifiers, always quoted;
values travel as bound parameters or COPY data, never spliced into SQL.
"""

# ruff: noqa: S608  - SQL text here joins quoted schema identifiers only (see above)

from __future__ import annotations

import itertools
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Table

Row = Sequence[Any]
_Processor = Callable[[Any], Any]


class BulkWriter(ABC):
    """Bulk inserts and upserts for one connection (inside its transaction)."""

    dialect: ClassVar[str]

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._quote = conn.dialect.identifier_preparer.quote

    @abstractmethod
    def upsert(self, table: Table, columns: Sequence[str], rows: Sequence[Row]) -> tuple[int, int]:
        """Insert rows, or update the listed columns of rows whose `id` exists.

        `columns` must include "id" and `rows` must have distinct ids (the caller
        merges duplicates). Returns (inserted, updated); a row updated to the
        values it already had counts as updated. Unlisted columns keep their
        value on update and are NULL on insert.
        """

    @abstractmethod
    def insert(
        self,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        *,
        skip_conflicts: bool = False,
    ) -> int:
        """Plain insert; with skip_conflicts rows that hit a unique key are dropped.

        Returns how many rows were inserted.
        """

    @abstractmethod
    def insert_int_arrays(
        self, table: Table, columns: Sequence[str], arrays: Sequence[npt.NDArray[np.int64]]
    ) -> int:
        """Insert rows given column-wise as int64 arrays (ids, UTC microseconds).

        No conflict handling: the rows must be new. Returns the row count.
        """

    @abstractmethod
    def lookup_pks(self, table: Table, ids: Sequence[str]) -> dict[str, int]:
        """Map external ids to primary keys; ids that do not exist are absent."""

    @abstractmethod
    def sync_sequence(self, table: Table) -> None:
        """After inserting explicit primary keys, make the next generated pk follow them."""

    # -- shared helpers ---------------------------------------------------

    def _encode(self, table: Table, columns: Sequence[str], rows: Sequence[Row]) -> list[Row]:
        """Run each value through its column type's bind processor, column-wise."""
        processors: list[_Processor | None] = [
            table.c[name].type.bind_processor(self.conn.dialect) for name in columns
        ]
        if not any(processors) or not rows:
            return list(rows)
        cols: list[Sequence[Any]] = list(zip(*rows, strict=True))
        for i, proc in enumerate(processors):
            if proc is not None:
                cols[i] = [None if v is None else proc(v) for v in cols[i]]
        return list(zip(*cols, strict=True))

    def _names(self, columns: Sequence[str]) -> str:
        return ", ".join(self._quote(c) for c in columns)

    def _driver(self) -> Any:
        """The DBAPI connection under the SQLAlchemy one (same transaction)."""
        return self.conn.connection.driver_connection


class SQLiteBulk(BulkWriter):
    dialect = "sqlite"

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


class PostgresBulk(BulkWriter):
    dialect = "postgresql"
    _stage_seq = itertools.count(1)

    def upsert(self, table: Table, columns: Sequence[str], rows: Sequence[Row]) -> tuple[int, int]:
        if not rows:
            return 0, 0
        t = self._quote(table.name)
        with self._stage(table, columns, rows) as stage:
            cur = self._driver().cursor()
            try:
                cur.execute(f"SELECT count(*) FROM {stage} s JOIN {t} ON {t}.id = s.id")
                existing = int(cur.fetchone()[0])
                updates = [c for c in columns if c != "id"]
                on_conflict = (
                    "DO UPDATE SET "
                    + ", ".join(f"{self._quote(c)} = EXCLUDED.{self._quote(c)}" for c in updates)
                    if updates
                    else "DO NOTHING"
                )
                names = self._names(columns)
                cur.execute(
                    f"INSERT INTO {t} ({names}) SELECT {names} FROM {stage} "
                    f"ON CONFLICT (id) {on_conflict}"
                )
            finally:
                cur.close()
        return len(rows) - existing, existing

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
        if not skip_conflicts:
            self._copy(self._quote(table.name), columns, self._encode(table, columns, rows))
            return len(rows)
        names = self._names(columns)
        with self._stage(table, columns, rows) as stage:
            cur = self._driver().cursor()
            try:
                cur.execute(
                    f"INSERT INTO {self._quote(table.name)} ({names}) "
                    f"SELECT {names} FROM {stage} ON CONFLICT DO NOTHING"
                )
                return int(cur.rowcount)
            finally:
                cur.close()

    def insert_int_arrays(
        self, table: Table, columns: Sequence[str], arrays: Sequence[npt.NDArray[np.int64]]
    ) -> int:
        n = len(arrays[0]) if arrays else 0
        if n == 0:
            return 0
        # Binary COPY built with numpy: per row a field count, then per field
        # its byte length and big-endian int64 value.
        fields: list[tuple[str, str]] = [("count", ">i2")]
        for i in range(len(columns)):
            fields += [(f"len{i}", ">i4"), (f"val{i}", ">i8")]
        buf = np.empty(n, dtype=np.dtype(fields))
        buf["count"] = len(columns)
        for i, arr in enumerate(arrays):
            buf[f"len{i}"] = 8
            buf[f"val{i}"] = arr
        header = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
        trailer = b"\xff\xff"
        cur = self._driver().cursor()
        try:
            target = f"{self._quote(table.name)} ({self._names(columns)})"
            with cur.copy(f"COPY {target} FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(header)
                copy.write(buf.tobytes())
                copy.write(trailer)
        finally:
            cur.close()
        return n

    def lookup_pks(self, table: Table, ids: Sequence[str]) -> dict[str, int]:
        if not ids:
            return {}
        cur = self._driver().cursor()
        try:
            cur.execute(
                f"SELECT id, pk FROM {self._quote(table.name)} WHERE id = ANY(%s)",
                (list(ids),),
            )
            return {i: int(pk) for i, pk in cur.fetchall()}
        finally:
            cur.close()

    def sync_sequence(self, table: Table) -> None:
        cur = self._driver().cursor()
        try:
            cur.execute(
                "SELECT setval(pg_get_serial_sequence(%s, 'pk'), "
                f"(SELECT coalesce(max(pk), 0) + 1 FROM {self._quote(table.name)}), false)",
                (table.name,),
            )
        finally:
            cur.close()

    def _copy(self, target: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        cur = self._driver().cursor()
        try:
            with cur.copy(f"COPY {target} ({self._names(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        finally:
            cur.close()

    def _stage(self, table: Table, columns: Sequence[str], rows: Sequence[Row]) -> _Stage:
        """A temporary table shaped like `columns` of `table`, filled by COPY."""
        return _Stage(self, table, columns, rows)


class _Stage:
    def __init__(
        self, writer: PostgresBulk, table: Table, columns: Sequence[str], rows: Sequence[Row]
    ) -> None:
        self.writer = writer
        self.table = table
        self.columns = columns
        self.rows = rows
        self.name = writer._quote(f"pt_stage_{next(PostgresBulk._stage_seq)}")

    def __enter__(self) -> str:
        w = self.writer
        cur = w._driver().cursor()
        try:
            cur.execute(
                f"CREATE TEMP TABLE {self.name} ON COMMIT DROP AS "
                f"SELECT {w._names(self.columns)} FROM {w._quote(self.table.name)} WITH NO DATA"
            )
        finally:
            cur.close()
        w._copy(self.name, self.columns, w._encode(self.table, self.columns, self.rows))
        return self.name

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            return  # the transaction is failing; ON COMMIT DROP / rollback cleans up
        cur = self.writer._driver().cursor()
        try:
            cur.execute(f"DROP TABLE IF EXISTS {self.name}")
        finally:
            cur.close()


_WRITERS: dict[str, type[BulkWriter]] = {w.dialect: w for w in (SQLiteBulk, PostgresBulk)}


def bulk_writer(conn: Connection) -> BulkWriter:
    """The bulk writer for this connection's dialect."""
    try:
        return _WRITERS[conn.dialect.name](conn)
    except KeyError:
        raise NotImplementedError(f"no bulk writer for dialect {conn.dialect.name!r}") from None
