"""Bulk writes behind one small interface, implemented by each backend.

Callers hand over Python values (str, int, float, bool, datetime, list[str]);
each writer binds them through the table's column types, so timestamps become
UTC microseconds and lists become JSON text (SQLite) or text[] (PostgreSQL).
SQLite uses executemany on the raw driver cursor; PostgreSQL uses COPY, into a
temporary staging table when conflicts must be resolved: each database's
writer lives with its backend (store/backends/).

All methods run inside the caller's transaction (`Store.write()`): nothing here
commits. SQL text is assembled only from schema identifiers, always quoted;
values travel as bound parameters or COPY data, never spliced into SQL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Table

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

Row = Sequence[Any]
_Processor = Callable[[Any], Any]


class BulkWriter(ABC):
    """Bulk inserts and upserts for one connection (inside its transaction)."""

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
