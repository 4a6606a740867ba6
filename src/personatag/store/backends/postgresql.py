"""PostgreSQL: the production store, many writers, bulk writes by COPY."""

# ruff: noqa: S608  - SQL text here joins quoted schema identifiers only (see store.backends.bulk)

from __future__ import annotations

import contextlib
import itertools
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Table,
    Text,
    any_,
    bindparam,
    cast,
    func,
    literal,
    select,
    text,
)
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.types import TypeEngine, UserDefinedType

from personatag.domain import FieldType
from personatag.errors import ConfigError
from personatag.store.backends.base import (
    CONNECTION_LOST,
    DEADLOCK,
    LOCK_SPACE_LEASE,
    SERIALIZATION,
    Backend,
    Col,
    Cond,
    ListOp,
    Slice,
    bind,
    search_key,
)
from personatag.store.backends.bulk import BulkWriter, Row
from personatag.store.backends.columns import IntColumn, parse_pg_copy
from personatag.store.backends.leases import Lease

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# SQLSTATE codes (and classes, by their first two characters) worth a second try.
_TRANSIENT_STATES = {
    "40001": SERIALIZATION,  # serialization_failure
    "40P01": DEADLOCK,  # deadlock_detected
    "57P01": CONNECTION_LOST,  # admin_shutdown: pg_terminate_backend, a fast shutdown
    "57P02": CONNECTION_LOST,  # crash_shutdown
    "57P03": CONNECTION_LOST,  # cannot_connect_now: starting up or shutting down
}
_TRANSIENT_CLASSES = {"08": CONNECTION_LOST}  # connection_exception and its codes
# A statement run after an earlier one failed in the same transaction.
_CONSEQUENCES = {"25P02"}  # in_failed_sql_transaction
# Contact ids of a list of pks as CSV lines: text cannot hold NUL, so the
# quoting is done here, one line per id.
_ID_LINES = (
    "SELECT string_agg(CASE WHEN strpos(c.id, ',') > 0 OR strpos(c.id, '\"') > 0 "
    "OR strpos(c.id, chr(10)) > 0 OR strpos(c.id, chr(13)) > 0 "
    "THEN '\"' || replace(c.id, '\"', '\"\"') || '\"' ELSE c.id END || :suffix, chr(10) "
    "ORDER BY c.pk) "
    "FROM unnest(CAST(:pks AS bigint[])) AS t(pk) JOIN contacts AS c ON c.pk = t.pk"
)


def _contains(col: Col, values: list[str], name: str) -> Cond:
    return bind(name, values[0], Text()) == any_(col)


def _array(name: str, values: list[str]) -> BindParameter[Any]:
    return bind(name, values, postgresql.ARRAY(Text()))


def _contains_any(col: Col, values: list[str], name: str) -> Cond:
    return col.bool_op("&&")(_array(name, values))


def _contains_all(col: Col, values: list[str], name: str) -> Cond:
    return col.bool_op("@>")(_array(name, values))


_WRITERS = text(
    "SELECT pid, backend_xid::text FROM pg_stat_activity "
    "WHERE datname = current_database() AND backend_xid IS NOT NULL "
    "AND pid <> pg_backend_pid()"
)


@compiles(search_key, "postgresql")
def _search_key(element: search_key, compiler: SQLCompiler, **kw: Any) -> str:
    # lower() folds by the column's collation; its result is put in "C" order
    # so a prefix is one range of the index (what text_pattern_ops gives LIKE).
    return f'lower({compiler.process(element.clauses, **kw)}) COLLATE "C"'


class _ArrayText(UserDefinedType[str]):
    """The text of an array (`{1,2,3}`), bound as it is: without the type
    cast SQLAlchemy adds to a text parameter (`::VARCHAR`), so that psycopg
    sends it untyped and a CAST around it gives the parameter its type."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "TEXT"


class PostgreSQLBackend(Backend):
    name = "postgresql"
    schemes = ("postgresql", "postgres")
    driver = "postgresql+psycopg"
    one_writer = False
    temp_pk_type = BigInteger
    id_lines_nul_separated = False
    # READ COMMITTED (the default) takes a snapshot per statement. A read-only
    # REPEATABLE READ transaction never fails to serialize.
    snapshot_isolation = "REPEATABLE READ"
    ORDER_COLLATION = "C"
    LIKE_ESCAPE = ""  # backslash is LIKE's default escape on PostgreSQL
    SLICES: ClassVar[Mapping[str, Slice]] = {
        "prefix": lambda col, n: func.left(col, n),
        "suffix": lambda col, n: func.right(col, n),
    }
    LIST_OPS: ClassVar[Mapping[str, ListOp]] = {
        "contains": _contains,
        "contains_any": _contains_any,
        "contains_all": _contains_all,
    }

    def create_engine(
        self, url: URL, *, create: bool = False, connect_timeout_s: float | None = None
    ) -> Engine:
        try:
            args = {} if connect_timeout_s is None else self.connect_timeout_args(connect_timeout_s)
            return sa_create_engine(
                url, pool_pre_ping=True, hide_parameters=True, connect_args=args
            )
        except ModuleNotFoundError as exc:  # PostgreSQL's driver is an extra
            if exc.name != "psycopg":
                raise
            raise ConfigError(
                "a PostgreSQL store needs the psycopg driver, which is not installed: "
                "pip install 'personatag[postgresql]'"
            ) from None

    def connect_timeout_args(self, timeout_s: float) -> dict[str, Any]:
        return {"connect_timeout": max(1, round(timeout_s))}  # whole seconds (libpq)

    @contextmanager
    def write_briefly(self, conn: Connection, wait_ms: int) -> Iterator[Connection]:
        conn = conn.execution_options(pt_write=True)
        with conn.begin():
            conn.execute(text("SELECT set_config('lock_timeout', :ms, true)"), {"ms": f"{wait_ms}"})
            yield conn

    def analyze_temp(self, conn: Connection, table: Table) -> None:
        # Temp tables are never auto-analysed.
        conn.execute(text(f"ANALYZE {table.name}"))

    def lock(self, conn: Connection, space: int, key: int) -> None:
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:space, :key)"), {"space": space, "key": key}
        )

    def lock_all(self, conn: Connection, space: int, keys: Sequence[int]) -> None:
        # One statement, not one a key (a step locks every persona it moves:
        # 1,000 statements took 0.3 s a step). unnest yields the array's
        # items in order, and the aggregate takes them as they come, so the
        # locks are taken in ascending order as `lock_all` promises.
        ordered = sorted(set(keys))
        if not ordered:
            return
        conn.execute(
            text(
                "SELECT count(pg_advisory_xact_lock(:space, CAST(k AS integer))) "
                "FROM unnest(CAST(:keys AS bigint[])) AS k"
            ),
            {"space": space, "keys": self.int_array(ordered)},
        )

    def lock_shared(self, conn: Connection, space: int, key: int) -> None:
        conn.execute(
            text("SELECT pg_advisory_xact_lock_shared(:space, :key)"),
            {"space": space, "key": key},
        )

    def running_writers(self, conn: Connection) -> frozenset[tuple[int, str]]:
        # Writers of this database that hold a transaction id (have written
        # something). Other databases of the cluster are left out: their
        # transactions cannot hold one of our serials.
        return frozenset((int(pid), str(xid)) for pid, xid in conn.execute(_WRITERS))

    def serial_last_value(self, conn: Connection, table: str, column: str) -> int:
        last = conn.execute(
            text("SELECT pg_sequence_last_value(pg_get_serial_sequence(:t, :c)::regclass)"),
            {"t": table, "c": column},
        ).scalar()
        return int(last or 0)

    def try_lease(self, engine: Engine, name: str) -> Lease | None:
        # A session advisory lock on a connection kept for the lease.
        key = zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = conn.scalar(
                text("SELECT pg_try_advisory_lock(:space, :key)"),
                {"space": LOCK_SPACE_LEASE, "key": key},
            )
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return None
        return _SessionLease(name, conn, key)

    def list_type(self) -> TypeEngine[Any]:
        return postgresql.ARRAY(Text())

    def bind_list(self, values: Sequence[str]) -> Any:
        return list(values)

    def bind_ints(self, values: Sequence[int]) -> Any:
        return list(values)

    # One array parameter per condition: a list of bound parameters is parsed
    # anew by psycopg for each new length, a value at a time, and planned anew
    # by the server. The rows of 20,000 contacts of the 1M bench store, by
    # 2,000 bound values against arrays of 5,000: re-checks 0.9-1.1 s against
    # 0.06 s, membership rows 1.3 s against 0.08-0.10 s, reads 0.5-0.6 s
    # against 0.28-0.33 s (arrays of 20,000: about the same, of 1,000 slower).
    in_chunk = 5_000

    def in_ints(self, column: ColumnElement[Any], values: Sequence[int]) -> ColumnElement[bool]:
        # The array's text bound untyped, so the CAST around it gives the
        # parameter its type and the server parses it once. A CAST of a text
        # parameter is an expression the planner cannot fold (array_in is not
        # immutable): in a filter it parsed the whole array for every row.
        text_of = bindparam(None, self.int_array(values), type_=_ArrayText(), unique=True)
        return column == any_(cast(text_of, postgresql.ARRAY(BigInteger())))

    def int_rows_sql(self, param: str) -> str:
        return f"SELECT unnest(CAST(:{param} AS bigint[])) AS pk"

    def int_rows_statement(self, kind: str, table: str, columns: Sequence[str]) -> str:
        # One statement of an array per column: an executemany runs one
        # statement per row (69,000 rows of four integers into a table with
        # two indexes: 0.6-1.0 s against 4.0-4.6 s; a binary COPY, 0.3-0.6 s,
        # would go around SQLAlchemy's handling of errors).
        arrays = ", ".join(["%s::bigint[]"] * len(columns))
        if kind == "insert":
            return f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays})"
        names = [f"c{i}" for i in range(len(columns))]
        where = " AND ".join(f"t.{c} = d.{n}" for c, n in zip(columns, names, strict=True))
        using = f"unnest({arrays}) AS d({', '.join(names)})"
        return f"DELETE FROM {table} AS t USING {using} WHERE {where}"

    def int_rows_params(self, rows: Sequence[Sequence[int]]) -> Any:
        return tuple(self.int_array(col) for col in zip(*rows, strict=True))

    @staticmethod
    def int_array(values: Iterable[int]) -> str:
        """Integers as the text of a PostgreSQL array (`{1,2,3}`), for a
        parameter cast to bigint[]: psycopg's array dumper takes each item in
        Python (1.5 s for a step's 700,000), a join of their decimal text a
        tenth of that."""
        return "{" + ",".join(map(str, map(int, values))) + "}"

    def json_object(self, *pairs: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.json_build_object(*pairs)

    def json_bool(self, test: ColumnElement[Any]) -> ColumnElement[Any]:
        return test

    def json_field(self, column: ColumnElement[Any], field_type: FieldType) -> ColumnElement[Any]:
        return column  # text[] and boolean are JSON arrays and booleans already

    def fold(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.lower(column)  # folds like fold_case under the C.UTF-8 ctype

    def id_list(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.string_agg(cast(column, Text), literal(","))

    def lines(self, row: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.string_agg(cast(row, Text), literal("\n"))

    def contact_id_lines(self, conn: Connection, pks: Sequence[int], suffix: str) -> str | None:
        return conn.execute(
            text(_ID_LINES), {"pks": self.bind_ints(pks), "suffix": suffix}
        ).scalar()

    def int_columns(
        self,
        conn: Connection,
        columns: Sequence[ColumnElement[Any]],
        where: ColumnElement[bool] | None,
        nullable: Sequence[bool],
    ) -> list[IntColumn]:
        # Binary COPY of fixed-width rows: int8 values (NULL as 0) and, for a
        # nullable column, a boolean is-NULL flag, so numpy views the whole
        # stream as one structured array.
        selected: list[ColumnElement[Any]] = []
        for column, can_be_null in zip(columns, nullable, strict=True):
            value = cast(column, BigInteger)
            selected.append(func.coalesce(value, 0) if can_be_null else value)
            if can_be_null:
                selected.append(column.is_(None))
        query = select(*selected)
        compiled = (query if where is None else query.where(where)).compile(
            dialect=conn.dialect, compile_kwargs={"render_postcompile": True}
        )
        params = compiled.construct_params()
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        data = bytearray()
        with cursor.copy(f"COPY ({compiled.string}) TO STDOUT (FORMAT binary)", params) as copy:
            for block in copy:
                data += block
        return parse_pg_copy(data, list(nullable), "an integer column read")

    def bulk_writer(self, conn: Connection) -> BulkWriter:
        return PostgresBulk(conn)

    def transient_kind(self, orig: BaseException) -> str | None:
        state = getattr(orig, "sqlstate", None)
        if isinstance(state, str):
            return _TRANSIENT_STATES.get(state) or _TRANSIENT_CLASSES.get(state[:2])
        # psycopg reports a refused, reset or closed connection with no SQLSTATE.
        driver = type(orig)
        if (
            state is None
            and driver.__module__.startswith("psycopg")
            and driver.__name__ in ("OperationalError", "InterfaceError")
        ):
            return CONNECTION_LOST
        return None

    def is_consequence(self, orig: BaseException) -> bool:
        return getattr(orig, "sqlstate", None) in _CONSEQUENCES


class _SessionLease(Lease):
    """A lease held as a session advisory lock on its own connection."""

    def __init__(self, name: str, conn: Connection, key: int) -> None:
        super().__init__(name)
        self._conn: Connection | None = conn
        self._key = key

    def held(self) -> bool:
        if self._conn is None:
            return False
        try:
            return bool(
                self._conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                        "AND pid = pg_backend_pid() AND classid = :space AND objid = :key "
                        "AND objsubid = 2"
                    ),
                    {"space": LOCK_SPACE_LEASE, "key": self._key},
                )
            )
        except Exception:  # the session ended: the lock went with it
            self.release()
            return False

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):  # a dead session has let it go already
            conn.execute(
                text("SELECT pg_advisory_unlock(:space, :key)"),
                {"space": LOCK_SPACE_LEASE, "key": self._key},
            )
        with contextlib.suppress(Exception):
            conn.invalidate()  # never back to the pool holding a session lock
            conn.close()


class PostgresBulk(BulkWriter):
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
        import numpy as np  # bulk loads only; keeps opening a store light

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
