"""What differs between the databases a store can live in, behind one base class.

Every difference between SQLite and PostgreSQL that the rest of the package
meets is a method or a class-level table here, so no caller asks which
database it has: it asks its store's backend (`store.backend`) for a lock, a
list parameter, a JSON object or a bulk writer. A backend holds no state; one
instance per database serves every store of it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Connection, Engine, Table, Text, bindparam
from sqlalchemy.engine import URL
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeEngine

from personatag.domain import FieldType, fold_case

if TYPE_CHECKING:
    from personatag.store.backends.bulk import BulkWriter
    from personatag.store.backends.columns import IntColumn
    from personatag.store.backends.leases import Lease

# First keys of PostgreSQL advisory locks, one space per kind of thing locked
# (two ASCII letters each): advisory locks of different kinds never collide.
LOCK_SPACE_PERSONA = 0x5054  # "PT"
LOCK_SPACE_FEED = 0x5046  # "PF"
LOCK_SPACE_LEASE = 0x504C  # "PL"
LOCK_SPACE_ACCOUNTS = 0x5041  # "PA"
LOCK_SPACE_STREAM = 0x5053  # "PS"

# Kinds of transient store failure (see store.transient).
CONNECTION_LOST = "connection lost"
SERIALIZATION = "serialization failure"
DEADLOCK = "deadlock"
BUSY = "database busy"


Col = ColumnElement[Any]
Cond = ColumnElement[bool]
#: A list predicate of the criteria language: (list column, strings, parameter name).
ListOp = Callable[[Col, list[str], str], Cond]
#: The first / last N characters of a string (N >= 1, a bound parameter).
Slice = Callable[[Col, BindParameter[Any]], Col]


# conn.info's key while a connection reads text leniently (Backend.lenient_text).
LENIENT = "pt_lenient_text"


def bind(name: str, value: Any, type_: TypeEngine[Any]) -> BindParameter[Any]:
    """A typed bound parameter, unique within its statement."""
    return bindparam(name, value, type_=type_, unique=True)


class search_key(FunctionElement[str]):
    """`lower(text)` ordered by code point: what contact search indexes and
    compares against (the query folded by `Backend.search_fold`). A backend
    whose default collation is not code-point order compiles it with one that
    is, so a prefix is one index range and the index gives the order."""

    name = "search_key"
    type = Text()
    inherit_cache = True


@compiles(search_key)
def _search_key(element: search_key, compiler: SQLCompiler, **kw: Any) -> str:
    return f"lower({compiler.process(element.clauses, **kw)})"


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with
    `prefix`, in code-point order (None: there is none)."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates are not characters
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


class Backend(ABC):
    """One database: how to connect to it, lock in it, and say things in its SQL."""

    #: The SQLAlchemy backend name (`engine.dialect.name`), the registry's key.
    name: ClassVar[str]
    #: URL schemes people write for it (`postgres://`), and the driver used.
    schemes: ClassVar[tuple[str, ...]]
    driver: ClassVar[str]
    #: Only one write transaction at a time across connections: while a job's
    #: own write transaction is open, nothing else can write.
    one_writer: ClassVar[bool]
    #: The type of a temp table's integer primary key (SQLite: the rowid,
    #: with no separate index to fill).
    temp_pk_type: ClassVar[type[TypeEngine[int]]]
    #: `contact_id_lines` returns NUL-separated ids for the caller to turn
    #: into CSV lines (True), or the finished lines (False: text cannot hold NUL).
    id_lines_nul_separated: ClassVar[bool]
    #: The isolation level under which every statement of a read transaction
    #: sees one snapshot (None: the backend's read transactions already do).
    snapshot_isolation: ClassVar[str | None] = None

    # -- the SQL dialect table (criteria compile through it) --------------
    #: Collation for <, <=, >, >=, between on strings (code-point order).
    ORDER_COLLATION: ClassVar[str | None] = None
    #: ESCAPE clause for LIKE, so that no character in a pattern is an escape.
    LIKE_ESCAPE: ClassVar[str | None] = None
    #: "prefix" / "suffix": the first / last N characters of a string.
    SLICES: ClassVar[Mapping[str, Slice]]
    #: "contains", "contains_any", "contains_all" on a list column; UNKNOWN
    #: (not FALSE) on a NULL list, as SQL's three-valued logic has it.
    LIST_OPS: ClassVar[Mapping[str, ListOp]]

    # -- connecting -------------------------------------------------------

    def normalise_url(self, url: URL) -> URL:
        """`url` with the driver this package uses when it names none
        (`postgres://` and `postgresql://` become `postgresql+psycopg://`)."""
        return url.set(drivername=self.driver) if url.drivername in self.schemes else url

    @abstractmethod
    def create_engine(
        self, url: URL, *, create: bool = False, connect_timeout_s: float | None = None
    ) -> Engine:
        """An engine for `url`, set up for this package (pragmas, begin mode);
        with `connect_timeout_s`, a connection that cannot be made in that time
        fails instead of waiting (a server that is down).

        Its errors never carry the statement's parameters (`hide_parameters`):
        they can hold password and token hashes, webhook secrets and contact
        data, and error messages end up in logs."""

    def local_file(self, url: URL) -> str | None:
        """The file the database lives in, when it is one on this machine."""
        return None

    def shared(self, url: URL) -> bool:
        """Every connection (and other processes) see the same database."""
        return True

    def connect_timeout_args(self, timeout_s: float) -> dict[str, Any]:
        """Driver arguments that bound the time a first connection takes."""
        return {}

    # -- transactions and locks -------------------------------------------

    @abstractmethod
    def write_briefly(self, conn: Connection, wait_ms: int) -> AbstractContextManager[Connection]:
        """A write transaction on `conn` that fails (OperationalError) instead of
        waiting much more than `wait_ms` for a lock another transaction holds."""

    def analyze(self, conn: Connection) -> None:
        """Refresh the planner's statistics."""
        conn.exec_driver_sql("ANALYZE")

    def analyze_skip_scan(self, conn: Connection, table: Table) -> None:
        """Keep the statistics that let the planner seek `table` by the second
        column of its primary key (skip-scan), where no index serves it. Only
        SQLite needs them: PostgreSQL indexes such columns."""
        return None

    @abstractmethod
    def analyze_temp(self, conn: Connection, table: Table) -> None:
        """Give the planner the real size of a freshly filled temp table."""

    @abstractmethod
    def lock(self, conn: Connection, space: int, key: int) -> None:
        """Hold the lock (space, key) until `conn`'s transaction ends, waiting for it."""

    def checkpoint_beside(self, engine: Engine) -> Any:
        """Start moving the write-ahead log into the database on a thread beside
        the writers instead of in their commits; returns what stops it (with
        `stop()`), or None where the database does that itself."""
        return None

    @abstractmethod
    def lock_shared(self, conn: Connection, space: int, key: int) -> None:
        """Hold the lock (space, key) shared until `conn`'s transaction ends:
        other shared holders go on, an exclusive one (`lock`) waits for them all
        and they for it."""

    def lock_all(self, conn: Connection, space: int, keys: Sequence[int]) -> None:
        """`lock` for several keys, in ascending order (one global order, so two
        transactions locking overlapping sets never deadlock)."""
        for key in sorted(set(keys)):
            self.lock(conn, space, key)

    @abstractmethod
    def running_writers(self, conn: Connection) -> frozenset[tuple[int, str]]:
        """Other sessions of this database inside a transaction that has written
        something, as (session, transaction) ids; empty where one writer at a
        time means none can be in progress while a reader looks."""

    @abstractmethod
    def serial_last_value(self, conn: Connection, table: str, column: str) -> int:
        """The last value handed out for the serial `column` of `table` (0: none),
        whether or not its transaction has committed yet."""

    @abstractmethod
    def try_lease(self, engine: Engine, name: str) -> Lease | None:
        """Take the lease `name` if nobody holds it (see store.leases)."""

    # -- binding and building values --------------------------------------

    @abstractmethod
    def list_type(self) -> TypeEngine[Any]:
        """The column type of a list of strings."""

    @abstractmethod
    def bind_list(self, values: Sequence[str]) -> Any:
        """A list of strings as the driver takes it for `list_type`."""

    @abstractmethod
    def bind_ints(self, values: Sequence[int]) -> Any:
        """A list of integers as one bound parameter, read by `int_rows_sql`."""

    # Keys per `in_ints` condition (store.rowwise.in_parts).
    in_chunk: ClassVar[int] = 2000

    def in_ints(self, column: ColumnElement[Any], values: Sequence[int]) -> ColumnElement[bool]:
        """`column IN values` (integers) as this database takes a long list
        best: here a bound parameter per value."""
        return column.in_(values)

    def insert_int_rows(
        self, conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[int]]
    ) -> None:
        """Insert rows of integers (the values of `columns`, in order) in
        `conn`'s transaction, through SQLAlchemy (its errors, its handling of
        a lost connection): the many scattered rows a membership writer has.
        No conflict handling: the rows must be new."""
        self._int_rows(conn, "insert", table, columns, rows)

    def delete_int_rows(
        self, conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[int]]
    ) -> None:
        """Delete the rows whose `columns` equal each of `rows` (integers), in
        `conn`'s transaction, through SQLAlchemy (see insert_int_rows)."""
        self._int_rows(conn, "delete", table, columns, rows)

    def _int_rows(
        self,
        conn: Connection,
        kind: str,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[Sequence[int]],
    ) -> None:
        if not rows:
            return
        quote = conn.dialect.identifier_preparer.quote
        sql = self.int_rows_statement(kind, quote(table.name), [quote(c) for c in columns])
        conn.exec_driver_sql(sql, self.int_rows_params(rows))

    @abstractmethod
    def int_rows_statement(self, kind: str, table: str, columns: Sequence[str]) -> str:
        """The driver SQL that inserts ("insert") or deletes ("delete") rows of
        integers given by `int_rows_params` (`table`, `columns`: quoted)."""

    @abstractmethod
    def int_rows_params(self, rows: Sequence[Sequence[int]]) -> Any:
        """The parameters of `int_rows_statement` for `rows`."""

    @abstractmethod
    def int_rows_sql(self, param: str) -> str:
        """SQL of a subquery with one row (column `pk`) per integer of the list
        bound (with `bind_ints`) as `:param`."""

    @abstractmethod
    def json_object(self, *pairs: ColumnElement[Any]) -> ColumnElement[Any]:
        """A JSON object of (key, value, key, value, ...)."""

    @abstractmethod
    def json_bool(self, test: ColumnElement[Any]) -> ColumnElement[Any]:
        """A boolean test as a JSON true/false inside `json_object`."""

    @abstractmethod
    def json_field(self, column: ColumnElement[Any], field_type: FieldType) -> ColumnElement[Any]:
        """A contact column's value as its JSON value inside `json_object`
        (a list as an array, a boolean as true/false, NULL as null)."""

    def typed_value(self, column: ColumnElement[Any], field_type: FieldType) -> ColumnElement[Any]:
        """`column` read as `field_type` stores it, whatever a row holds (in a
        database whose columns take any value, an odd one is converted: see
        `odd_value`). The default: the column as it is."""
        return column

    def odd_value(
        self, column: ColumnElement[Any], field_type: FieldType
    ) -> ColumnElement[bool] | None:
        """A test that is true where the stored value is not a `field_type`
        value (written by another program into a column of another type),
        or None when the database's column types rule that out."""
        return None

    @abstractmethod
    def fold(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        """The SQL expression that implements domain.fold_case on `column`
        (NULL stays NULL)."""

    def search_fold(self, text: str) -> str:
        """`text` folded the way `search_key` folds a column in this database."""
        return fold_case(text)

    def prefix_match(self, column: ColumnElement[Any], prefix: str) -> ColumnElement[bool]:
        """`search_key(column)` starts with `prefix` (already folded), as one
        range over an index of `search_key(column)`."""
        key = search_key(column)
        upper = prefix_upper_bound(prefix)
        low = key >= bindparam(None, prefix, type_=Text())
        return low if upper is None else low & (key < bindparam(None, upper, type_=Text()))

    # -- aggregating ------------------------------------------------------

    @abstractmethod
    def id_list(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        """An aggregate: the integers of `column` as one comma-separated string,
        far cheaper than a row per id through the driver."""

    def nul_list(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        """An aggregate: the text of `column` as UTF-8 bytes, NUL-separated,
        where the database's text can hold NUL."""
        raise NotImplementedError(f"{self.name} text cannot hold NUL")

    @abstractmethod
    def lines(self, row: ColumnElement[Any]) -> ColumnElement[Any]:
        """An aggregate: the text of `row` (e.g. a JSON object), one per line."""

    @abstractmethod
    def contact_id_lines(self, conn: Connection, pks: Sequence[int], suffix: str) -> str | None:
        """The ids of contacts `pks`: NUL-separated when `id_lines_nul_separated`,
        else as CSV lines (quoted as the csv module does, each ending with
        `suffix`, joined by line breaks, in pk order). None when none exist."""

    # -- bulk reads -------------------------------------------------------

    @abstractmethod
    def int_columns(
        self,
        conn: Connection,
        columns: Sequence[ColumnElement[Any]],
        where: ColumnElement[bool] | None,
        nullable: Sequence[bool],
    ) -> list[IntColumn]:
        """The integer `columns` of the rows `where` selects, as numpy arrays
        (row i of every column is the same row, in no particular order),
        without a Python object per value. A column not `nullable` must hold
        no NULL. `where` may bind integers only. See store.columns."""

    # -- bulk writes ------------------------------------------------------

    @abstractmethod
    def bulk_writer(self, conn: Connection) -> BulkWriter:
        """The bulk writer for `conn` (inside its transaction)."""

    # -- errors -----------------------------------------------------------

    def undecodable(self, orig: BaseException) -> bool:
        """A driver error raised by reading stored text that is not UTF-8
        (only a database that stores any bytes as text can raise it)."""
        return False

    def lenient_text(self, conn: Connection) -> AbstractContextManager[None]:
        """Within: `conn` reads stored text that is not UTF-8 with U+FFFD in
        place of each bad sequence, and conn.info[LENIENT] is True (see
        store.text). A database whose text is always UTF-8 changes nothing."""
        return nullcontext()

    @abstractmethod
    def transient_kind(self, orig: BaseException) -> str | None:
        """The kind of transient failure (store.transient) a driver error of this
        database is, or None when it is not one this database recognises."""

    def is_consequence(self, orig: BaseException) -> bool:
        """A driver error that only follows an earlier failure in the same
        transaction (the earlier one is the one that counts)."""
        return False
