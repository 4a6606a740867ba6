"""Integer columns of a table read in bulk as numpy arrays.

`read_int_columns` asks the store's backend (backends/columns.py) for chunks
of rows, one range of a key column at a time, so a read of 100M rows never
holds more than about `rows_per_chunk` rows of transfer text or bytes. No
Python object is made per value: what makes reading reads and logins for the
columnar copy cheap.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, ColumnElement, Connection, and_, func, select, type_coerce

from personatag.store.backends import get_backend
from personatag.store.backends.columns import BulkReadError, IntColumn

Array = Any

__all__ = ["BulkReadError", "IntColumn", "iter_int_columns", "parse_id_list", "read_int_columns"]

ROWS_PER_CHUNK = 1_000_000


def _nullable(column: ColumnElement[Any]) -> bool:
    return bool(getattr(column, "nullable", True))


def read_int_columns(
    conn: Connection,
    columns: Sequence[ColumnElement[Any]],
    *,
    where: ColumnElement[bool] | None = None,
    key: ColumnElement[Any] | None = None,
    rows_per_chunk: int = ROWS_PER_CHUNK,
) -> list[IntColumn]:
    """Integer (or timestamp) `columns` of the rows `where` selects, row i of
    each the same row, in no particular order. NULL reads as 0 with the row
    flagged in `IntColumn.nulls` (a column that is a table column declared
    NOT NULL is not checked). With `key` (an indexed integer column, ideally
    the table's clustering key) rows are read one key range at a time; the
    range adapts so a chunk holds about `rows_per_chunk` rows. `where` may
    bind integers only."""
    parts = list(
        iter_int_columns(conn, columns, where=where, key=key, rows_per_chunk=rows_per_chunk)
    )
    if not parts:
        return [IntColumn.empty() for _ in columns]
    return [IntColumn.concat([p[i] for p in parts]) for i in range(len(columns))]


def iter_int_columns(
    conn: Connection,
    columns: Sequence[ColumnElement[Any]],
    *,
    where: ColumnElement[bool] | None = None,
    key: ColumnElement[Any] | None = None,
    rows_per_chunk: int = ROWS_PER_CHUNK,
) -> Iterator[list[IntColumn]]:
    """read_int_columns() a chunk at a time (one chunk without `key`), so a
    caller can make each chunk smaller before the next arrives."""
    backend = get_backend(conn.dialect.name)
    nullable = [_nullable(c) for c in columns]
    if key is None:
        yield backend.int_columns(conn, columns, where, nullable)
        return
    bounds = select(func.min(key), func.max(key))
    low, high = conn.execute(bounds if where is None else bounds.where(where)).one()
    if low is None:
        return
    int_key = type_coerce(key, BigInteger())
    start, high = int(low), int(high)
    step = max(1, rows_per_chunk // 16)
    while start <= high:
        stop = min(high, start + step - 1)  # inclusive: `high` may be the largest int64
        in_range = and_(int_key >= start, int_key <= stop)
        chunk = backend.int_columns(
            conn, columns, in_range if where is None else and_(where, in_range), nullable
        )
        yield chunk
        got = len(chunk[0]) if chunk else 0
        # Aim the next range at `rows_per_chunk` rows, growing at most 8-fold.
        step = step * 8 if got == 0 else max(1, min(step * 8, step * rows_per_chunk // got))
        start = stop + 1


def parse_id_list(text: str | bytes | None) -> Array:
    """int64 values of a `Backend.id_list` aggregate (None: none)."""
    if not text:
        return np.zeros(0, dtype=np.int64)
    raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
    return np.fromstring(raw, dtype=np.int64, sep=",")
