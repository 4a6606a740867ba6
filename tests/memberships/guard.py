"""One writer of memberships, checked on the SQL the suite runs.

Every statement the suite sends to a store passes through here at the driver:
SQLite's trace callback and, on PostgreSQL, a psycopg cursor class that looks
at what it executes, executes many and copies. Both sit below SQLAlchemy, so
the bulk writer's raw cursors and its COPY are seen as well as Core statements.
(A SQLAlchemy `before_cursor_execute` event would miss those raw cursors.)

A statement that writes (INSERT, UPDATE, DELETE, COPY) one of the guarded
tables is attributed to the innermost frame of personatag (outside the store
package, whose helpers only run what they are handed) or of the tests. Unless
that frame is in personatag.memberships, or the write is wrapped in
`outside_writes()` (a test that deliberately simulates drift or a concurrent
writer), it is recorded as a violation; tests/conftest.py fails the test that
saw one.
"""

from __future__ import annotations

import re
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool import Pool

# `memberships` is a view now; its INSTEAD OF triggers write the two tables.
GUARDED = (
    "membership_rows",
    "membership_grants",
    "memberships",
    "pins",
    "membership_log",
    "membership_log_members",
)
OWNER = "personatag.memberships"

_WRITE = re.compile(
    r"\b(INSERT\s+(?:OR\s+\w+\s+)?INTO|DELETE\s+FROM|UPDATE(?:\s+ONLY)?|COPY)\s+"
    r"(?:\"?\w+\"?\.)?\"?(" + "|".join(GUARDED) + r")\b\"?(?!\w)",
    re.IGNORECASE,
)


_DDL = re.compile(r"\s*CREATE\b", re.IGNORECASE)
# Schema migrations move rows between the tables they reshape.
MIGRATIONS = "personatag.store.migrations"
_MIGRATION_FILES = "/personatag/store/migrations/versions/"


@dataclass(frozen=True)
class Violation:
    table: str
    verb: str
    writer: str  # module:function:line of the frame the write is attributed to
    statement: str

    def __str__(self) -> str:
        return f"{self.verb} {self.table} from {self.writer}: {self.statement[:160]}"


class _State(threading.local):
    allowed = 0


_state = _State()
_lock = threading.Lock()
_violations: list[Violation] = []
# (table, verb, writer module) -> statements seen, for tests that check coverage
seen: Counter[tuple[str, str, str]] = Counter()


@contextmanager
def outside_writes() -> Iterator[None]:
    """Writes in this block (this thread) are a test's own on purpose."""
    _state.allowed += 1
    try:
        yield
    finally:
        _state.allowed -= 1


def take() -> list[Violation]:
    """The violations recorded since the last call (and forget them)."""
    with _lock:
        found = list(_violations)
        _violations.clear()
    return found


def _writer(frame: FrameType | None) -> tuple[str, str]:
    """(module, "module:function:line") of the innermost attributable frame."""
    while frame is not None:
        name = str(frame.f_globals.get("__name__", ""))
        if _MIGRATION_FILES in frame.f_code.co_filename:
            # Alembic loads a migration under a name of its own.
            return MIGRATIONS, f"{MIGRATIONS}:{frame.f_code.co_name}:{frame.f_lineno}"
        if name != __name__ and (
            (name.startswith("personatag.") and not name.startswith("personatag.store"))
            or name.startswith("tests.")
            or name == "personatag"
        ):
            return name, f"{name}:{frame.f_code.co_name}:{frame.f_lineno}"
        frame = frame.f_back
    return "?", "? (no personatag or test frame on the stack)"


def check(statement: str) -> None:
    """Look at one statement about to run on a store."""
    match = _WRITE.search(statement)
    if match is None or _DDL.match(statement):
        return  # a view's trigger or function defined, not run
    verb = match.group(1).split()[0].upper()
    table = match.group(2).lower()
    module, where = _writer(sys._getframe(1))
    with _lock:
        seen[(table, verb, module)] += 1
        owner = module == OWNER or module.startswith((OWNER + ".", MIGRATIONS))
        if owner or _state.allowed:
            return
        _violations.append(Violation(table, verb, where, " ".join(statement.split())))


def _text(query: Any, cursor: Any) -> str:
    if isinstance(query, bytes):
        return query.decode("utf-8", "replace")
    if isinstance(query, str):
        return query
    return str(query.as_string(cursor))  # a psycopg.sql.Composable


def _guarded_cursor_class() -> type | None:
    try:
        import psycopg
    except ImportError:  # PostgreSQL is not installed: nothing to guard there
        return None

    class GuardedCursor(psycopg.Cursor):  # type: ignore[type-arg]
        def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
            check(_text(query, self))
            return super().execute(query, params, **kw)

        def executemany(self, query: Any, params_seq: Any, **kw: Any) -> Any:
            check(_text(query, self))
            return super().executemany(query, params_seq, **kw)

        def copy(self, statement: Any, params: Any = None, **kw: Any) -> Any:
            check(_text(statement, self))
            return super().copy(statement, params, **kw)

    return GuardedCursor


_installed = False


def install() -> None:
    """Watch every DBAPI connection any store opens from now on (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    cursor_class = _guarded_cursor_class()

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        if isinstance(dbapi_conn, sqlite3.Connection):
            # Called for every statement SQLite runs, in the thread running it.
            dbapi_conn.set_trace_callback(check)
        elif cursor_class is not None and hasattr(dbapi_conn, "cursor_factory"):
            dbapi_conn.cursor_factory = cursor_class

    event.listen(Pool, "connect", on_connect)
