"""Row-wise work on batches of contacts, for hot paths (the stream): statements
compiled once and run with executemany, plain-tuple reads, IN-list plans.

At stream rates (tens of thousands of rows a second) SQLAlchemy's per-row
parameter handling costs more than a small INSERT or DELETE itself. A
`Prepared` statement is still built from the table definitions, but compiled
once per dialect with positional parameters and handed to the driver's
executemany as plain tuples, through `Connection.exec_driver_sql` (so it runs
in the caller's transaction and statement events see it).

Values go to the driver as they are: no column type processing runs per row.
Pass what the column stores (integers, text); `bound` converts one value
through its column type once (a timestamp shared by every row).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from weakref import WeakKeyDictionary

from sqlalchemy import Column, Connection, Dialect, Select, Table
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement, ColumnElement

if TYPE_CHECKING:
    from personatag.store.backends.base import Backend


class Prepared:
    """A statement whose parameters are named, in order, by `params`.

    For an INSERT, `params` are the columns to insert (the rest take their
    default); for other statements, the names of their `bindparam`s.
    """

    def __init__(self, statement: ClauseElement, params: Sequence[str]) -> None:
        self.statement = statement
        self.params = tuple(params)
        self._is_insert = bool(getattr(statement, "is_insert", False))
        # dialect name -> (SQL text, row positions in the order the SQL wants)
        self._by_dialect: dict[str, tuple[str, tuple[int, ...] | None]] = {}

    def _compiled(self, dialect: Dialect) -> tuple[str, tuple[int, ...] | None]:
        found = self._by_dialect.get(dialect.name)
        if found is not None:
            return found
        positional = dialect
        if not dialect.positional:
            # psycopg takes %s as well as %(name)s: tuples need no dict per row.
            positional = copy.copy(dialect)
            positional.paramstyle = "format"
            positional.positional = True
        compiled = self.statement.compile(
            dialect=positional, column_keys=list(self.params) if self._is_insert else None
        )
        assert isinstance(compiled, SQLCompiler)  # noqa: S101 - every DML and query compiles so
        order = tuple(compiled.positiontup or ())
        if sorted(order) != sorted(self.params):
            raise ValueError(f"statement parameters {order} are not {self.params}")
        positions = tuple(self.params.index(name) for name in order)
        found = (str(compiled), None if positions == tuple(range(len(positions))) else positions)
        self._by_dialect[dialect.name] = found
        return found

    def sql(self, dialect: Dialect) -> str:
        """The SQL text this statement runs as on `dialect`."""
        return self._compiled(dialect)[0]

    def executemany(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Run once per row (values in the order of `params`), in `conn`'s transaction."""
        if not rows:
            return
        sql, positions = self._compiled(conn.dialect)
        if positions is not None:
            rows = [tuple(row[i] for i in positions) for row in rows]
        conn.exec_driver_sql(sql, rows if isinstance(rows, list) else list(rows))


_T = TypeVar("_T")
_BUILT: WeakKeyDictionary[Table, dict[str, Any]] = WeakKeyDictionary()


def once_per_table(table: Table, name: str, build: Callable[[], _T]) -> _T:
    """`build()` once per table object and name: statements over a store's tables
    are made once, not per batch (each store has its own table objects)."""
    built = _BUILT.setdefault(table, {})
    if name not in built:
        built[name] = build()
    found: _T = built[name]
    return found


def to_driver(conn: Connection, column: Column[Any]) -> Callable[[Any], Any]:
    """What `column`'s type makes of a (non-NULL) value for the driver."""
    processor = column.type.bind_processor(conn.dialect)
    return processor if processor is not None else _same


def _same(value: Any) -> Any:
    return value


def bound(conn: Connection, column: Column[Any], value: Any) -> Any:
    """`value` as the driver receives it for `column` (its type's bind processing)."""
    return None if value is None else to_driver(conn, column)(value)


def fetch_tuples(conn: Connection, query: Select[Any]) -> list[tuple[Any, ...]]:
    """Run `query` on the driver's cursor, in `conn`'s transaction, and return
    plain tuples: building a Row per result costs more than the read itself when
    a batch reads hundreds of thousands of rows. No result types are applied, so
    only for columns the driver already returns as wanted (integers). The raw
    cursor does not begin a transaction by itself: run something through
    `conn` first (as every caller does) when it must read inside one."""
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.construct_params()
    args: Any = (
        tuple(params[name] for name in compiled.positiontup or ())
        if compiled.positional
        else params
    )
    cur = conn.connection.cursor()
    try:
        cur.execute(str(compiled), args)
        return list(cur.fetchall())
    finally:
        cur.close()


def fetch_typed(conn: Connection, query: Select[Any]) -> list[list[Any]]:
    """As fetch_tuples, with each selected column's type applied to its values
    (what a Row would hold: datetimes, lists, booleans), as lists: for reads
    of many rows, where a Row and its per-value processing cost more than the
    read and one conversion per column that needs one."""
    processors = [
        (i, p)
        for i, col in enumerate(query.selected_columns)
        if (p := col.type.result_processor(conn.dialect, None)) is not None
    ]
    out = [list(row) for row in fetch_tuples(conn, query)]
    for i, process in processors:
        for row in out:
            row[i] = process(row[i])
    return out


CHUNK = 2000  # keys per IN list


def chunks(pks: Sequence[int], size: int = CHUNK) -> Iterator[Sequence[int]]:
    for i in range(0, len(pks), size):
        yield pks[i : i + size]


def in_parts(
    backend: Backend, column: ColumnElement[Any], keys: Sequence[int]
) -> Iterator[ColumnElement[bool]]:
    """`column IN keys` as one condition per part of `keys`, each part as
    long and written as the store's database reads such a list best
    (Backend.in_ints): a query per condition."""
    for part in chunks(keys, backend.in_chunk):
        yield backend.in_ints(column, part)


def grouped(
    wanted: Mapping[int, Collection[int]], min_group: int = 50
) -> list[tuple[list[int], list[int]]]:
    """Plan the reads of per-contact keys (contact pk -> the personas or criteria
    wanted for it) as (keys, contacts) pairs, both sorted: contacts wanting the
    same keys are read together, so a batch whose changes each touch a few
    dozen criteria does not read back every row its contacts have. Groups of
    fewer than `min_group` contacts are read together with the union of their
    keys (a query per handful of contacts costs more than the extra rows)."""
    groups: dict[frozenset[int], list[int]] = {}
    for cpk, keys in wanted.items():
        if keys:
            groups.setdefault(frozenset(keys), []).append(cpk)
    out: list[tuple[list[int], list[int]]] = []
    rest_keys: set[int] = set()
    rest: list[int] = []
    for keys, cpks in groups.items():
        if len(cpks) >= min_group:
            out.append((sorted(keys), sorted(cpks)))
        else:
            rest_keys |= keys
            rest += cpks
    if rest:
        out.append((sorted(rest_keys), sorted(rest)))
    return out
