"""Deadlines and cancellation for a running job, down to the SQL statement.

A statement can run for seconds on 10M contacts; checking a flag between
statements is not enough. A watcher thread interrupts the job's database
connection (sqlite3 `interrupt()`, PostgreSQL query cancel) when the deadline
passes or someone cancels, and the job ends `failed` or `cancelled` with a
clear reason; the transaction rolls back, so nothing is half-applied.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection

from personatag.domain import JobStatus
from personatag.errors import PersonatagError


class JobStopped(PersonatagError):
    """The job was stopped before it finished: `status` is failed or cancelled."""

    def __init__(self, status: JobStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class JobControl:
    """A job's deadline (seconds from start) and cancel flag."""

    def __init__(self, deadline_s: float | None = None) -> None:
        self.deadline_s = deadline_s
        self.started = time.monotonic()
        self.cancel_event = threading.Event()
        self.stopping = False  # the dispatcher shuts down: stop, but as a failure to retry

    @property
    def expires(self) -> float | None:
        return None if self.deadline_s is None else self.started + self.deadline_s

    def cancel(self) -> None:
        self.cancel_event.set()

    def shutdown(self) -> None:
        """Stop for a dispatcher shutdown: the job fails and its file runs again."""
        self.stopping = True
        self.cancel_event.set()

    def stopped(self) -> JobStopped | None:
        if self.cancel_event.is_set():
            if self.stopping:
                return JobStopped(
                    JobStatus.FAILED, "the dispatcher stopped; the request runs again"
                )
            return JobStopped(JobStatus.CANCELLED, "cancelled")
        expires = self.expires
        if expires is not None and time.monotonic() >= expires:
            return JobStopped(JobStatus.FAILED, f"deadline of {self.deadline_s:g} s exceeded")
        return None

    def check(self) -> None:
        """Raise JobStopped if the job must stop now."""
        stop = self.stopped()
        if stop is not None:
            raise stop

    @contextmanager
    def guard(self, conn: Connection) -> Iterator[None]:
        """Interrupt `conn`'s running statement when the job must stop."""
        done = threading.Event()
        fired: list[JobStopped] = []
        raw: Any = conn.connection.dbapi_connection

        def watch() -> None:
            while not done.wait(0.1):
                stop = self.stopped()
                if stop is not None:
                    fired.append(stop)
                    _interrupt(raw)
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            yield
        except Exception:
            if fired:
                raise fired[0] from None
            raise
        finally:
            done.set()
            watcher.join()
        if fired:  # interrupted between statements: still stop
            raise fired[0]


def _interrupt(raw: Any) -> None:
    if hasattr(raw, "interrupt"):  # sqlite3
        raw.interrupt()
    elif hasattr(raw, "cancel_safe"):  # psycopg >= 3.2
        raw.cancel_safe()
    elif hasattr(raw, "cancel"):
        raw.cancel()
