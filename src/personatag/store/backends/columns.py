"""Integer columns read in bulk: what a backend returns and how it parses it.

A backend's `int_columns` reads one chunk of rows as numpy arrays without a
Python object per value: SQLite aggregates each column into one text
(`group_concat`), parsed by numpy in C; PostgreSQL sends fixed-width binary
COPY rows, viewed as one structured array. Both send, per column, the value
with NULL as 0 and, for a column that can be NULL, an is-NULL flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from personatag.errors import PersonatagError

# numpy arrays are typed loosely here: the docstrings say what each holds.
Array = Any


class BulkReadError(PersonatagError):
    """A bulk column read returned something other than what was asked."""


@dataclass(frozen=True)
class IntColumn:
    """One integer column of the rows read: `values` int64 (0 where NULL),
    `nulls` a bool mask (True where NULL), None when no row is NULL."""

    values: Array
    nulls: Array | None = None

    def __len__(self) -> int:
        return len(self.values)

    @staticmethod
    def empty() -> IntColumn:
        return IntColumn(np.zeros(0, dtype=np.int64))

    @staticmethod
    def concat(parts: list[IntColumn]) -> IntColumn:
        if not parts:
            return IntColumn.empty()
        if len(parts) == 1:
            return parts[0]
        values = np.concatenate([p.values for p in parts])
        if all(p.nulls is None for p in parts):
            return IntColumn(values)
        nulls = np.concatenate(
            [np.zeros(len(p), np.bool_) if p.nulls is None else p.nulls for p in parts]
        )
        return IntColumn(values, nulls)


def with_nulls(values: Array, nulls: Array | None) -> IntColumn:
    """An IntColumn whose mask is dropped when no row is NULL."""
    if nulls is not None and not bool(nulls.any()):
        nulls = None
    return IntColumn(values, nulls)


def parse_decimal_list(text: str | bytes | None, expected: int, what: str) -> Array:
    """int64 values of comma-separated decimal integers (None: none)."""
    if expected == 0:
        return np.zeros(0, dtype=np.int64)
    if text is None:
        raise BulkReadError(f"bulk read of {what}: no values for {expected} rows")
    raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
    # int() per item would make a Python object per value: numpy parses in C.
    values = np.fromstring(raw, dtype=np.int64, sep=",")
    if len(values) != expected:
        raise BulkReadError(f"bulk read of {what}: {len(values)} values for {expected} rows")
    return values


def parse_flags(text: str | bytes | None, expected: int, what: str) -> Array:
    """A bool mask from a text of '0'/'1' characters, one per row."""
    if expected == 0:
        return np.zeros(0, dtype=np.bool_)
    raw = b"" if text is None else text.encode("ascii") if isinstance(text, str) else text
    flags = np.frombuffer(raw, dtype=np.uint8)
    if len(flags) != expected:
        raise BulkReadError(f"bulk read of {what}: {len(flags)} flags for {expected} rows")
    return flags == ord("1")


# PostgreSQL's binary COPY: a header (signature, flags, extension length), rows
# of (int16 field count, then per field int32 length and the bytes), a trailer.
PG_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
PG_HEADER = len(PG_COPY_SIGNATURE) + 8
PG_TRAILER = b"\xff\xff"


def pg_row_dtype(nullable: list[bool]) -> np.dtype[Any]:
    """The fixed-width binary COPY row of int8 columns, each followed by a
    boolean is-NULL column when it is nullable."""
    fields: list[tuple[str, str]] = [("count", ">i2")]
    for i, can_be_null in enumerate(nullable):
        fields += [(f"len{i}", ">i4"), (f"v{i}", ">i8")]
        if can_be_null:
            fields += [(f"nlen{i}", ">i4"), (f"n{i}", "u1")]
    return np.dtype(fields)


def parse_pg_copy(data: bytes | bytearray, nullable: list[bool], what: str) -> list[IntColumn]:
    """The columns of a binary COPY of int8 (and is-NULL boolean) columns."""
    dtype = pg_row_dtype(nullable)
    view = memoryview(data)
    if (
        len(data) < PG_HEADER + len(PG_TRAILER)
        or bytes(view[: len(PG_COPY_SIGNATURE)]) != PG_COPY_SIGNATURE
    ):
        raise BulkReadError(f"bulk read of {what}: not a binary COPY stream")
    ext = int.from_bytes(view[PG_HEADER - 4 : PG_HEADER], "big")
    start = PG_HEADER + ext
    body = len(data) - start - len(PG_TRAILER)
    if body % dtype.itemsize or bytes(view[len(data) - 2 :]) != PG_TRAILER:
        raise BulkReadError(f"bulk read of {what}: rows are not {dtype.itemsize} bytes each")
    rows = np.frombuffer(data, dtype=dtype, offset=start, count=body // dtype.itemsize)
    fields = len(nullable) + sum(nullable)
    if len(rows) and not bool(np.all(rows["count"] == fields)):
        raise BulkReadError(f"bulk read of {what}: unexpected field count")
    out = []
    for i, can_be_null in enumerate(nullable):
        values = rows[f"v{i}"].astype(np.int64)
        out.append(with_nulls(values, rows[f"n{i}"].astype(np.bool_) if can_be_null else None))
    return out
