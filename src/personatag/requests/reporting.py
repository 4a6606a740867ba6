"""Writing a request's result files when the results bucket may fail.

`ResultWriter.write` tries a bounded number of times with backoff and returns
the last error instead of raising: the dispatcher then records the file as
`results_failed` (see docs/requests.md) and asks again later, on a schedule
this writer keeps (in memory: a restarted dispatcher tries at once).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from personatag.buckets import Buckets
from personatag.requests.results import write_results
from personatag.store import Store
from personatag.tagging.changes import ChangesBuilder
from personatag.tagging.contact_lists import FailedRow
from personatag.tagging.outcome import reason_of

log = logging.getLogger(__name__)

# A file finished but for its result files; a later scan writes them.
RESULTS_FAILED = "results_failed"
RETRY_MAX_S = 60.0


def one_line(text: str) -> str:
    """A message for a summary or a log line: one line, whitespace runs folded."""
    return " ".join(text.split()) or "unknown error"


class ResultWriter:
    """Writes result files with bounded retries; schedules later attempts."""

    def __init__(self, store: Store, buckets: Buckets, *, attempts: int, backoff_s: float) -> None:
        self.store = store
        self.buckets = buckets
        self.attempts = max(attempts, 1)
        self.backoff_s = backoff_s
        self.closing = threading.Event()  # cuts a wait between attempts short
        self._retry_at: dict[str, tuple[float, float]] = {}  # key -> (due, interval)
        self._single = threading.local()

    @contextlib.contextmanager
    def single_attempt(self) -> Iterator[None]:
        """Within this block (on this thread) write once: a scan that tries a
        file again must not sleep through backoffs."""
        self._single.on = True
        try:
            yield
        finally:
            self._single.on = False

    def write(
        self,
        key: str,
        *,
        request_id: str,
        summary: dict[str, Any],
        failures: list[FailedRow],
        request_pk: int | None = None,
        prebuilt: ChangesBuilder | None = None,
    ) -> str | None:
        """Write the result files of request file `key` into `request_id`/,
        trying again with backoff when the results bucket (or the store behind
        changes.csv.gz) fails. None once written, else the last error in one line."""
        attempts = 1 if getattr(self._single, "on", False) else self.attempts
        delay = self.backoff_s
        error = "results could not be written"
        for attempt in range(1, attempts + 1):
            try:
                write_results(
                    self.buckets["results"],
                    self.store,
                    request_id=request_id,
                    summary=summary,
                    failures=failures,
                    request_pk=request_pk,
                    prebuilt=prebuilt,
                )
                return None
            except Exception as exc:
                error = f"results could not be written: {one_line(reason_of(exc))}"
                prebuilt = None  # its parts were taken: build them from the store again
            if attempt < attempts:
                log.warning(
                    "request file %s: %s (attempt %d of %d); trying again in %.1f s",
                    key,
                    error,
                    attempt,
                    attempts,
                    delay,
                )
                if self.closing.wait(delay):
                    break
                delay *= 2
        return error

    def due(self, key: str) -> bool:
        """Is it time to try `key`'s result files again?"""
        due, _ = self._retry_at.get(key, (0.0, 0.0))
        return time.monotonic() >= due

    def schedule(self, key: str) -> None:
        """Try `key`'s result files again later, the interval doubling each time
        up to a minute (an attempt already scheduled stays as it is)."""
        due, delay = self._retry_at.get(key, (0.0, self.backoff_s))
        if due > time.monotonic():
            return
        delay = min(delay * 2, RETRY_MAX_S)
        self._retry_at[key] = (time.monotonic() + delay, delay)

    def written(self, key: str) -> None:
        self._retry_at.pop(key, None)
