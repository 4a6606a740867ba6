"""The Service base: rounds, backoff on errors, stop, health."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from personatag.service import Backoff, Service, stop_all


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.01)


NO_WAIT = Backoff(0.0, 0.0)


class Scripted(Service):
    """Runs `script` one item per round: a number is the wait it returns, an
    exception is raised; then waits `idle_s` per round."""

    thread_name = "scripted"
    title = "the scripted service"

    def __init__(
        self,
        script: list[float | Exception],
        *,
        backoff: Backoff = NO_WAIT,
        idle_s: float = 0.01,
        wake: threading.Event | None = None,
        fail_setup: bool = False,
    ) -> None:
        super().__init__(backoff, wake=wake)
        self.script = list(script)
        self.idle_s = idle_s
        self.fail_setup = fail_setup
        self.rounds = 0
        self.errors: list[tuple[str, int]] = []
        self.waits: list[float] = []
        self.torn_down = False

    def setup(self) -> None:
        if self.fail_setup:
            raise RuntimeError("no store")

    def cycle(self) -> float:
        self.rounds += 1
        item = self.script.pop(0) if self.script else self.idle_s
        if isinstance(item, Exception):
            raise item
        return item

    def on_error(self, exc: Exception) -> float:
        self.errors.append((str(exc), self.failures))
        return super().on_error(exc)

    def pause(self, seconds: float) -> None:
        self.waits.append(seconds)
        super().pause(seconds)

    def teardown(self) -> None:
        self.torn_down = True


def test_backoff_doubles_up_to_its_cap() -> None:
    b = Backoff(first_s=1.0, max_s=30.0)
    assert [b.delay(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert b.delay(10_000) == 30.0
    flat = Backoff(0.5, 0.5)
    assert {flat.delay(n) for n in (1, 2, 50)} == {0.5}


def test_a_failing_round_backs_off_and_a_good_one_resets(caplog: pytest.LogCaptureFixture) -> None:
    boom = RuntimeError("boom")
    s = Scripted([boom, boom, boom, 0.0, boom], backoff=Backoff(0.001, 0.004))
    s.start()
    wait_for(lambda: s.rounds >= 6, "six rounds")
    assert s.stop(5)
    # Failures count in a row, the wait doubles up to its cap, a good round resets it.
    assert s.errors[:4] == [("boom", 1), ("boom", 2), ("boom", 3), ("boom", 1)]
    assert s.waits[:3] == [0.001, 0.002, 0.004]
    assert s.failures == 0 and s.last_error == "RuntimeError: boom"
    assert s.torn_down
    assert len([r for r in caplog.records if "round failed" in r.getMessage()]) == 4


def test_start_stop_and_health() -> None:
    s = Scripted([])
    assert not s.is_alive() and not s.health().alive
    s.start()
    wait_for(lambda: s.rounds >= 2, "two rounds")
    h = s.health()
    assert h.alive and h.name == "scripted" and h.failures == 0 and h.last_round_at is not None
    assert h.to_json()["alive"] is True
    with pytest.raises(RuntimeError, match="started already"):
        s.start()
    assert s.stop(5)
    assert not s.is_alive() and not s.health().alive and s.torn_down


def test_a_stop_ends_a_long_wait_at_once() -> None:
    s = Scripted([3600.0])
    s.start()
    wait_for(lambda: s.waits == [3600.0], "the long wait")
    started = time.monotonic()
    assert s.stop(5)
    assert time.monotonic() - started < 5


def test_a_wake_up_ends_a_wait_and_a_stop_sets_it() -> None:
    wake = threading.Event()
    s = Scripted([3600.0, 3600.0], wake=wake)
    s.start()
    wait_for(lambda: s.waits == [3600.0], "the first wait")
    wake.set()
    wait_for(lambda: s.waits == [3600.0, 3600.0], "the second round after a wake-up")
    assert s.stop(5)  # a stop wakes the wait too


def test_loop_runs_in_the_calling_thread_until_its_event() -> None:
    stop = threading.Event()
    s = Scripted([])
    runner = threading.Thread(target=s.loop, args=(stop,))
    runner.start()
    wait_for(lambda: s.rounds >= 2, "two rounds")
    assert s.is_alive()
    stop.set()
    runner.join(5)
    assert not runner.is_alive() and not s.is_alive() and s.torn_down


def test_an_error_outside_the_rounds_ends_the_thread_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="personatag.service")
    s = Scripted([], fail_setup=True)
    s.start()
    wait_for(lambda: not s.is_alive(), "the thread's end")
    assert s.torn_down and s.rounds == 0
    assert "the scripted service stopped" in caplog.text
    assert not s.health().alive


def test_stop_all_asks_every_service_and_names_the_stragglers() -> None:
    class Stuck(Scripted):
        def __init__(self) -> None:
            super().__init__([])
            self.release = threading.Event()

        def cycle(self) -> float:
            self.rounds += 1
            self.release.wait(10)
            return 0.0

    quick, stuck = Scripted([3600.0]), Stuck()
    for s in (quick, stuck):
        s.start()
    wait_for(lambda: quick.rounds and stuck.rounds, "both running")
    assert stop_all([quick, stuck], 0.2) == [stuck]
    assert not quick.is_alive() and stuck.is_alive()
    stuck.release.set()
    assert stuck.stop(5)
