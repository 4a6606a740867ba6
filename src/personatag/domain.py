"""Core types shared by the criteria language, the store and the engines."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum


class FieldType(StrEnum):
    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    TIMESTAMP = "timestamp"
    LIST = "list"  # a list of strings


class Action(StrEnum):
    TAG = "tag"
    UNTAG = "untag"


class Mode(StrEnum):
    ADHOC = "adhoc"
    ONGOING = "ongoing"


class ExitPolicy(StrEnum):
    KEEP = "keep"
    REMOVE = "remove"


class PinKind(StrEnum):
    IN = "in"
    OUT = "out"


class Change(StrEnum):
    ENTER = "enter"
    EXIT = "exit"


class JobStatus(StrEnum):
    """A job's state, as stored in `jobs.status` and shown by the CLI and API."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # applied, with rows that could not be used
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)

    @property
    def applied(self) -> bool:
        """Succeeded, or partial: the request's changes were committed."""
        return self in (JobStatus.SUCCEEDED, JobStatus.PARTIAL)


# Membership sources: which kind of thing holds a membership row.
SOURCE_ADHOC = 0  # any ad hoc request (the row keeps the first request's id)
SOURCE_MANUAL = -1  # a pin-in
# source > 0: the ongoing criterion with that primary key


# The typed standard contact attributes, in their canonical order.
STANDARD_CONTACT_FIELDS: Mapping[str, FieldType] = {
    "id": FieldType.STRING,
    "email": FieldType.STRING,
    "first_name": FieldType.STRING,
    "last_name": FieldType.STRING,
    "job_title": FieldType.STRING,
    "seniority": FieldType.INT,
    "region": FieldType.STRING,
    "country": FieldType.STRING,
    "firm": FieldType.STRING,
    "firm_type": FieldType.STRING,
    "interests": FieldType.LIST,
    "created_at": FieldType.TIMESTAMP,
    "updated_at": FieldType.TIMESTAMP,
    "last_login_at": FieldType.TIMESTAMP,
}

# Fields of a publication, usable inside `count(read where ...)`.
PUBLICATION_FIELDS: Mapping[str, FieldType] = {
    "id": FieldType.STRING,
    "title": FieldType.STRING,
    "published_at": FieldType.TIMESTAMP,
    "asset_class": FieldType.STRING,
    "sector": FieldType.STRING,
    "region": FieldType.STRING,
    "series": FieldType.STRING,
}

# Column name of a custom attribute in the contacts table; the prefix keeps user
# names from ever colliding with standard columns or SQL keywords.
CUSTOM_COLUMN_PREFIX = "cx_"

# At most 60 characters: with the cx_ prefix a column name stays within
# PostgreSQL's 63-character identifiers (longer names are silently truncated).
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,59}$")
PERSONA_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class Catalog:
    """What a criterion may name: contact fields (standard + custom), publication
    fields, and the persona keys that exist (archived ones excluded)."""

    contact_fields: Mapping[str, FieldType]
    publication_fields: Mapping[str, FieldType] = field(default_factory=lambda: PUBLICATION_FIELDS)
    personas: frozenset[str] = frozenset()

    @staticmethod
    def standard(personas: frozenset[str] = frozenset()) -> Catalog:
        return Catalog(contact_fields=dict(STANDARD_CONTACT_FIELDS), personas=personas)

    def column_for(self, name: str) -> str:
        """The contacts-table column that stores field `name`."""
        return name if name in STANDARD_CONTACT_FIELDS else CUSTOM_COLUMN_PREFIX + name


def utcnow() -> datetime:
    return datetime.now(UTC)


# Criteria look back from as_of by up to 100,000 days; keep that arithmetic in range.
MIN_AS_OF = datetime(1900, 1, 1, tzinfo=UTC)
MAX_AS_OF = datetime(9000, 1, 1, tzinfo=UTC)


def check_as_of(value: datetime) -> datetime:
    """`value` if it is a usable as-of time, else an InputError saying the range."""
    from personatag.errors import InputError

    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if not MIN_AS_OF <= value < MAX_AS_OF:
        raise InputError(
            f"as-of time {value.isoformat()} is out of range: use a time from 1900 to 8999"
        )
    return value


class TimestampRangeError(ValueError):
    """A well-formed timestamp that lies outside years 1-9999 once moved to UTC."""


def parse_timestamp(text: str) -> datetime:
    """Parse ISO-8601 (a date alone means midnight UTC; no offset means UTC).

    Raises ValueError for anything else, TimestampRangeError (a ValueError) for
    an instant that UTC cannot hold (0001-01-01T00:00:00+14:00).
    """
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise TimestampRangeError(
            "out of range: in UTC the instant falls outside years 1 to 9999"
        ) from None


def fold_case(value: str) -> str:
    """Case folding for `ilike`, identical on every engine.

    Per-character simple lowercase (what PostgreSQL's lower() does under a UTF-8
    ctype); Python's full mapping would turn one character into two (İ -> i̇).
    """
    out = []
    for ch in value:
        low = ch.lower()
        out.append(low[0] if low else ch)
    return "".join(out)


def surrogate_at(text: str) -> int | None:
    """Index of the first lone surrogate (U+D800-U+DFFF) in `text`, or None.

    Such a code point is not text: it cannot be encoded as UTF-8, so no store,
    file or terminal takes it.
    """
    if text.isascii():
        return None
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            return i
    return None


def surrogate_message(text: str, at: int) -> str:
    return (
        f"invalid character U+{ord(text[at]):04X} (a lone surrogate) at character {at + 1}: "
        "it is not valid Unicode text"
    )
