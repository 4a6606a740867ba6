"""The stream processor: keeps ongoing criteria true as the change feed moves.

One step reads a micro-batch of the feed after the stored offset, works out
which ongoing criteria each change can affect (criteria are indexed by the
fields, events and personas they read), evaluates just those for just the
changed contacts, and applies enters and exits. The membership changes, the
time-window re-checks and the new offset commit in one transaction, so each
change takes effect exactly once across crashes: after a crash the batch is
read again from the old offset and evaluated against the store as it is.

Also in the step, between batches (so the feed keeps flowing):
- due re-checks: window criteria are re-evaluated for a contact at the moment
  time alone can change its answer (no sweep of everyone; rechecks.py);
- lifecycle: a new or edited ongoing criterion is backfilled set-based in the
  store on a thread beside the stream, caught up on the changes that arrived
  meanwhile, then swapped in (replacing its previous version) in one
  transaction (lifecycle.py);
- reconciliation: now and then each criterion's memberships are compared with
  a full evaluation; drift is repaired and reported (reconcile.py).

This module is the loop, the step and its commit; evaluation is in evaluate.py,
the gauges and `status` in status.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, select

from personatag.config import Settings
from personatag.criteria.to_python import EvalInput
from personatag.definitions.personas import persona_pks
from personatag.domain import utcnow
from personatag.engines.base import StreamEngine
from personatag.engines.local.stream import arrays, partitions, rechecks
from personatag.engines.local.stream import evaluate as ev_
from personatag.engines.local.stream import ongoing as og
from personatag.engines.local.stream.evaluate import Evaluated
from personatag.engines.local.stream.inputs import Publications, load_inputs
from personatag.engines.local.stream.lifecycle import Lifecycle
from personatag.engines.local.stream.reconcile import Rounds, reconcile
from personatag.engines.local.stream.standby import STANDBY_POLL_S, Ownership
from personatag.engines.local.stream.status import OFFSET_NAME, Gauges
from personatag.memberships import grants
from personatag.memberships.rows import Holders, Writer
from personatag.metrics import Metrics, default_metrics
from personatag.service import Backoff, Service
from personatag.store import Store, changefeed
from personatag.store.transient import transient

log = logging.getLogger(__name__)


class OffsetMoved(RuntimeError):
    """Another step committed the offset this one read (nothing was applied)."""


class CriteriaMoved(OffsetMoved):
    """A partition's step was evaluated with criteria that another partition's
    swap has since replaced (nothing was applied; partitions.py)."""


@dataclass
class StepResult:
    changes: int = 0  # feed rows consumed
    contacts: int = 0  # contacts evaluated
    evaluations: int = 0
    entered: int = 0
    exited: int = 0
    rechecks: int = 0
    errors: int = 0
    offset: int = 0
    lifecycle: list[str] = field(default_factory=list)
    # When each change consumed was written (latency = commit time - these).
    change_times: list[datetime] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return bool(self.changes or self.rechecks or self.lifecycle)


class StreamProcessor(StreamEngine):
    """The `local` stream engine (see the module doc), run as a service (see
    personatag.service); `run` loops in the calling thread."""

    thread_name = "stream"
    title = "the stream processor"

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        metrics: Metrics | None = None,
        *,
        name: str = OFFSET_NAME,
        partition: tuple[int, int] | None = None,
    ) -> None:
        """`partition` (p, n): step only the contacts of partition p of n, on an
        offset of its own (partitions.py); None: every contact."""
        self.store = store
        self.settings = settings or Settings()
        self.metrics = metrics or default_metrics()
        self.base = name
        self.partition = partition
        self.name = name if partition is None else partitions.partition_name(name, *partition)
        # Backfills, swaps, reconciliation and pruning are the first partition's.
        self.leader = partition is None or partition[0] == 0
        self._aligned = partition is not None
        # A failing step is tried again after 1 s, doubling up to 30 s.
        Service.__init__(self, Backoff(first_s=1.0, max_s=30.0))
        self._ownership = Ownership(store, self.name)
        # Set once run() has held the offset: only then may this processor
        # have started what its stop must end (a Flink streaming job).
        self.held_offset = False
        self._checkpoints: Any = None
        self.pubs = Publications()
        self._plans = arrays.Plans()
        self._index: og.Index | None = None
        self._index_key: Any = None
        self.lifecycle = Lifecycle(self)
        self._rounds = Rounds()
        self._gauges = Gauges(
            store,
            self.metrics,
            # The monitoring charts read the stream's samples: partition 0's.
            name=self.base if self.leader else self.name,
            sample_s=self.settings.stream_sample_s,
            keep_days=self.settings.stream_sample_keep_days,
        )

    # ---- the loop -------------------------------------------------------------

    def setup(self) -> None:
        # A step's commit writes thousands of scattered rows: on SQLite the
        # WAL is copied back beside it, not inside it under the write lock.
        self._checkpoints = self.store.checkpoint_beside()
        log.info("stream processor %s started", self.name)

    def cycle(self) -> float:
        """One step; while another processor steps this store's offset, wait as
        its standby."""
        if not self._ownership.acquire():
            return STANDBY_POLL_S
        self.held_offset = True
        try:
            result = self.step()
        except OffsetMoved as exc:  # a one-off step elsewhere: read again
            log.warning("%s; stepping again", exc)
            return self.settings.stream_poll_s
        return 0.0 if result.busy else self.settings.stream_poll_s

    def on_error(self, exc: Exception) -> float:
        cause = transient(exc)
        if cause is not None:  # the store restarts or dropped us: no traceback
            log.warning(
                "stream step failed (attempt %d): the store failed (%s); retrying",
                self.failures,
                cause,
            )
        else:
            log.exception("stream step failed (attempt %d); retrying", self.failures)
        return self.backoff.delay(self.failures)

    def teardown(self) -> None:
        self._ownership.release()
        if self._checkpoints is not None:
            self._checkpoints.stop()
            self._checkpoints = None
        log.info("stream processor %s stopped", self.name)

    def catch_up(self, timeout_s: float = 60.0) -> StepResult:
        """Step until the feed, due re-checks and pending swaps are done (tests, tools)."""
        deadline = time.monotonic() + timeout_s
        total = StepResult()
        while True:
            r = self.step()
            total.changes += r.changes
            total.entered += r.entered
            total.exited += r.exited
            total.rechecks += r.rechecks
            total.errors += r.errors
            total.lifecycle += r.lifecycle
            total.offset = r.offset
            if not r.busy and self.lifecycle.idle:
                return total
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream did not catch up within {timeout_s} s")
            if not r.busy:
                time.sleep(0.05)

    def step(self, now: datetime | None = None) -> StepResult:
        """One micro-batch of the feed and due re-checks, plus lifecycle work."""
        fixed = now
        result = StepResult()
        if not self._aligned:  # partitions may have run here before: their offsets
            partitions.align(self.store, self.base, 1)
            self._aligned = True
        index = self.criteria()
        statuses = self._index_key[0] if self._index_key else ()
        if self.leader:
            progress = self.lifecycle.advance(index, statuses, fixed or utcnow())
            result.lifecycle += progress.messages
            result.entered += progress.entered
            result.exited += progress.exited
            if result.lifecycle:  # a swap changed the active criteria
                index = self.criteria()
        with self.store.read() as conn:
            offset = changefeed.get_offset(conn, self.store, self.name)
            changes = changefeed.read(conn, self.store, offset, self.settings.stream_batch)
            # The batch is evaluated as of a moment after it was read: an event
            # stamped before its transaction committed is inside it. One stamped
            # later still (another machine's clock) gets a re-check at its
            # moment (see Ongoing.next_due).
            now = fixed or utcnow()
            due = rechecks.due(
                conn, self.store, now, self.settings.stream_recheck_batch, self.partition
            )
            self.pubs.get(conn, self.store)
        result.offset = offset
        # (contact pks, the criteria they touch), a change at a time
        groups: ev_.Groups = []
        changed: set[int] = set()
        part = self.partition
        # When the changes this step applies were written (its latency metric):
        # a partition's are those of its contacts, and partition 0's also
        # those of no contact, so each change is counted once, or by each
        # partition that applies it.
        mine_at = [ch.at for ch in changes] if part is None else []
        for ch in changes:
            pks = ch.pks if part is None else [pk for pk in ch.pks if pk % part[1] == part[0]]
            if part is not None and (pks or (part[0] == 0 and not ch.pks)):
                mine_at.append(ch.at)
            if not pks:  # another partition's contacts only
                continue
            touched = self.touched(index, ch)
            if not touched:
                continue
            groups.append((pks, touched))
            changed.update(pks)
        # Set-based only for many changed contacts: due re-checks need the exact
        # next moment a per-contact evaluation gives (set-based answers schedule
        # one at once, which must not come back set-based again).
        set_based = len(changed) > self.settings.stream_set_based_contacts
        del changed
        live_due = [(crit_pk, cpk) for crit_pk, cpk in due if crit_pk in index.by_pk]
        new_offset = changes[-1].seq if changes else offset
        if (changes or due) and set_based and not index.by_persona:
            # A criterion at a time, never a set of criteria per contact.
            groups += [((cpk,), {crit_pk}) for crit_pk, cpk in live_due]
            self._apply_groups(index, groups, due, offset, new_offset, now, result)
        elif changes or due:
            # contact pk -> the criteria to evaluate for it
            work: dict[int, set[int]] = {}
            for pks, touched in groups:
                for pk in pks:
                    s = work.get(pk)
                    if s is None:
                        work[pk] = set(touched)
                    else:
                        s.update(touched)
            for crit_pk, cpk in live_due:
                work.setdefault(cpk, set()).add(crit_pk)
            self._apply(index, work, due, offset, new_offset, now, result, set_based=set_based)
        if changes or due:
            result.changes = len(changes)
            result.change_times = [ch.at for ch in changes]
            result.rechecks = len(due)
            result.offset = new_offset
            self._gauges.record(result.change_times, result.evaluations, result.offset, mine_at)
        else:
            self._gauges.lag(offset)
            if self.leader:
                self._idle_work(index, result)
        return result

    def _idle_work(self, index: og.Index, result: StepResult) -> None:
        """Between batches: a reconciliation round's next criterion, and at the
        start of each round the pruning of unused grants."""
        crit = self._rounds.next(index, self.settings.stream_reconcile_s)
        if self._rounds.began:
            # Grants whose rows all left since the last round (memberships/grants.py).
            with self.store.write() as conn:
                pruned = grants.prune(conn, self.store)
            if pruned:
                result.lifecycle.append(f"pruned {pruned} unused membership grants")
        if crit is not None:
            self.reconcile(crit)
            result.lifecycle.append(f"reconciled {crit.label}")

    def touched(self, index: og.Index, ch: changefeed.Change) -> AbstractSet[int]:
        """The criteria `ch` can change (self.pubs must be current)."""
        if ch.kind == og.EVENT_READ:
            named = og.read_publications(ch.fields)
            if named is not None:
                return index.touched_by_reads(named, self.pubs.by_pk, self.pubs.version)
        return index.touched(ch.kind, ch.fields)

    def _active_key(self, conn: Connection) -> tuple[Any, ...]:
        c = self.store.tables.criteria
        return tuple(
            conn.execute(
                select(c.c.pk, c.c.status)
                .where(c.c.mode == "ongoing", c.c.status != og.SUPERSEDED)
                .order_by(c.c.pk)
            ).all()
        )

    def criteria(self) -> og.Index:
        """The active ongoing criteria, indexed (reloaded when they or the
        custom attributes changed)."""
        with self.store.read() as conn:
            key = self._active_key(conn)
            attrs = tuple(self.store.custom_attributes(conn))
            if self._index is None or (key, attrs) != self._index_key:
                self._index = og.Index(
                    og.load(conn, self.store, (og.ACTIVE,)), catalog=self.store.catalog(conn)
                )
                self._index_key = (key, attrs)
                self.metrics.set_stream_criteria(len(self._index.criteria))
        return self._index

    def reconcile(
        self, crit: og.Ongoing, *, repair: bool = True, now: datetime | None = None
    ) -> dict[str, int]:
        """Compare `crit`'s memberships with a full evaluation now; repair drift
        (see reconcile.py)."""
        return reconcile(self, crit, repair=repair, now=now)

    # ---- evaluation and the commit -----------------------------------------------

    def evaluate(self, work: dict[int, set[int]], index: og.Index, now: datetime) -> Evaluated:
        """Answer each contact's criteria in `work` (contact pk -> criterion pks) now."""
        crit_pks = set().union(*work.values()) if work else set()
        needs = ev_.needs((index.by_pk[p] for p in crit_pks), index)
        with self.store.read() as conn:
            keys = {pk: key for key, pk in persona_pks(conn, self.store).items()}
            inputs = load_inputs(conn, self.store, sorted(work), needs, now, self.pubs, keys)
        to_evaluate, failed = ev_.prune(work, inputs, index)
        ev = self.evaluate_batch(to_evaluate, inputs, index)
        ev.unmatched.extend(failed)
        if ev.errors:
            catalog = index.catalog or self.store.catalog()
            ev_.store_answers(self.store, ev, index, catalog, now)
        return ev

    def evaluate_batch(
        self, work: dict[int, set[int]], inputs: dict[int, EvalInput], index: og.Index
    ) -> Evaluated:
        """Evaluate each contact's criteria on its loaded input (contacts without
        an input are gone and skipped): as arrays (arrays.py) or pair by pair,
        as `stream_evaluation` says. The Flink stream engine overrides this."""
        if self.settings.stream_evaluation == "arrays" and index.catalog is not None:
            return arrays.evaluate_batch(work, inputs, index, self._plans, index.catalog, self.pubs)
        return ev_.evaluate_batch(work, inputs, index)

    def _apply(
        self,
        index: og.Index,
        work: dict[int, set[int]],
        due: list[tuple[int, int]],
        offset: int,
        new_offset: int,
        now: datetime,
        result: StepResult,
        *,
        set_based: bool,
    ) -> None:
        if set_based:
            ev = ev_.evaluate_set_based(self.store, work, index, now, self.pubs)
        else:
            ev = self.evaluate(work, index, now)
        result.contacts = len(work)
        result.evaluations = len(ev.evaluated)
        # criterion pk -> (contacts it matches, contacts it does not); sorted
        # out before the write lock when no persona(...) criterion must settle.
        by_crit: dict[int, tuple[list[int], list[int]]] = {}
        if not index.by_persona:
            matched = ev.matched
            for pair in ev.evaluated:
                entering, leaving = by_crit.setdefault(pair[1], ([], []))
                (entering if pair in matched else leaving).append(pair[0])
            for cpk, crit_pk in ev.unmatched:
                by_crit.setdefault(crit_pk, ([], []))[1].append(cpk)
        with self.store.write() as conn:
            self._still_ours(conn, offset)
            pks_of = persona_pks(conn, self.store)
            keys = {pk: key for key, pk in pks_of.items()}
            personas = {index.by_pk[p].persona_pk for p in set().union(*work.values())}
            for c in index.criteria:
                if c.personas:
                    # persona(...) criteria: the persona they feed and those they read
                    personas.add(c.persona_pk)
                    personas.update(pks_of[k] for k in c.personas if k in pks_of)
            self.store.lock_personas(conn, personas)
            if index.by_persona:
                holders = Holders.load(conn, self.store, {cpk: personas for cpk in work})
            else:
                by_pk = index.by_pk
                holders = Holders.load(
                    conn,
                    self.store,
                    {cpk: {by_pk[p].persona_pk for p in crits} for cpk, crits in work.items()},
                )
            if index.by_persona:
                # contact pk -> criterion pk -> matched, settled
                answers: dict[int, dict[int, bool]] = {}
                for cpk, crit_pk in ev.evaluated:
                    answers.setdefault(cpk, {})[crit_pk] = (cpk, crit_pk) in ev.matched
                for cpk, crit_pk in ev.unmatched:
                    answers.setdefault(cpk, {})[crit_pk] = False
                ev_.settle(
                    conn, self.store, self.pubs, index, holders, answers, personas, ev, keys, now
                )
                for cpk, mine in answers.items():
                    for crit_pk, hit in mine.items():
                        entering, leaving = by_crit.setdefault(crit_pk, ([], []))
                        (entering if hit else leaving).append(cpk)
            labels = {c.pk: c.label for c in index.criteria}
            writer = self._writer(now, labels)
            # Every enter before any exit: a persona passing from one source to
            # another in this step is never logged as leaving and coming back.
            for crit_pk, (entering, _) in by_crit.items():
                crit = index.by_pk[crit_pk]
                if entering:
                    writer.decide(
                        holders, crit.persona_pk, crit.pk, crit.exit_remove, entering, set(entering)
                    )
            for crit_pk, (_, leaving) in by_crit.items():
                crit = index.by_pk[crit_pk]
                if leaving and crit.exit_remove:
                    writer.decide(holders, crit.persona_pk, crit.pk, True, leaving, ())
            writer.flush(conn)
            rechecks.write(conn, self.store, due, ev.due)
            if ev.errors:
                self._insert_errors(conn, ev.errors, new_offset)
            changefeed.set_offset(conn, self.store, self.name, new_offset)
        out = writer.outcome
        result.entered += len(out.entered)
        result.exited += len(out.exited)
        result.errors += len(ev.errors)
        for crit_pk, cpk, err in ev.errors[:5]:
            log.warning("criterion pk %d failed for contact pk %d: %s", crit_pk, cpk, err)
        self.metrics.record_memberships(entered=len(out.entered), exited=len(out.exited))
        self.metrics.record_stream_changes(
            entered=len(out.entered),
            exited=len(out.exited),
            evaluations=len(ev.evaluated),
            errors=len(ev.errors),
        )

    def _writer(self, now: datetime, labels: dict[int, str]) -> Writer:
        """The writer of a step's membership moves and their log."""
        return Writer(
            self.store,
            now,
            self.settings.bulk_log_threshold,
            labels,
            compact=self.settings.stream_log_compact,
        )

    def _still_ours(self, conn: Connection, offset: int) -> None:
        """In the step's write transaction: nothing moved the offset since the
        step read it, and (partitions) no swap changed the criteria it used."""
        if changefeed.get_offset(conn, self.store, self.name) != offset:
            raise OffsetMoved(
                f"stream offset {self.name!r} moved under this processor: "
                "is another `personatag stream` running on this store?"
            )
        if self.partition is not None:
            # A swap in another partition commits under this lock, exclusive.
            self.store.lock_stream_criteria(conn, shared=True)
            if self._active_key(conn) != self._index_key[0]:
                raise CriteriaMoved(
                    f"stream partition {self.name!r}: the active criteria changed "
                    "while it evaluated (a swap)"
                )

    def _apply_groups(
        self,
        index: og.Index,
        groups: ev_.Groups,
        due: list[tuple[int, int]],
        offset: int,
        new_offset: int,
        now: datetime,
        result: StepResult,
    ) -> None:
        """A set-based step without persona(...) criteria: each criterion
        evaluated in the store, then its persona's memberships read, decided
        and written one persona at a time, in one transaction with the offset.
        Memory follows the largest persona and the contacts changed, not their
        product with the criteria."""
        ans = ev_.evaluate_groups(self.store, groups, index, now, self.pubs)
        result.evaluations = ans.evaluations
        result.contacts = max((len(c) for c in ans.contacts.values()), default=0)
        by_persona: dict[int, list[og.Ongoing]] = {}
        for crit_pk in ans.hits:
            crit = index.by_pk[crit_pk]
            by_persona.setdefault(crit.persona_pk, []).append(crit)
        labels = {c.pk: c.label for c in index.criteria}
        entered = exited = 0
        with self.store.write() as conn:
            self._still_ours(conn, offset)
            self.store.lock_personas(conn, by_persona)
            for persona_pk in sorted(by_persona):
                crits = by_persona[persona_pk]
                holders = Holders.load_persona(conn, self.store, persona_pk)
                had: dict[int, list[int]] = {c.pk: [] for c in crits}
                for (_, cpk), srcs in holders.sources.items():
                    for src in srcs:
                        if src in had:
                            had[src].append(cpk)
                held = {pk: np.array(sorted(cpks), dtype=np.int64) for pk, cpks in had.items()}
                writer = self._writer(now, labels)
                # Every enter before any exit (see _apply).
                for c in crits:
                    enter = np.setdiff1d(ans.hits[c.pk], held[c.pk]).tolist()
                    if enter:
                        writer.decide(holders, persona_pk, c.pk, c.exit_remove, enter, set(enter))
                for c in crits:
                    if c.exit_remove:
                        mine = np.intersect1d(held[c.pk], ans.contacts[c.pk])
                        gone = np.setdiff1d(mine, ans.hits[c.pk]).tolist()
                        if gone:
                            writer.decide(holders, persona_pk, c.pk, True, gone, ())
                out = writer.flush(conn)
                entered += len(out.entered)
                exited += len(out.exited)
            rechecks.write(conn, self.store, due, {})  # the due ones: done, unless below
            for crit_pk, cpks in ans.due_now.items():
                rechecks.write(
                    conn, self.store, [], dict.fromkeys(((crit_pk, int(c)) for c in cpks), now)
                )
            if ans.errors:
                self._insert_errors(conn, ans.errors, new_offset)
            changefeed.set_offset(conn, self.store, self.name, new_offset)
        result.entered += entered
        result.exited += exited
        result.errors += len(ans.errors)
        for crit_pk, cpk, err in ans.errors[:5]:
            log.warning("criterion pk %d failed for contact pk %d: %s", crit_pk, cpk, err)
        self.metrics.record_memberships(entered=entered, exited=exited)
        self.metrics.record_stream_changes(
            entered=entered, exited=exited, evaluations=ans.evaluations, errors=len(ans.errors)
        )

    def _insert_errors(
        self, conn: Connection, errors: list[tuple[int, int, str]], change_seq: int
    ) -> None:
        conn.execute(
            self.store.tables.stream_errors.insert(),
            [
                {
                    "at": utcnow(),
                    "criterion_pk": c,
                    "contact_pk": k or None,
                    "change_seq": change_seq,
                    "error": e[:2000],
                }
                for c, k, e in errors
            ],
        )

    def record_error(self, crit_pk: int | None, cpk: int | None, error: str) -> None:
        with self.store.write() as conn:
            conn.execute(
                self.store.tables.stream_errors.insert().values(
                    at=utcnow(), criterion_pk=crit_pk, contact_pk=cpk, error=error[:2000]
                )
            )
        self.metrics.record_stream_changes(errors=1)
