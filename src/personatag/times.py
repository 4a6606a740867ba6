"""Times as ISO-8601 text: the one writer of the form files, the API and the CLI show.

A UTC offset is written ``Z`` (``2026-01-31T09:00:00Z``); any other offset, or
none, is written as ``datetime.isoformat`` gives it, so the text never claims a
zone the value does not have. Callers that want UTC convert first
(``value.astimezone(UTC)``).
"""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any, Literal, overload

TimeSpec = Literal["auto", "hours", "minutes", "seconds", "milliseconds", "microseconds"]


@overload
def iso(value: datetime, timespec: TimeSpec = "auto") -> str: ...


@overload
def iso(value: None, timespec: TimeSpec = "auto") -> None: ...


@overload
def iso(value: datetime | None, timespec: TimeSpec = "auto") -> str | None: ...


def iso(value: datetime | None, timespec: TimeSpec = "auto") -> str | None:
    """`value` as ISO-8601 text with ``Z`` for UTC; None stays None.

    `timespec` as in ``datetime.isoformat``: "auto" writes microseconds only
    when there are some.
    """
    if value is None:
        return None
    return value.isoformat(timespec=timespec).replace("+00:00", "Z")


def iso_any(value: Any) -> Any:
    """A date, time or datetime as ISO-8601 text (``Z`` for UTC), anything else as it is.

    For values bound for JSON (also as ``json.dumps(default=...)``).
    """
    if isinstance(value, date | time):
        return value.isoformat().replace("+00:00", "Z")
    return value
