"""Criterion versions coming into the stream: build, backfill, catch up, swap.

A new or edited ongoing criterion is stored `building`. The step notices it,
and a thread beside the stream evaluates it set-based in the store as of that
moment (the backfill), so the feed keeps flowing. Once the thread is done, the
changes that arrived meanwhile are evaluated for it (the catch-up), and one
transaction installs it: the version it replaces is superseded (its rows
handed over when both feed the same persona), the new version's enters and
exits are applied, its window re-checks scheduled, and it turns `active`.
One criterion is built at a time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, select

from personatag.config import Settings
from personatag.engines.local.stream import ongoing as og
from personatag.engines.local.stream import partitions, rechecks
from personatag.engines.local.stream.evaluate import Evaluated, evaluate_set
from personatag.engines.local.stream.inputs import Publications, changes_between
from personatag.memberships.swap import swap_in
from personatag.metrics import Metrics
from personatag.store import Store, changefeed

log = logging.getLogger("personatag.engines.local.stream.processor")


class Host(Protocol):
    """What the lifecycle needs from the processor it runs in."""

    store: Store
    settings: Settings
    metrics: Metrics
    name: str
    base: str  # the stream's name; `name` is its partition's offset (partitions.py)
    partition: tuple[int, int] | None
    pubs: Publications

    def touched(self, index: og.Index, ch: changefeed.Change) -> AbstractSet[int]: ...

    def evaluate(self, work: dict[int, set[int]], index: og.Index, now: datetime) -> Evaluated: ...

    def record_error(self, crit_pk: int | None, cpk: int | None, error: str) -> None: ...


@dataclass
class Backfill:
    criterion: og.Ongoing
    thread: threading.Thread
    started_after: int  # feed head before the evaluation read the store
    as_of: datetime
    matched: Any = None  # np.ndarray of pks when done
    error: str | None = None


@dataclass
class Progress:
    """What one lifecycle turn did: messages for the step, and memberships moved."""

    messages: list[str] = field(default_factory=list)
    entered: int = 0
    exited: int = 0


class Lifecycle:
    """The building criterion of one processor, from backfill to swap."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.backfill: Backfill | None = None
        # Versions whose backfill start is in the audit log (a retry after a
        # failed backfill is not announced again).
        self._announced: set[int] = set()

    @property
    def idle(self) -> bool:
        """No backfill is running or waiting to be swapped in."""
        return self.backfill is None

    def advance(
        self, index: og.Index, statuses: tuple[tuple[int, str], ...], now: datetime
    ) -> Progress:
        """Swap in a finished backfill, or start one for a `building` criterion
        (`statuses`: (pk, status) of the ongoing criteria, as last read)."""
        host, progress = self.host, Progress()
        bf = self.backfill
        if bf is not None:
            if bf.thread.is_alive():
                return progress
            self.backfill = None
            if bf.error is not None:
                log.error("backfill of %s failed: %s", bf.criterion.label, bf.error)
                host.record_error(None, None, f"backfill of {bf.criterion.label}: {bf.error}")
                progress.messages.append(f"backfill of {bf.criterion.label} failed")
                return progress
            swap(host, bf, progress, now, index)
            return progress
        if not any(status == og.BUILDING for _, status in statuses):
            return progress
        with host.store.read() as conn:
            building = og.load(conn, host.store, (og.BUILDING,))
            head = changefeed.head(conn, host.store)
        if not building:
            return progress
        crit = building[0]
        bf = Backfill(crit, threading.Thread(), started_after=head, as_of=now)
        bf.thread = threading.Thread(
            target=run_backfill, args=(host.store, bf), name=f"backfill-{crit.label}", daemon=True
        )
        self.backfill = bf
        bf.thread.start()
        log.info("backfilling %s from feed seq %d", crit.label, head)
        if crit.pk not in self._announced:
            self._announced.add(crit.pk)
            from personatag import audit_log

            # What the workbench shows as the version's progress: building, then
            # backfilling from here, then swapped in (criterion.swap).
            audit_log.record_now(
                host.store,
                actor=None,
                action="criterion.backfill",
                target=crit.label,
                detail={"from_seq": head},
                source="stream",
            )
        progress.messages.append(f"backfill of {crit.label} started")
        return progress


def run_backfill(store: Store, bf: Backfill) -> None:
    """The backfill thread: evaluate the criterion set-based; keep the error."""
    try:
        with store.read() as conn:
            catalog = store.catalog(conn)
            bf.matched = evaluate_set(conn, store, bf.criterion, catalog, bf.as_of)
    except Exception as exc:
        bf.error = str(exc) or type(exc).__name__


def swap(host: Host, bf: Backfill, progress: Progress, now: datetime, index: og.Index) -> None:
    """Install a backfilled version: catch it up, then replace the old one."""
    store, new = host.store, bf.criterion
    parted = host.partition is not None
    with store.read() as conn:
        # Changes the backfill may not have seen, up to where the stream is (the
        # furthest partition: each has applied its contacts' changes that far).
        if parted:
            offset = partitions.furthest(conn, store, host.base)
        else:
            offset = changefeed.get_offset(conn, store, host.name)
        old = previous_version(conn, store, new)
    matched = catch_up(host, new, set(bf.matched.tolist()), bf.started_after, offset, now)
    with store.write() as conn:
        if parted:
            # No partition commits meanwhile; one that went further since the
            # read above is caught up here, and one evaluating now without
            # this criterion finds the criteria changed and steps again.
            store.lock_stream_criteria(conn, shared=False)
            further = partitions.furthest(conn, store, host.base)
            if further > offset:
                matched = catch_up(host, new, matched, offset, further, now)
        outcome = swap_in(
            conn, store, new, old, matched, at=now, bulk_threshold=host.settings.bulk_log_threshold
        )
        if old is not None and old.pk != new.pk:
            set_status(conn, store, old.pk, og.SUPERSEDED)
            rechecks.drop_criterion(conn, store, old.pk)
        rechecks.recheck_readers(conn, store, index, outcome, now)
        set_status(conn, store, new.pk, og.ACTIVE)
        if new.windows:
            rechecks.schedule_swapped(conn, store, new, matched, now)
        from personatag import audit_log

        audit_log.record(
            conn,
            store,
            actor="stream",
            action="criterion.swap",
            target=new.label,
            detail={
                "replaces": None if old is None else old.label,
                "members": len(matched),
                "entered": len(outcome.entered),
                "exited": len(outcome.exited),
            },
            source="stream",
        )
    host.metrics.record_memberships(entered=len(outcome.entered), exited=len(outcome.exited))
    host.metrics.record_stream_changes(entered=len(outcome.entered), exited=len(outcome.exited))
    progress.entered += len(outcome.entered)
    progress.exited += len(outcome.exited)
    progress.messages.append(f"{new.label} swapped in ({len(matched)} members)")
    log.info(
        "criterion %s swapped in: %d members, %d entered, %d exited",
        new.label,
        len(matched),
        len(outcome.entered),
        len(outcome.exited),
    )


def catch_up(
    host: Host, new: og.Ongoing, matched: set[int], after: int, upto: int, now: datetime
) -> set[int]:
    """`matched` (new's members as of feed seq `after`) brought to seq `upto`:
    the contacts of the changes between that `new` reads are evaluated again."""
    store = host.store
    touched: set[int] = set()
    one = og.Index([new])
    with store.read() as conn:
        host.pubs.get(conn, store)
        for ch in changes_between(conn, store, after, upto):
            if new.pk in host.touched(one, ch):
                touched.update(ch.pks)
    if not touched:
        return matched
    caught = host.evaluate({pk: {new.pk} for pk in touched}, one, now)
    return (matched - touched) | {cpk for (cpk, cp) in caught.matched if cp == new.pk}


def previous_version(conn: Connection, store: Store, new: og.Ongoing) -> og.Ongoing | None:
    """The version `new` replaces: the active or paused one of the same name."""
    c = store.tables.criteria
    pk = conn.scalar(
        select(c.c.pk)
        .where(
            c.c.name == new.name,
            c.c.pk != new.pk,
            c.c.mode == "ongoing",
            c.c.status.in_([og.ACTIVE, og.PAUSED]),
        )
        .order_by(c.c.version.desc())
        .limit(1)
    )
    if pk is None:
        return None
    found = [x for x in og.load(conn, store, (og.ACTIVE, og.PAUSED)) if x.pk == pk]
    return found[0] if found else None


def set_status(conn: Connection, store: Store, pk: int, status: str) -> None:
    c = store.tables.criteria
    conn.execute(c.update().where(c.c.pk == pk).values(status=status))
