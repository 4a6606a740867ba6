"""The stream's partitions as processes (see partitions.py): `Partitions`, the
service `personatag stream --partitions N` and `serve` run, starts one process
per partition and starts a dead one again; `catch_up_all` steps them in turn
in one process (`stream --once`)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from typing import Any

from personatag.config import Settings
from personatag.engines.local.stream.forward import Forwarding, Gathered
from personatag.engines.local.stream.partitions import align, check
from personatag.engines.local.stream.processor import StepResult, StreamProcessor
from personatag.engines.local.stream.standby import STANDBY_POLL_S, Ownership
from personatag.engines.local.stream.status import OFFSET_NAME
from personatag.logs import logging_json
from personatag.metrics import Metrics, default_metrics
from personatag.service import Backoff, Service
from personatag.store import Store

log = logging.getLogger(__name__)

# How often the service looks at its processes.
WATCH_S = 0.5
# A partition that ends by itself (not killed by a signal) this soon after its
# start waits before it is started again (1 s, doubling up to WATCH_MAX_S), so a
# process that cannot start does not spin; one killed is started at once.
QUICK_DEATH_S = 10.0
WATCH_MAX_S = 30.0


def catch_up_all(store: Store, settings: Settings, timeout_s: float) -> Any:
    """Every partition through the feed in turn, in this process (`stream --once`);
    the caller holds the stream's lease. Returns the summed StepResult."""
    n = check(settings, store)
    align(store, OFFSET_NAME, n)
    total = StepResult()
    for p in range(n):
        part = None if n == 1 else (p, n)
        done = StreamProcessor(store, settings, partition=part).catch_up(timeout_s=timeout_s)
        total.changes = max(total.changes, done.changes)  # each reads the whole feed
        total.entered += done.entered
        total.exited += done.exited
        total.rechecks += done.rechecks
        total.errors += done.errors
        total.lifecycle += done.lifecycle
        total.offset = done.offset if p == 0 else min(total.offset, done.offset)
    return total


def run_partition(
    url: str,
    settings: Settings,
    p: int,
    n: int,
    level: int,
    log_json: bool,
    send: Any = None,
) -> None:
    """A partition's process: step its contacts' feed until SIGTERM/SIGINT, or
    until the process that started it is gone. Its metrics go to `send` (a
    pipe's end) every WATCH_S (forward.py)."""
    from personatag.logs import configure_logging
    from personatag.store import open_store

    configure_logging(level, json=log_json)
    parent = os.getppid()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    store = open_store(url)
    metrics = Forwarding() if send is not None else None
    proc = StreamProcessor(store, settings, metrics, partition=(p, n))
    proc.start()
    try:
        while not stop.wait(WATCH_S):
            if os.getppid() != parent or not _forward(metrics, send):
                log.warning("partition %d of %d: its supervisor is gone; stopping", p, n)
                break
            if not proc.is_alive():
                raise SystemExit(1)
    finally:
        proc.stop(30)
        _forward(metrics, send)
        store.dispose()


def _forward(metrics: Forwarding | None, send: Any) -> bool:
    """Send what `metrics` recorded since the last time; False when the
    supervisor's end of the pipe is gone."""
    if metrics is None:
        return True
    calls = metrics.drain()
    if not calls:
        return True
    try:
        send.send(calls)
    except OSError:  # BrokenPipeError: the supervisor is gone
        return False
    return True


class _Child:
    """One partition's process, as the service last started it."""

    def __init__(self, p: int) -> None:
        self.p = p
        self.process: Any = None
        self.started_at = 0.0
        self.restarts = 0
        self.quick_deaths = 0
        self.not_before = 0.0
        self.conn: Any = None  # the pipe its metrics come through (forward.py)


class Partitions(Service):
    """`stream_partitions` processes of the local stream processor (see the module
    doc), supervised: each started at once, a dead one started again."""

    thread_name = "stream-partitions"
    title = "the stream partitions"

    def __init__(
        self, store: Store, settings: Settings | None = None, metrics: Metrics | None = None
    ) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.metrics = metrics
        self.n = check(self.settings, store)
        self.base = OFFSET_NAME
        Service.__init__(self, Backoff(first_s=1.0, max_s=30.0))
        self._ownership = Ownership(store, self.base)
        self._children = [_Child(p) for p in range(self.n)]
        self._ctx = mp.get_context("spawn")
        self._url = store.engine.url.render_as_string(hide_password=False)
        self._level = logging.getLogger("personatag").getEffectiveLevel()
        self._log_json = logging_json()
        self._aligned = False
        self._gathered = Gathered(metrics or default_metrics())

    @property
    def restarts(self) -> dict[int, int]:
        """How often each partition was started again after it died."""
        return {c.p: c.restarts for c in self._children}

    def pids(self) -> dict[int, int | None]:
        """Each partition's process id (None: not running)."""
        return {
            c.p: (c.process.pid if c.process is not None and c.process.is_alive() else None)
            for c in self._children
        }

    def setup(self) -> None:
        log.info("stream: %d partitions of the local processor", self.n)

    def cycle(self) -> float:
        if not self._ownership.acquire():
            self._stop_children()
            self._aligned = False
            return STANDBY_POLL_S
        if not self._aligned:
            align(self.store, self.base, self.n)
            self._aligned = True
        now = time.monotonic()
        for child in self._children:
            self._gather(child)
            proc = child.process
            if proc is not None and proc.is_alive():
                continue
            if proc is not None:  # it died: say so, then start it again
                self._gone(child)
                self._gathered.metrics.record_stream_partition_restart(child.p)
                lived = now - child.started_at
                log.warning(
                    "stream partition %d of %d (pid %s) ended with exit code %s after %.1f s; "
                    "starting it again",
                    child.p,
                    self.n,
                    proc.pid,
                    proc.exitcode,
                    lived,
                )
                child.process = None
                child.restarts += 1
                if lived < QUICK_DEATH_S and (proc.exitcode or 0) >= 0:
                    child.quick_deaths += 1
                    delay = min(WATCH_MAX_S, 2.0 ** (child.quick_deaths - 1))
                    child.not_before = now + delay
                else:
                    child.quick_deaths = 0
            if now < child.not_before:
                continue
            self._start(child)
        return WATCH_S

    def _start(self, child: _Child) -> None:
        receive, send = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=run_partition,
            args=(self._url, self.settings, child.p, self.n, self._level, self._log_json, send),
            name=f"personatag-stream-p{child.p}of{self.n}",
            daemon=False,
        )
        try:
            proc.start()
        except BaseException:
            receive.close()
            raise
        finally:
            send.close()  # the child's now: its end closes when it ends
        child.process = proc
        child.conn = receive
        child.started_at = time.monotonic()
        self._gathered.metrics.set_stream_partition(child.p, up=True)
        log.info("stream partition %d of %d started (pid %s)", child.p, self.n, proc.pid)

    def _gather(self, child: _Child) -> None:
        """Replay the metrics `child` sent since the last look."""
        conn = child.conn
        if conn is None:
            return
        try:
            while conn.poll():
                self._gathered.replay(child.p, conn.recv())
        except (EOFError, OSError):  # it ended: nothing more comes
            conn.close()
            child.conn = None
        except Exception:  # metrics must not stop the supervision
            log.exception("stream partition %d: its metrics could not be read", child.p)

    def _gone(self, child: _Child) -> None:
        """`child`'s process ended: the last of its metrics, and it is down."""
        self._gather(child)
        if child.conn is not None:
            child.conn.close()
            child.conn = None
        self._gathered.forget(child.p)
        self._gathered.metrics.set_stream_partition(child.p, up=False)

    def _stop_children(self, timeout_s: float = 30.0) -> None:
        running = [c for c in self._children if c.process is not None]
        for c in running:
            if c.process.is_alive():
                c.process.terminate()  # SIGTERM: the step in hand commits or is dropped
        deadline = time.monotonic() + timeout_s
        # Their metrics are read meanwhile: one blocked writing to its pipe
        # would not end.
        while time.monotonic() < deadline and any(c.process.is_alive() for c in running):
            for c in running:
                self._gather(c)
                c.process.join(0.05)
        for c in running:
            if c.process.is_alive():
                log.warning("stream partition %d did not stop in time; killing it", c.p)
                c.process.kill()
                c.process.join(5)
            self._gone(c)
            c.process = None

    def on_error(self, exc: Exception) -> float:
        log.warning("stream partitions: %s (attempt %d); retrying", exc, self.failures)
        return self.backoff.delay(self.failures)

    def teardown(self) -> None:
        self._stop_children()
        self._ownership.release()
        log.info("stream partitions stopped")
