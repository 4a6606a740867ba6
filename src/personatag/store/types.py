"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Dialect, Text, type_coerce
from sqlalchemy.types import TypeDecorator, TypeEngine

from personatag.store.backends import get_backend

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def to_micros(value: datetime) -> int:
    """UTC microseconds since the epoch; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // _MICRO


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


class UTCTimestamp(TypeDecorator[datetime]):
    """A UTC instant stored as BIGINT microseconds since the epoch.

    Integers compare and index the same way on every store (and in Flink later),
    which keeps window predicates (`within 90d`) cheap and identical everywhere.
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        if isinstance(value, int):
            return value
        return to_micros(value)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        return None if value is None else from_micros(int(value))


class StringList(TypeDecorator[list[str]]):
    """A list of strings: JSON text on SQLite, text[] on PostgreSQL."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(get_backend(dialect.name).list_type())

    def process_bind_param(self, value: list[str] | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return get_backend(dialect.name).bind_list(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> list[str] | None:
        if value is None:
            return None
        if isinstance(value, list):
            return value
        try:
            loaded = json.loads(value)
        except (TypeError, ValueError):
            loaded = None
        if not isinstance(loaded, list):
            return NotAList(value)  # type: ignore[return-value]
        return [v if isinstance(v, str) else NotAString(v) for v in loaded]


class NotAList(str):
    """A LIST column's stored value that is not a JSON array (another program
    wrote it: `hello`, `"Credit"`, `{}`): read as its text, so a page shows
    it, but no list operation takes it (iterating it or testing what it
    contains raises TypeError), so it is never answered from its
    characters. The evaluators read it as UNKNOWN, as NULL
    (criteria.to_python._on_list), as the store's SQL does; before, the
    read of the row failed (and with it a stream step, every time)."""

    def _refuse(self) -> TypeError:
        return TypeError(f"a stored list that is not a JSON array: {str(self)[:80]!r}")

    def __iter__(self) -> Any:
        raise self._refuse()

    def __contains__(self, item: object) -> bool:
        raise self._refuse()


class NotAString(str):
    """An item of a stored list that is not a string (another program wrote
    `[1, true, null]`): shown as its text (`1`, `True`, `None`), but equal to
    no string, as the store compares it (SQLite's `json_each` gives 1, not
    '1'), so `interests contains "1"` does not match it on the stream's
    evaluator either (before, its text matched where the store's did not)."""

    def __new__(cls, value: Any) -> NotAString:
        return super().__new__(cls, str(value))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NotAString) and str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash((NotAString, str(self)))


def decode_lists(values: Sequence[Any]) -> Sequence[list[str] | None]:
    """StringList values as stored (JSON text, or lists where the driver
    decodes them) to lists, many at once: one JSON parse for all the texts
    rather than one per value. None stays None."""
    if not any(isinstance(v, str) for v in values):
        return values
    return [None if v is None else [str(s) for s in v] for v in parse_lists(values)]


def parse_lists(values: Sequence[str | None]) -> list[Any]:
    """StringList texts (JSON arrays; None stays None) in one JSON parse, their
    items as stored; raises ValueError when a text is not one JSON value."""
    parsed: list[Any] = json.loads(
        "[" + ",".join(["null" if v is None else v for v in values]) + "]"
    )
    if len(parsed) != len(values):
        raise ValueError("a stored string list is not one JSON value")
    return parsed


DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000


def time_bucket(column: ColumnElement[Any], size_us: int) -> ColumnElement[int]:
    """The number of the UTC day (`DAY_US`) or hour (`HOUR_US`) a timestamp
    column falls in, counted from the epoch: integer division of the stored
    microseconds, the same SQL on every store (a grouping key for per-day
    figures). `bucket_start(n, size_us)` turns it back into a time."""
    return type_coerce(column, BigInteger()) // size_us


def bucket_start(number: int, size_us: int) -> datetime:
    return from_micros(int(number) * size_us)
