"""Stored text that is not UTF-8.

personatag writes only UTF-8, but another program writing a SQLite file can
store any bytes in a TEXT column, and the driver then fails the whole read
that meets them. A read that must go on (the columnar copy, the stream's
inputs, a contact's page) is wrapped in `leniently`: it runs as usual (no
cost), and only when it meets such text it runs again with each bad byte
sequence read as U+FFFD. What reads the values decides what that means: the
columnar copy marks them (its criteria are then answered by the store, which
compares the bytes); a page shows them. PostgreSQL stores only valid text.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from personatag.store.backends.base import LENIENT
from personatag.store.db import Store

log = logging.getLogger(__name__)

REPLACEMENT = "\ufffd"

_P = ParamSpec("_P")
_T = TypeVar("_T")


def is_lenient(conn: Connection) -> bool:
    """Whether `conn` reads bad text as U+FFFD now (inside `leniently`'s retry)."""
    return bool(conn.info.get(LENIENT))


def leniently(
    read: Callable[Concatenate[Connection, Store, _P], _T],
) -> Callable[Concatenate[Connection, Store, _P], _T]:
    """`read(conn, store, ...)`, read again with bad text as U+FFFD when it
    meets stored text that is not UTF-8. `read` must only read (it runs
    twice then, in the same transaction)."""

    @functools.wraps(read)
    def wrapper(conn: Connection, store: Store, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        if is_lenient(conn):
            return read(conn, store, *args, **kwargs)
        try:
            return read(conn, store, *args, **kwargs)
        except Exception as exc:
            # SQLAlchemy wraps the driver's error; a raw cursor (store.rowwise) does not.
            orig = exc.orig if isinstance(exc, DBAPIError) else exc
            if orig is None or not store.backend.undecodable(orig):
                raise
            log.warning(
                "%s met stored text that is not UTF-8 (%s); reading it with U+FFFD "
                "in place of the bytes",
                read.__qualname__,
                str(orig).split("\n", 1)[0],
            )
        with store.backend.lenient_text(conn):
            return read(conn, store, *args, **kwargs)

    return wrapper
