"""Partitions: the stream processor split by contact over N processes.

Contacts are hashed into N partitions (`contact pk % N`, the setting
`stream_partitions`). Partition p's processor evaluates only the changes and
due re-checks of its own contacts and keeps its own offset (`stream.p<p>of<N>`),
so N processes share the feed's work. Each commits its membership diffs, its
re-checks and its offset in one transaction, as a single processor does, so
every partition applies each change exactly once across crashes. On
PostgreSQL the partitions commit side by side; on SQLite their commits take
turns on the database's one write lock (evaluation, most of a step, still runs
in parallel).

What is not one contact's runs in partition 0 only: a new criterion's backfill
and swap, reconciliation and the pruning of unused grants. A swap catches the
new criterion up on every change any partition has applied and commits under
the stream's criteria lock, taken exclusive; each partition's commit takes it
shared and checks, under it, that the criteria it evaluated are still the
active ones (else the step is done again with the new ones). So no partition
commits a batch evaluated without a criterion swapped in before it.

Offsets: a processor evaluates against the store as it is, so a change applied
twice moves nothing the second time. When N changes, every offset of the new
layout starts at the least offset of the old one (`align`), under the stream's
own lease, which a single processor holds too: a single and a partitioned
processor never run on one store at once.

`Partitions` (a service) runs them for `personatag stream` and `serve`: one
process per partition, started again when it dies.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from typing import Any

from sqlalchemy import Connection, or_, select

from personatag.config import Settings
from personatag.errors import PersonatagError
from personatag.metrics import Metrics
from personatag.service import Backoff, Service
from personatag.store import Store, changefeed

log = logging.getLogger(__name__)

# How often the service looks at its processes.
WATCH_S = 0.5
# A partition that ends by itself (not killed by a signal) this soon after its
# start waits before it is started again (1 s, doubling up to WATCH_MAX_S), so a
# process that cannot start does not spin; one killed is started at once.
QUICK_DEATH_S = 10.0
WATCH_MAX_S = 30.0


def partition_name(base: str, p: int, n: int) -> str:
    """The offset (and lease) name of partition `p` of `n` of stream `base`."""
    return f"{base}.p{p}of{n}"


def names(base: str, n: int) -> list[str]:
    """The offset names of stream `base` split into `n` partitions (`base` when 1)."""
    return [base] if n == 1 else [partition_name(base, p, n) for p in range(n)]


def number(name: str) -> int:
    """The partition number in an offset name (0 for an unpartitioned one)."""
    head, _, tail = name.rpartition(".p")
    number, _, _ = tail.partition("of")
    return int(number) if head and number.isdigit() else 0


def family(conn: Connection, store: Store, base: str) -> dict[str, int]:
    """Every stored offset of stream `base`, whatever its partitions, by name."""
    so = store.tables.stream_offsets
    rows = conn.execute(
        select(so.c.name, so.c.seq).where(or_(so.c.name == base, so.c.name.like(f"{base}.p%of%")))
    ).all()
    return {str(name): int(seq) for name, seq in rows}


def layout(offsets: dict[str, int], base: str, n: int) -> dict[str, int]:
    """The offsets of `n` partitions of `base` among `offsets` (those stored)."""
    return {name: offsets[name] for name in names(base, n) if name in offsets}


def align(store: Store, base: str, n: int) -> dict[str, int]:
    """Give each of `n` partitions of stream `base` an offset: kept when this
    layout has them all, else the least of the layout found (a processor
    applies again, harmlessly, what a partition further on had applied).
    Offsets of other layouts are removed. The caller holds the stream's lease."""
    wanted = names(base, n)
    with store.write() as conn:
        found = family(conn, store, base)
        mine = layout(found, base, n)
        if len(mine) != len(wanted):
            start = min(found.values(), default=0)
            for name in wanted:
                changefeed.set_offset(conn, store, name, start)
            if found:
                log.info(
                    "stream offsets %s start at feed seq %d, the least of those before (%s)",
                    ", ".join(wanted),
                    start,
                    ", ".join(sorted(found)),
                )
        stale = [name for name in found if name not in wanted]
        if stale:
            so = store.tables.stream_offsets
            conn.execute(so.delete().where(so.c.name.in_(stale)))
        return layout(family(conn, store, base), base, n)


def least(conn: Connection, store: Store, base: str) -> int:
    """The offset up to which every partition of stream `base` has applied the feed."""
    return min(family(conn, store, base).values(), default=0)


def furthest(conn: Connection, store: Store, base: str) -> int:
    """The offset up to which some partition of stream `base` has applied the feed."""
    return max(family(conn, store, base).values(), default=0)


def check(settings: Settings, store: Store) -> int:
    """The partitions to run (the setting), or a clear error when they cannot run."""
    n = settings.stream_partitions
    if n > 1 and settings.stream_engine != "local":
        raise PersonatagError(
            f"stream_partitions is {n} but the stream engine is {settings.stream_engine!r}: "
            "partitions are the local engine's (the flink engine scales with flink_parallelism)"
        )
    if n > 1 and not store.shared:
        raise PersonatagError(
            "stream_partitions > 1 needs a store other processes can open "
            "(a SQLite file or PostgreSQL, not an in-memory database)"
        )
    return n


def catch_up_all(store: Store, settings: Settings, timeout_s: float) -> Any:
    """Every partition through the feed in turn, in this process (`stream --once`);
    the caller holds the stream's lease. Returns the summed StepResult."""
    from personatag.engines.local.stream.processor import StepResult, StreamProcessor
    from personatag.engines.local.stream.status import OFFSET_NAME

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


def run_partition(url: str, settings: Settings, p: int, n: int, level: int, log_json: bool) -> None:
    """A partition's process: step its contacts' feed until SIGTERM/SIGINT, or
    until the process that started it is gone."""
    from personatag.engines.local.stream.processor import StreamProcessor
    from personatag.logs import configure_logging
    from personatag.store import open_store

    configure_logging(level, json=log_json)
    parent = os.getppid()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    store = open_store(url)
    proc = StreamProcessor(store, settings, partition=(p, n))
    proc.start()
    try:
        while not stop.wait(WATCH_S):
            if os.getppid() != parent:
                log.warning("partition %d of %d: its supervisor is gone; stopping", p, n)
                break
            if not proc.is_alive():
                raise SystemExit(1)
    finally:
        proc.stop(30)
        store.dispose()


class _Child:
    """One partition's process, as the service last started it."""

    def __init__(self, p: int) -> None:
        self.p = p
        self.process: Any = None
        self.started_at = 0.0
        self.restarts = 0
        self.quick_deaths = 0
        self.not_before = 0.0


class Partitions(Service):
    """`stream_partitions` processes of the local stream processor (see the module
    doc), supervised: each started at once, a dead one started again."""

    thread_name = "stream-partitions"
    title = "the stream partitions"

    def __init__(
        self, store: Store, settings: Settings | None = None, metrics: Metrics | None = None
    ) -> None:
        from personatag.engines.local.stream.standby import Ownership
        from personatag.engines.local.stream.status import OFFSET_NAME

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
        self._log_json = bool(os.environ.get("PERSONATAG_LOG_JSON"))
        self._aligned = False

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
        from personatag.engines.local.stream.standby import STANDBY_POLL_S

        if not self._ownership.acquire():
            self._stop_children()
            self._aligned = False
            return STANDBY_POLL_S
        if not self._aligned:
            align(self.store, self.base, self.n)
            self._aligned = True
        now = time.monotonic()
        for child in self._children:
            proc = child.process
            if proc is not None and proc.is_alive():
                continue
            if proc is not None:  # it died: say so, then start it again
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
        proc = self._ctx.Process(
            target=run_partition,
            args=(self._url, self.settings, child.p, self.n, self._level, self._log_json),
            name=f"personatag-stream-p{child.p}of{self.n}",
            daemon=False,
        )
        proc.start()
        child.process = proc
        child.started_at = time.monotonic()
        log.info("stream partition %d of %d started (pid %s)", child.p, self.n, proc.pid)

    def _stop_children(self, timeout_s: float = 30.0) -> None:
        running = [c for c in self._children if c.process is not None]
        for c in running:
            if c.process.is_alive():
                c.process.terminate()  # SIGTERM: the step in hand commits or is dropped
        deadline = time.monotonic() + timeout_s
        for c in running:
            c.process.join(max(0.0, deadline - time.monotonic()))
            if c.process.is_alive():
                log.warning("stream partition %d did not stop in time; killing it", c.p)
                c.process.kill()
                c.process.join(5)
            c.process = None

    def on_error(self, exc: Exception) -> float:
        log.warning("stream partitions: %s (attempt %d); retrying", exc, self.failures)
        return self.backoff.delay(self.failures)

    def teardown(self) -> None:
        self._stop_children()
        self._ownership.release()
        log.info("stream partitions stopped")
