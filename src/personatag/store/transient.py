"""Store errors worth a second try: the same transaction, run again, may pass.

A dropped connection (the server restarted, an administrator ended the
session), a serialization failure, a deadlock, or SQLite's busy lock say
nothing about the work itself: its transaction rolled back, and running it
again on a fresh connection can succeed. Everything else (a constraint, bad
SQL, a missing table) fails the same way again and is not retried.

Which driver errors mean what differs between SQLite and PostgreSQL; each
backend holds its table of them, as data (store/backends/).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, PendingRollbackError

from personatag.store.backends import backend_names, get_backend
from personatag.store.backends.base import BUSY, CONNECTION_LOST, DEADLOCK, SERIALIZATION

__all__ = ["BUSY", "CONNECTION_LOST", "DEADLOCK", "SERIALIZATION", "Transient", "transient"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transient:
    """A store error that may pass on a second try: `kind` is one of the kinds
    above, `message` the driver's first line."""

    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}" if self.message else self.kind


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not s for s in seen):
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _first_line(orig: Any) -> str:
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


def _is_consequence(exc: BaseException) -> bool:
    if isinstance(exc, PendingRollbackError):
        return True
    orig = getattr(exc, "orig", None)
    return orig is not None and any(get_backend(n).is_consequence(orig) for n in backend_names())


def root_error(exc: BaseException) -> BaseException:
    """The store error that started it: PostgreSQL answers every statement
    after a failed one with "current transaction is aborted", and SQLAlchemy a
    connection whose transaction failed with PendingRollbackError; those hide
    the real failure, which is earlier in the exception's chain."""
    chain = _chain(exc)
    if not _is_consequence(chain[0]):
        return chain[0]
    for earlier in chain[1:]:
        if isinstance(earlier, DBAPIError) and not _is_consequence(earlier):
            return earlier
    return chain[0]


def _classify(err: BaseException) -> Transient | None:
    if not isinstance(err, DBAPIError):
        return None
    orig = err.orig
    message = _first_line(orig)
    if orig is not None:
        for name in backend_names():
            kind = get_backend(name).transient_kind(orig)
            if kind is not None:
                return Transient(kind, message)
    if err.connection_invalidated:
        return Transient(CONNECTION_LOST, message)
    return None


def transient(exc: BaseException) -> Transient | None:
    """What makes `exc` transient (looking past the errors that only follow
    an earlier failure), or None when running the work again would not help."""
    found = _classify(root_error(exc))
    if found is not None:
        return found
    for err in _chain(exc):
        found = _classify(err)
        if found is not None:
            return found
    return None


def describe(exc: BaseException) -> str:
    """One line for people about a store error: the real cause, named."""
    found = transient(exc)
    if found is not None:
        return f"the store failed ({found.kind}): {found.message}"
    root = root_error(exc)
    if isinstance(root, DBAPIError):
        return f"the store failed: {_first_line(root.orig)}"
    return f"{type(root).__name__}: {root}"


T = TypeVar("T")

#: How often a unit of work runs at most when the store fails transiently,
#: and the first pause between tries (doubled each time, at most MAX_DELAY_S):
#: 7.75 s of pauses in all, about what a PostgreSQL restart takes.
ATTEMPTS = 6
FIRST_DELAY_S = 0.25
MAX_DELAY_S = 8.0


def retrying(
    work: Callable[[int], T],
    *,
    what: str,
    attempts: int = ATTEMPTS,
    first_delay_s: float = FIRST_DELAY_S,
    wait: Callable[[float], object] = time.sleep,
    give_up: Callable[[], bool] = lambda: False,
) -> T:
    """work(attempt) (attempt counts from 1), run again while it fails with a
    transient store error, at most `attempts` times, pausing with backoff.

    `work` must be one unit that is safe to run again: a transaction that
    either committed or rolled back. `give_up()` is asked before each pause
    (a job that was cancelled stops retrying). The last error is raised.
    """
    delay = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return work(attempt)
        except Exception as exc:
            cause = transient(exc)
            if cause is None or attempt == attempts or give_up():
                raise
            log.warning(
                "%s: the store failed (%s); trying again in %.2f s (attempt %d of %d)",
                what,
                cause,
                delay,
                attempt + 1,
                attempts,
            )
        wait(delay)
        delay = min(delay * 2, MAX_DELAY_S)
    raise AssertionError("unreachable")  # pragma: no cover
