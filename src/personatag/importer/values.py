"""Reading one value: text cells (CSV, and strings in JSON Lines) and JSON values."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

from personatag.domain import (
    FieldType,
    TimestampRangeError,
    parse_timestamp,
    surrogate_at,
    surrogate_message,
)


class Row(NamedTuple):
    line: int
    cols: tuple[str, ...]
    values: list[Any]


class Reject(NamedTuple):
    line: int
    reason: str


class BadValue(ValueError):
    """A value that cannot be read; the message is the reason shown to people."""


_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _show(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _int(value: int) -> int:
    if not _INT_MIN <= value <= _INT_MAX:
        raise BadValue(f"integer {value} is out of range")
    return value


def _text_int(cell: str) -> int:
    s = cell.strip()
    if not _INT_RE.match(s):
        raise BadValue(f"expected an integer, got {_show(cell)}")
    if len(s) > 20:  # before int(), which refuses over 4,300 digits
        raise BadValue(f"integer {_show(cell)} is out of range")
    return _int(int(s))


def _text_float(cell: str) -> float:
    s = cell.strip()
    if not _FLOAT_RE.match(s):
        raise BadValue(f"expected a number, got {_show(cell)}")
    value = float(s)
    if not math.isfinite(value):
        raise BadValue(f"number {_show(cell)} is out of range")
    return value


def _text_bool(cell: str) -> bool:
    try:
        return _BOOLS[cell.strip().lower()]
    except KeyError:
        raise BadValue(f"expected true/false/1/0/yes/no, got {_show(cell)}") from None


def _text_timestamp(cell: str) -> datetime:
    try:
        return parse_timestamp(cell)
    except TimestampRangeError as exc:
        raise BadValue(f"timestamp {_show(cell)} is {exc}") from None
    except ValueError:
        raise BadValue(
            f"expected an ISO-8601 timestamp like 2024-05-01T09:30:00Z, got {_show(cell)}"
        ) from None


def _text_list(cell: str) -> list[str]:
    items = [part.strip() for part in cell.split(";")]
    return [item for item in items if item] if "" in items else items


def _text_string(cell: str) -> str:
    return cell


# Parsers for a non-empty text cell (empty cells are NULL before these run).
TEXT_PARSERS: dict[FieldType, Callable[[str], Any]] = {
    FieldType.STRING: _text_string,
    FieldType.INT: _text_int,
    FieldType.FLOAT: _text_float,
    FieldType.BOOL: _text_bool,
    FieldType.TIMESTAMP: _text_timestamp,
    FieldType.LIST: _text_list,
}


def check_text(value: Any) -> None:
    """Raise BadValue for text no store can hold: a NUL byte (PostgreSQL refuses it;
    refused on every store alike) or a lone surrogate (not encodable as UTF-8).
    Looks into lists; other values pass."""
    texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    for text in texts:
        if not isinstance(text, str):
            continue
        if "\x00" in text:
            raise BadValue("NUL byte in value")
        at = surrogate_at(text)
        if at is not None:
            raise BadValue(surrogate_message(text, at))


def json_value(ft: FieldType, value: Any) -> Any:
    """A JSON value for a column of type `ft`; strings are read like CSV cells,
    except that a string column keeps its string as is (even empty)."""
    if value is None:
        return None
    check_text(value)
    if isinstance(value, str):
        if ft is FieldType.STRING:
            return value
        return None if value == "" else TEXT_PARSERS[ft](value)
    kind = type(value)
    if ft is FieldType.INT and kind is int:
        return _int(value)
    if ft is FieldType.FLOAT and kind in (int, float) and math.isfinite(value):
        return float(value)
    if ft is FieldType.BOOL and (kind is bool or (kind is int and value in (0, 1))):
        return bool(value)
    if ft is FieldType.LIST and kind is list and all(isinstance(v, str) for v in value):
        return value
    expected = {
        FieldType.STRING: "a string",
        FieldType.INT: "an integer",
        FieldType.FLOAT: "a number",
        FieldType.BOOL: "true or false",
        FieldType.TIMESTAMP: "an ISO-8601 timestamp string",
        FieldType.LIST: "an array of strings or a ';'-separated string",
    }[ft]
    raise BadValue(f"expected {expected}, got {_show(value)}")
