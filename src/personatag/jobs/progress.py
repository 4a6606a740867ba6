"""A running job's progress figure: what it does now and, where an honest count
exists, how far it is. Stored as JSON in `jobs.progress`:

    {"phase": "applying", "done": 1, "total": 3, "unit": "items",
     "updated_at": "2026-06-30T12:00:01.250000Z"}

Phases, in the order a job goes through them:

- `evaluating`: the engine computes the matches of the request's criterion
  items (`done`/`total` in `items`; while a Flink job runs, its `tasks`).
  The local engine does its work in the next phase, so this one is short.
- `applying`: one transaction applies every item and commits the outcome
  (`items`; on SQLite only the total, see `in_transaction`).
- `writing results`: the result files of a request file (no count).
- `done`: the job succeeded and everything it reports is written.

`done`, `total` and `unit` are null when nothing can be counted; a figure is
never estimated. A job that fails or is cancelled keeps the progress it had
when it stopped, which tells where it stopped; a queued job has none.

Writes are cheap and best effort: one small UPDATE per phase, counts at most
once per `every_s`, and a write that fails or would wait for a lock is logged,
retried later and never fails the job.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, update

from personatag.domain import JobStatus, utcnow
from personatag.store import Store
from personatag.times import iso

log = logging.getLogger(__name__)

EVALUATING, APPLYING, WRITING_RESULTS, DONE = ("evaluating", "applying", "writing results", "done")
PHASES = (EVALUATING, APPLYING, WRITING_RESULTS, DONE)

#: report(done, total, unit): a count of work done on another thread (an engine).
Report = Callable[[int | None, int | None, str | None], None]


def figure(
    phase: str, done: int | None = None, total: int | None = None, unit: str | None = None
) -> dict[str, Any]:
    """A progress figure as `jobs.progress` stores it, taken now."""
    return {
        "phase": phase,
        "done": done,
        "total": total,
        "unit": unit,
        "updated_at": iso(utcnow()),
    }


class Progress:
    """Writes one job's progress to its `jobs` row; callable from any thread.

    `written`: the figure the job's row already holds (written when the job
    was recorded), which is the first phase.
    """

    def __init__(
        self,
        store: Store,
        job_pk: int,
        *,
        every_s: float = 1.0,
        wait_s: float = 0.5,
        written: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.job_pk = job_pk
        self.every_s = every_s
        self.wait_s = wait_s  # the longest a write waits for a lock before it is retried
        self._lock = threading.Lock()  # guards the fields below
        self._writing = threading.Lock()  # one write at a time, so they land in order
        self._figure: dict[str, Any] | None = None
        self._phase_no = 0  # counts phases: a report for an earlier one is dropped
        self._version = 0  # counts changes of the figure
        self._written = 0  # the version last written
        self._written_at = -math.inf
        self._timer: threading.Timer | None = None
        self._held = False  # the job's own transaction holds the only write lock
        self._closed = False
        self._warned = False
        if written is not None:
            self._figure = written
            self._phase_no = self._version = self._written = 1
            self._written_at = time.monotonic()

    def phase(
        self,
        name: str,
        *,
        done: int | None = None,
        total: int | None = None,
        unit: str | None = None,
    ) -> None:
        """Enter phase `name` (one of PHASES); written at once."""
        with self._lock:
            if self._closed:
                return
            self._phase_no += 1
            self._set(name, done, total, unit)
        self._flush()

    def phase_in(
        self,
        conn: Connection,
        name: str,
        *,
        done: int | None = None,
        total: int | None = None,
        unit: str | None = None,
    ) -> None:
        """Enter phase `name`, written in the caller's write transaction `conn`
        rather than one of its own: it commits with what that transaction
        records (the job's start, its outcome), or not at all."""
        jobs = self.store.tables.jobs
        with self._writing:
            with self._lock:
                if self._closed:
                    return
                self._phase_no += 1
                self._set(name, done, total, unit)
                figure, version = self._figure, self._version
            conn.execute(
                update(jobs).where(jobs.c.pk == self.job_pk).values(progress=json.dumps(figure))
            )
            with self._lock:
                self._written = max(self._written, version)
                self._written_at = time.monotonic()

    def count(self, done: int | None, total: int | None, unit: str | None) -> None:
        """How far the current phase is; written at most once per `every_s`."""
        self._count(done, total, unit, None)

    def reporter(self) -> Report:
        """A count callback for the current phase, for work on other threads (an
        engine): it is ignored once the job has moved on to another phase."""
        with self._lock:
            phase_no = self._phase_no

        def report(done: int | None, total: int | None, unit: str | None) -> None:
            self._count(done, total, unit, phase_no)

        return report

    @contextmanager
    def in_transaction(
        self, name: str, *, total: int, unit: str, holds_write_lock: bool
    ) -> Iterator[Callable[[int], None]]:
        """Enter phase `name` for work inside the job's own transaction (opened
        within this block); yields step(done). When that transaction holds a
        single-writer store's only write lock (SQLite), no count could be
        written until it ends, so the phase shows its total and no count."""
        if not (holds_write_lock and self.store.one_writer):
            self.phase(name, done=0, total=total, unit=unit)
            yield lambda done: self.count(done, total, unit)
            return
        self.phase(name, total=total, unit=unit)
        with self._lock:
            self._held = True
        try:
            yield lambda done: None
        finally:
            with self._lock:
                self._held = False

    def close(self) -> None:
        """The job ended: write the newest figure if it is not written yet (one
        last try), then nothing more."""
        self._cancel_timer()
        self._flush()
        with self._lock:
            self._closed = True
        self._cancel_timer()  # the retry of a last try that failed

    def _cancel_timer(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    # -- internals ------------------------------------------------------------

    def _set(self, phase: str, done: int | None, total: int | None, unit: str | None) -> None:
        self._figure = figure(phase, done, total, unit)
        self._version += 1

    def _count(
        self, done: int | None, total: int | None, unit: str | None, phase_no: int | None
    ) -> None:
        with self._lock:
            figure = self._figure
            if self._closed or figure is None:
                return
            if phase_no is not None and phase_no != self._phase_no:
                return
            if (figure["done"], figure["total"], figure["unit"]) == (done, total, unit):
                return
            self._set(figure["phase"], done, total, unit)
            if self._held:
                return
            wait = self._written_at + self.every_s - time.monotonic()
            if wait > 0:
                self._schedule(wait)
                return
        self._flush()

    def _schedule(self, delay: float) -> None:
        """Write the newest figure after `delay` seconds (called with _lock held)."""
        if self._timer is not None or self._closed:
            return
        timer = threading.Timer(delay, self._due)
        timer.daemon = True
        self._timer = timer
        timer.start()

    def _due(self) -> None:
        with self._lock:
            self._timer = None
        self._flush()

    def _flush(self) -> None:
        with self._writing:
            with self._lock:
                if self._closed or self._held or self._figure is None:
                    return
                if self._version == self._written:
                    return
                figure, version = self._figure, self._version
            jobs = self.store.tables.jobs
            try:
                with self.store.write_briefly(self.wait_s) as conn:
                    conn.execute(
                        update(jobs)
                        .where(jobs.c.pk == self.job_pk)
                        .values(progress=json.dumps(figure))
                    )
            except Exception as exc:  # the store is busy or down: the job goes on
                with self._lock:
                    warned, self._warned = self._warned, True
                    self._schedule(max(self.every_s, self.wait_s))
                log.log(
                    logging.DEBUG if warned else logging.WARNING,
                    "progress of job %s not recorded (%s); the job goes on",
                    self.job_pk,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                )
                return
            with self._lock:
                self._written = max(self._written, version)
                self._written_at = time.monotonic()


def describe(progress: dict[str, Any] | None, status: str) -> str:
    """One line for people: `applying 1/3 items`, `evaluating`, `stopped while
    applying 1/3 items` (a failed or cancelled job); "" when there is none."""
    if not progress:
        return ""
    phase = str(progress.get("phase") or "")
    done, total, unit = progress.get("done"), progress.get("total"), progress.get("unit")
    text = phase
    if done is not None and total is not None:
        text += f" {done:,}/{total:,}"
    elif total is not None:
        text += f" {total:,}"
    elif done is not None:
        text += f" {done:,}"
    count = total if total is not None else done
    if unit and count is not None:
        text += f" {unit[:-1] if count == 1 and unit.endswith('s') else unit}"
    if status in (JobStatus.FAILED, JobStatus.CANCELLED) and phase != DONE:
        return f"stopped while {text}"
    return text
