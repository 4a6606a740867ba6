"""Background services: a loop of rounds with backoff on errors, a stop, a health.

The dispatcher, the stream processor and the webhook worker are services. Each
says what one round does (`cycle`, which returns how long to wait before the
next) and how a failed round is reported (`on_error`, which returns the wait
before trying again, usually `backoff(failures)`); the loop, the stop and the
thread are here once.

A service runs either in the calling thread (`loop`, for a command that does
nothing else) or in a daemon thread of its own (`start` ... `stop`, for a
process that serves something else meanwhile, such as `personatag serve`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """The wait after the n-th failure in a row: `first_s * 2**(n-1)`, at most `max_s`
    (`first_s == max_s`: a flat wait)."""

    first_s: float
    max_s: float

    def delay(self, failures: int) -> float:
        return min(self.max_s, self.first_s * 2.0 ** min(max(failures, 1) - 1, 60))


@dataclass(frozen=True)
class Health:
    """What a service says about itself (for /readyz and tests)."""

    name: str
    alive: bool
    failures: int  # failed rounds in a row (0: the last round went through)
    last_error: str | None
    last_round_at: float | None  # time.time() of the last round that went through

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "alive": self.alive,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_round_at": self.last_round_at,
        }


class Service:
    """A loop of `cycle()` until stopped. Subclasses implement `cycle` and
    usually `on_error`; `setup` and `teardown` run once around the loop (an
    error in `setup` ends the run)."""

    #: The thread's name, and the service's in health reports.
    thread_name = "service"
    #: How the log names it when its thread ends on an error.
    title = "the service"

    def __init__(self, backoff: Backoff, *, wake: threading.Event | None = None) -> None:
        """`wake`: an event that ends a wait between rounds early (set by whoever
        has work for the service); without one, only a stop does."""
        self.backoff = backoff
        self.failures = 0
        self.last_error: str | None = None
        self.last_round_at: float | None = None
        self._stop_event = threading.Event()
        self._wake_event = wake
        self._service_thread: threading.Thread | None = None
        self._looping = False

    # -- what a service does ----------------------------------------------------

    def setup(self) -> None:
        """Before the first round."""

    def cycle(self) -> float:
        """One round; returns the seconds to wait before the next (0: at once)."""
        raise NotImplementedError

    def on_error(self, exc: Exception) -> float:
        """Report a round that raised (`self.failures` counts it already);
        returns the seconds to wait before trying again."""
        log.exception("%s: round failed (attempt %d); retrying", self.thread_name, self.failures)
        return self.backoff.delay(self.failures)

    def teardown(self) -> None:
        """After the last round (also when setup or the loop raised)."""

    # -- running ------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def loop(
        self, stop: threading.Event | None = None, wake: threading.Event | None = None
    ) -> None:
        """Run rounds in the calling thread until `stop` (or `request_stop`) is set;
        `wake` replaces the service's own wake-up event."""
        if stop is not None:
            self._stop_event = stop
        if wake is not None:
            self._wake_event = wake
        self._looping = True
        try:
            self.setup()
            while not self._stop_event.is_set():
                try:
                    wait = self.cycle()
                except Exception as exc:
                    self.failures += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    wait = self.on_error(exc)
                else:
                    self.failures = 0
                    self.last_round_at = time.time()
                if wait > 0:
                    self.pause(wait)
        finally:
            self._looping = False
            self.teardown()

    def pause(self, seconds: float) -> None:
        """Wait between rounds: until the time is up, a stop, or a wake-up."""
        if self._wake_event is None:
            self._stop_event.wait(seconds)
        else:
            self._wake_event.wait(seconds)
            self._wake_event.clear()

    def start(self) -> None:
        """Run in a daemon thread; an error that ends the loop is logged there (the
        rest of the process goes on; `health()` says the service stopped)."""
        if self._service_thread is not None:
            raise RuntimeError(f"{self.thread_name} was started already")
        self._service_thread = threading.Thread(
            target=self._guarded, name=self.thread_name, daemon=True
        )
        self._service_thread.start()

    def _guarded(self) -> None:
        try:
            self.loop()
        except Exception:
            log.exception("%s stopped", self.title)

    def request_stop(self) -> None:
        """Ask the loop to end after its current round (returns at once)."""
        self._stop_event.set()
        if self._wake_event is not None:
            self._wake_event.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the loop to end and wait up to `timeout` s for its thread; True if it ended."""
        self.request_stop()
        if self._service_thread is None:
            return not self._looping
        self._service_thread.join(timeout)
        return not self._service_thread.is_alive()

    def is_alive(self) -> bool:
        """The loop runs (or its thread was started and has not ended)."""
        if self._service_thread is not None:
            return self._service_thread.is_alive()
        return self._looping

    def health(self) -> Health:
        return Health(
            self.thread_name, self.is_alive(), self.failures, self.last_error, self.last_round_at
        )


def stop_all(services: Iterable[Service], timeout: float) -> list[Service]:
    """Stop every service (all asked at once, then each waited for up to `timeout`
    s); returns those still running."""
    services = list(services)
    for service in services:
        service.request_stop()
    return [s for s in services if not s.stop(timeout)]
