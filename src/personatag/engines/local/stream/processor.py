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
  time alone can change its answer (no sweep of everyone);
- lifecycle: a new or edited ongoing criterion is backfilled set-based in the
  store on a thread beside the stream, caught up on the changes that arrived
  meanwhile, then swapped in (replacing its previous version) in one transaction;
- reconciliation: now and then each criterion's memberships are compared with
  a full evaluation; drift is repaired and reported.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, select

from personatag.config import Settings
from personatag.criteria.to_python import EvalInput
from personatag.criteria.to_sql import compile_sql
from personatag.definitions.personas import persona_pks
from personatag.domain import Catalog, utcnow
from personatag.engines.local.stream import cascade
from personatag.engines.local.stream import ongoing as og
from personatag.engines.local.stream.inputs import Needs, Publications, chunks, grouped, load_inputs
from personatag.memberships.log import fetch_ids
from personatag.memberships.rows import Holders, Outcome, Writer
from personatag.memberships.swap import swap_in
from personatag.metrics import Metrics, default_metrics
from personatag.store import Store
from personatag.store import changefeed as feed
from personatag.store.rowwise import Prepared, bound, fetch_tuples, once_per_table
from personatag.store.schema import Tables
from personatag.store.transient import transient
from personatag.streaming.standby import STANDBY_POLL_S, Ownership

log = logging.getLogger(__name__)

OFFSET_NAME = "stream"
RATE_WINDOW_S = 10.0  # persona(...) criteria re-evaluated after memberships move


class OffsetMoved(RuntimeError):
    """Another step committed the offset this one read (nothing was applied)."""


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


@dataclass
class _Backfill:
    criterion: og.Ongoing
    thread: threading.Thread
    started_after: int  # feed head before the evaluation read the store
    as_of: datetime
    matched: Any = None  # np.ndarray of pks when done
    error: str | None = None


@dataclass
class Evaluated:
    """The answers of one batch: what was evaluated, what matched, re-check times."""

    inputs: dict[int, EvalInput]
    evaluated: list[tuple[int, int]]  # (contact pk, criterion pk)
    matched: set[tuple[int, int]]
    due: dict[tuple[int, int], datetime | None]  # (criterion pk, contact pk) -> next re-check
    errors: list[tuple[int, int, str]]  # (criterion pk, contact pk, message)
    # (contact pk, criterion pk) answered "no match" without evaluating (see prune)
    unmatched: list[tuple[int, int]] = field(default_factory=list)


def prune(
    work: dict[int, set[int]], inputs: dict[int, EvalInput], index: og.Index
) -> tuple[dict[int, set[int]], list[tuple[int, int]]]:
    """Split (contact, criterion) pairs into those to evaluate and those whose
    guard fails (`region = "EMEA" and ...` for an AMER contact): a failed top-level
    conjunct means the criterion is not true, so their answer is known without
    evaluating them. They are still answered (not matched): a membership held
    through such a criterion exits like any other non-match. Contacts without an
    input (deleted) are dropped."""
    out: dict[int, set[int]] = {}
    failed: list[tuple[int, int]] = []
    by_pk = index.by_pk
    for cpk, crits in work.items():
        inp = inputs.get(cpk)
        if inp is None:
            continue
        row = inp.contact
        keep = set()
        for pk in crits:
            guard = by_pk[pk].guard
            if guard is None or row.get(guard[0]) in guard[1]:
                keep.add(pk)
            else:
                failed.append((cpk, pk))
        if keep:
            out[cpk] = keep
    return out, failed


def evaluate_set(
    conn: Connection, store: Store, crit: og.Ongoing, catalog: Catalog, as_of: datetime
) -> Any:
    """Every contact pk `crit` matches now, evaluated set-based in the store."""
    c = store.tables.contacts
    cond = compile_sql(
        crit.node,
        tables=store.tables,
        catalog=catalog,
        persona_pks=persona_pks(conn, store),
        as_of=as_of,
        dialect=store.dialect,
    )
    return fetch_ids(conn, store, select(c.c.pk).where(cond))


class StreamProcessor:
    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        metrics: Metrics | None = None,
        *,
        name: str = OFFSET_NAME,
    ) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.metrics = metrics or default_metrics()
        self.name = name
        # Set once run() has held the offset: only then may this processor
        # have started what its stop must end (a Flink streaming job).
        self.held_offset = False
        self.pubs = Publications()
        self._index: og.Index | None = None
        self._index_key: Any = None
        self._backfill: _Backfill | None = None
        self._reconcile_queue: list[int] = []
        self._last_round = time.monotonic()
        # (monotonic time, changes, evaluations) of recent steps, for the rates
        self._recent: collections.deque[tuple[float, int, int]] = collections.deque()

    # ---- the loop -------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Step until `stop` is set; a failing step is logged and retried.
        While another processor steps this store's offset, wait as its standby."""
        log.info("stream processor %s started", self.name)
        ownership = Ownership(self.store, self.name)
        failures = 0
        try:
            while not stop.is_set():
                try:
                    if not ownership.acquire():
                        stop.wait(STANDBY_POLL_S)
                        continue
                    self.held_offset = True
                    result = self.step()
                    failures = 0
                except OffsetMoved as exc:  # a one-off step elsewhere: read again
                    log.warning("%s; stepping again", exc)
                    stop.wait(self.settings.stream_poll_s)
                    continue
                except Exception as exc:
                    failures += 1
                    cause = transient(exc)
                    if cause is not None:  # the store restarts or dropped us: no traceback
                        log.warning(
                            "stream step failed (attempt %d): the store failed (%s); retrying",
                            failures,
                            cause,
                        )
                    else:
                        log.exception("stream step failed (attempt %d); retrying", failures)
                    stop.wait(min(30.0, 0.5 * 2**failures))
                    continue
                if not result.busy:
                    stop.wait(self.settings.stream_poll_s)
        finally:
            ownership.release()
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
            if not r.busy and self._backfill is None:
                return total
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream did not catch up within {timeout_s} s")
            if not r.busy:
                time.sleep(0.05)

    def step(self, now: datetime | None = None) -> StepResult:
        """One micro-batch of the feed and due re-checks, plus lifecycle work."""
        fixed = now
        result = StepResult()
        index = self._criteria()
        self._lifecycle(index, result, fixed or utcnow())
        if result.lifecycle:  # a swap changed the active criteria
            index = self._criteria()
        with self.store.read() as conn:
            offset = feed.get_offset(conn, self.store, self.name)
            changes = feed.read(conn, self.store, offset, self.settings.stream_batch)
            # The batch is evaluated as of a moment after it was read: an event
            # stamped before its transaction committed is inside it. One stamped
            # later still (another machine's clock) gets a re-check at its
            # moment (see Ongoing.next_due).
            now = fixed or utcnow()
            due = self._due(conn, now)
            self.pubs.get(conn, self.store)
        result.offset = offset
        # contact pk -> the criteria to evaluate for it
        work: dict[int, set[int]] = {}
        for ch in changes:
            touched = self._touched(index, ch)
            if not touched:
                continue
            for pk in ch.pks:
                s = work.get(pk)
                if s is None:
                    work[pk] = set(touched)
                else:
                    s.update(touched)
        # Set-based only for many changed contacts: due re-checks need the exact
        # next moment a per-contact evaluation gives (set-based answers schedule
        # one at once, which must not come back set-based again).
        set_based = len(work) > self.settings.stream_set_based_contacts
        for crit_pk, cpk in due:
            if crit_pk in index.by_pk:
                work.setdefault(cpk, set()).add(crit_pk)
        new_offset = changes[-1].seq if changes else offset
        if changes or due:
            self._apply(index, work, due, offset, new_offset, now, result, set_based=set_based)
            result.changes = len(changes)
            result.change_times = [ch.at for ch in changes]
            result.rechecks = len(due)
            result.offset = new_offset
            self._record(changes, result)
        else:
            self._observe_lag(offset)
            self._reconcile_slice(index, result)
        return result

    def _touched(self, index: og.Index, ch: feed.Change) -> AbstractSet[int]:
        """The criteria `ch` can change (self.pubs must be current)."""
        if ch.kind == og.EVENT_READ:
            named = og.read_publications(ch.fields)
            if named is not None:
                return index.touched_by_reads(named, self.pubs.by_pk, self.pubs.version)
        return index.touched(ch.kind, ch.fields)

    # ---- criteria and lifecycle ------------------------------------------------

    def _criteria(self) -> og.Index:
        c = self.store.tables.criteria
        with self.store.read() as conn:
            key = tuple(
                conn.execute(
                    select(c.c.pk, c.c.status)
                    .where(c.c.mode == "ongoing", c.c.status != og.SUPERSEDED)
                    .order_by(c.c.pk)
                ).all()
            )
            attrs = tuple(self.store.custom_attributes(conn))
            if self._index is None or (key, attrs) != self._index_key:
                self._index = og.Index(og.load(conn, self.store, (og.ACTIVE,)))
                self._index_key = (key, attrs)
                self.metrics.set_stream_criteria(len(self._index.criteria))
        return self._index

    def _lifecycle(self, index: og.Index, result: StepResult, now: datetime) -> None:
        bf = self._backfill
        if bf is not None:
            if bf.thread.is_alive():
                return
            self._backfill = None
            if bf.error is not None:
                log.error("backfill of %s failed: %s", bf.criterion.label, bf.error)
                self._record_error(None, None, f"backfill of {bf.criterion.label}: {bf.error}")
                result.lifecycle.append(f"backfill of {bf.criterion.label} failed")
                return
            self._swap(bf, result, now, index)
            return
        statuses = self._index_key[0] if self._index_key else ()
        if not any(status == og.BUILDING for _, status in statuses):
            return
        with self.store.read() as conn:
            building = og.load(conn, self.store, (og.BUILDING,))
            head = feed.head(conn, self.store)
        if not building:
            return
        crit = building[0]
        bf = _Backfill(crit, threading.Thread(), started_after=head, as_of=now)
        bf.thread = threading.Thread(
            target=self._run_backfill, args=(bf,), name=f"backfill-{crit.label}", daemon=True
        )
        self._backfill = bf
        bf.thread.start()
        log.info("backfilling %s from feed seq %d", crit.label, head)
        result.lifecycle.append(f"backfill of {crit.label} started")

    def _run_backfill(self, bf: _Backfill) -> None:
        try:
            with self.store.read() as conn:
                catalog = self.store.catalog(conn)
                bf.matched = evaluate_set(conn, self.store, bf.criterion, catalog, bf.as_of)
        except Exception as exc:
            bf.error = str(exc) or type(exc).__name__

    def _swap(self, bf: _Backfill, result: StepResult, now: datetime, index: og.Index) -> None:
        """Install a backfilled version: catch it up, then replace the old one."""
        new = bf.criterion
        with self.store.read() as conn:
            offset = feed.get_offset(conn, self.store, self.name)
            self.pubs.get(conn, self.store)
            # Changes the backfill may not have seen, up to where the stream is.
            touched: set[int] = set()
            one = og.Index([new])
            for ch in self._changes_between(conn, bf.started_after, offset):
                if new.pk in self._touched(one, ch):
                    touched.update(ch.pks)
            old = self._previous_version(conn, new)
        matched = set(bf.matched.tolist())
        if touched:
            caught = self._evaluate({pk: {new.pk} for pk in touched}, og.Index([new]), now)
            matched -= touched
            matched |= {cpk for (cpk, cp) in caught.matched if cp == new.pk}
        t = self.store.tables
        with self.store.write() as conn:
            outcome = swap_in(
                conn,
                self.store,
                new,
                old,
                matched,
                at=now,
                bulk_threshold=self.settings.bulk_log_threshold,
            )
            if old is not None and old.pk != new.pk:
                self._set_status(conn, old.pk, og.SUPERSEDED)
                conn.execute(
                    t.stream_rechecks.delete().where(t.stream_rechecks.c.criterion_pk == old.pk)
                )
            self._recheck_readers(conn, index, outcome, now)
            self._set_status(conn, new.pk, og.ACTIVE)
            if new.windows:
                # Members, and those time alone can bring in (events or timestamps
                # after now; with `count(...) < k` also those in the window), get
                # their exact re-check time from a first evaluation.
                rc = t.stream_rechecks
                conn.execute(rc.delete().where(rc.c.criterion_pk == new.pk))
                recheck = set(matched)
                catalog = self.store.catalog(conn)
                for name, days in new.windows:
                    since = now if new.falls_only else now - timedelta(days=days)
                    recheck |= self._moving(conn, catalog, name, since)
                if recheck:
                    conn.execute(
                        rc.insert(),
                        [
                            {"criterion_pk": new.pk, "contact_pk": c, "due_at": now}
                            for c in sorted(recheck)
                        ],
                    )
            from personatag import audit_log

            audit_log.record(
                conn,
                self.store,
                actor=None,
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
        self.metrics.record_memberships(entered=len(outcome.entered), exited=len(outcome.exited))
        self.metrics.record_stream_changes(entered=len(outcome.entered), exited=len(outcome.exited))
        result.entered += len(outcome.entered)
        result.exited += len(outcome.exited)
        result.lifecycle.append(f"{new.label} swapped in ({len(matched)} members)")
        log.info(
            "criterion %s swapped in: %d members, %d entered, %d exited",
            new.label,
            len(matched),
            len(outcome.entered),
            len(outcome.exited),
        )

    def _previous_version(self, conn: Connection, new: og.Ongoing) -> og.Ongoing | None:
        """The version `new` replaces: the active or paused one of the same name."""
        c = self.store.tables.criteria
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
        found = [x for x in og.load(conn, self.store, (og.ACTIVE, og.PAUSED)) if x.pk == pk]
        return found[0] if found else None

    def _set_status(self, conn: Connection, pk: int, status: str) -> None:
        c = self.store.tables.criteria
        conn.execute(c.update().where(c.c.pk == pk).values(status=status))

    def _changes_between(self, conn: Connection, after: int, upto: int) -> Iterable[feed.Change]:
        while after < upto:
            batch = feed.read(conn, self.store, after, 10_000)
            batch = [ch for ch in batch if ch.seq <= upto]
            if not batch:
                return
            yield from batch
            after = batch[-1].seq

    # ---- evaluation and application ----------------------------------------------

    def _needs(self, crits: Iterable[og.Ongoing], index: og.Index) -> Needs:
        chosen = list(crits)
        if any(c.personas for c in index.criteria):
            chosen += [c for c in index.criteria if c.personas]
        return Needs(
            read_days=max((c.read_days for c in chosen), default=0),
            login_days=max((c.login_days for c in chosen), default=0),
            personas=any(c.personas for c in chosen),
        )

    def _evaluate(self, work: dict[int, set[int]], index: og.Index, now: datetime) -> Evaluated:
        crit_pks = set().union(*work.values()) if work else set()
        needs = self._needs((index.by_pk[p] for p in crit_pks), index)
        with self.store.read() as conn:
            keys = {pk: key for key, pk in persona_pks(conn, self.store).items()}
            inputs = load_inputs(conn, self.store, sorted(work), needs, now, self.pubs, keys)
        to_evaluate, failed = prune(work, inputs, index)
        ev = self.evaluate_batch(to_evaluate, inputs, index)
        ev.unmatched.extend(failed)
        return ev

    def evaluate_batch(
        self, work: dict[int, set[int]], inputs: dict[int, EvalInput], index: og.Index
    ) -> Evaluated:
        """Evaluate each contact's criteria on its loaded input (contacts without
        an input are gone and skipped). The Flink stream engine overrides this."""
        out = Evaluated(inputs, [], set(), {}, [])
        for cpk, crits in work.items():
            inp = inputs.get(cpk)
            if inp is None:
                continue
            for crit_pk in crits:
                self._eval_one(index.by_pk[crit_pk], cpk, inp, out)
        return out

    def _eval_one(self, crit: og.Ongoing, cpk: int, inp: EvalInput, out: Evaluated) -> None:
        try:
            hit = crit.evaluate(inp) is True
            due = crit.next_due(inp, hit) if crit.windows else None
        except Exception as exc:  # one bad evaluation must not stop the stream
            out.errors.append((crit.pk, cpk, f"{type(exc).__name__}: {exc}"))
            return
        out.evaluated.append((cpk, crit.pk))
        if hit:
            out.matched.add((cpk, crit.pk))
        if crit.windows:
            out.due[(crit.pk, cpk)] = due

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
            ev = self._evaluate_set_based(work, index, now)
        else:
            ev = self._evaluate(work, index, now)
        result.contacts = len(work)
        result.evaluations = len(ev.evaluated)
        with self.store.write() as conn:
            if feed.get_offset(conn, self.store, self.name) != offset:
                raise OffsetMoved(
                    f"stream offset {self.name!r} moved under this processor: "
                    "is another `personatag stream` running on this store?"
                )
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
            # criterion pk -> (contacts it matches, contacts it does not)
            by_crit: dict[int, tuple[list[int], list[int]]] = {}
            if index.by_persona:
                # contact pk -> criterion pk -> matched, settled
                answers: dict[int, dict[int, bool]] = {}
                for cpk, crit_pk in ev.evaluated:
                    answers.setdefault(cpk, {})[crit_pk] = (cpk, crit_pk) in ev.matched
                for cpk, crit_pk in ev.unmatched:
                    answers.setdefault(cpk, {})[crit_pk] = False
                self._settle(conn, index, holders, answers, personas, ev, keys, now)
                for cpk, mine in answers.items():
                    for crit_pk, hit in mine.items():
                        entering, leaving = by_crit.setdefault(crit_pk, ([], []))
                        (entering if hit else leaving).append(cpk)
            else:
                matched = ev.matched
                for pair in ev.evaluated:
                    entering, leaving = by_crit.setdefault(pair[1], ([], []))
                    (entering if pair in matched else leaving).append(pair[0])
                for cpk, crit_pk in ev.unmatched:
                    by_crit.setdefault(crit_pk, ([], []))[1].append(cpk)
            labels = {c.pk: c.label for c in index.criteria}
            writer = Writer(self.store, now, self.settings.bulk_log_threshold, labels)
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
            self._write_rechecks(conn, due, ev, now)
            if ev.errors:
                self._insert_errors(conn, ev.errors, new_offset)
            feed.set_offset(conn, self.store, self.name, new_offset)
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

    def _evaluate_set_based(
        self, work: dict[int, set[int]], index: og.Index, now: datetime
    ) -> Evaluated:
        """Many contacts changed (an import): each criterion runs once in the store."""
        by_crit: dict[int, list[int]] = {}
        for cpk, crits in work.items():
            for p in crits:
                by_crit.setdefault(p, []).append(cpk)
        out = Evaluated({}, [], set(), {}, [])
        ahead: dict[str, set[int]] = {}  # event or field -> contacts with a moment after now
        with self.store.read() as conn:
            catalog = self.store.catalog(conn)
            for crit_pk, cpks in by_crit.items():
                crit = index.by_pk[crit_pk]
                try:
                    hits = set(evaluate_set(conn, self.store, crit, catalog, now).tolist())
                except Exception as exc:
                    out.errors.append((crit_pk, 0, f"{type(exc).__name__}: {exc}"))
                    continue
                future: set[int] = set()
                if crit.windows and crit.falls_only:
                    for name, _ in crit.windows:
                        if name not in ahead:
                            ahead[name] = self._moving(conn, catalog, name, now, sorted(work))
                        future |= ahead[name]
                for cpk in cpks:
                    out.evaluated.append((cpk, crit_pk))
                    if cpk in hits:
                        out.matched.add((cpk, crit_pk))
                        if crit.windows:
                            # The exact re-check time comes from a per-contact evaluation.
                            out.due[(crit_pk, cpk)] = now
                    elif crit.windows and (not crit.falls_only or cpk in future):
                        out.due[(crit_pk, cpk)] = now
        return out

    def _moving(
        self,
        conn: Connection,
        catalog: Catalog,
        name: str,
        since: datetime,
        cpks: list[int] | None = None,
    ) -> set[int]:
        """Contacts (of `cpks`, or all) with a read or login (`name`), or a value
        of the timestamp field `name`, after `since`."""
        t = self.store.tables
        if name == og.EVENT_READ:
            who, at = t.reads.c.contact_pk, t.reads.c.read_at
        elif name == og.EVENT_LOGIN:
            who, at = t.logins.c.contact_pk, t.logins.c.login_at
        else:
            who, at = t.contacts.c.pk, t.contacts.c[catalog.column_for(name)]
        q = select(who).where(at > since).distinct()
        if cpks is None:
            return {int(c) for c in conn.scalars(q)}
        found: set[int] = set()
        for part in chunks(cpks):
            found.update(int(c) for c in conn.scalars(q.where(who.in_(part))))
        return found

    def _settle(
        self,
        conn: Connection,
        index: og.Index,
        holders: Holders,
        answers: dict[int, dict[int, bool]],
        covered: set[int],
        ev: Evaluated,
        keys: dict[int, str],
        now: datetime,
    ) -> None:
        """Bring each contact's persona(...) answers to where a full evaluation of
        the same data would be (see cascade.py), before anything is written."""
        order = index.persona_order
        covered_keys = {keys[p] for p in covered if p in keys}
        stored = cascade.contacts_of(holders, answers, covered)
        # Personas no criterion reads can move without anything to settle (a bulk
        # tag moving s0 enters many contacts into s3, which nobody reads).
        read: frozenset[str] = frozenset().union(*(c.personas for c in order))
        contacts: dict[int, cascade.Contact] = {}
        lacking: list[int] = []
        for cpk, mine in answers.items():
            inp = ev.inputs.get(cpk)
            outside = frozenset() if inp is None else inp.personas - covered_keys
            c = cascade.Contact(cpk, stored[cpk], outside, mine)
            start = cascade.held(cascade.Contact(cpk, c.stored, outside), index.by_pk, keys, set())
            if (cascade.held(c, index.by_pk, keys, holders.pinned_out) ^ start) & read:
                contacts[cpk] = c  # personas it moves in this step are read
                if inp is None:
                    lacking.append(cpk)
        if not contacts:
            return
        if lacking:  # evaluated set-based: load what the persona criteria read
            needs = self._needs(order, index)
            loaded = load_inputs(conn, self.store, sorted(lacking), needs, now, self.pubs, keys)
            ev.inputs.update(loaded)
            for cpk in lacking:
                inp = loaded.get(cpk)
                if inp is None:
                    contacts.pop(cpk)
                else:
                    contacts[cpk].outside = inp.personas - covered_keys

        def evaluate(crit: og.Ongoing, cpk: int, personas: frozenset[str]) -> bool | None:
            inp = dataclasses.replace(ev.inputs[cpk], personas=personas, memo={})
            sub = Evaluated({}, [], set(), {}, [])
            self._eval_one(crit, cpk, inp, sub)
            ev.errors.extend(sub.errors)
            ev.due.update(sub.due)
            ev.evaluated.extend(sub.evaluated)
            return bool(sub.matched) if sub.evaluated else None

        circle = "persona(...) criteria read each other in a circle that never settles"
        for cpk, c in contacts.items():
            if not cascade.settle(c, order, index.by_pk, keys, holders.pinned_out, evaluate):
                first = next((x.pk for x in order if x.pk in c.answers), order[0].pk)
                ev.errors.append((first, cpk, circle))

    def _recheck_readers(
        self, conn: Connection, index: og.Index, outcome: Outcome, now: datetime
    ) -> None:
        """Personas moved outside a step (a swap, a repair): the persona(...)
        criteria reading them get a re-check now, so the next step settles
        their cascade for those contacts as it would a change's."""
        if not index.by_persona or not (outcome.entered or outcome.exited):
            return
        keys = {pk: key for key, pk in persona_pks(conn, self.store).items()}
        pairs = sorted(
            {
                (crit.pk, cpk)
                for ppk, cpk in outcome.entered + outcome.exited
                for crit in index.by_persona.get(keys.get(ppk, ""), ())
            }
        )
        if not pairs:
            return
        rc = self.store.tables.stream_rechecks
        drop, add = _recheck_statements(self.store.tables)
        drop.executemany(conn, pairs)
        due = bound(conn, rc.c.due_at, now)
        add.executemany(conn, [(c, k, due) for c, k in pairs])

    def _due(self, conn: Connection, now: datetime) -> list[tuple[int, int]]:
        rc = self.store.tables.stream_rechecks
        rows = conn.execute(
            select(rc.c.criterion_pk, rc.c.contact_pk)
            .where(rc.c.due_at <= now)
            .order_by(rc.c.due_at)
            .limit(self.settings.stream_recheck_batch)
        ).all()
        return [(int(a), int(b)) for a, b in rows]

    def _write_rechecks(
        self,
        conn: Connection,
        due: list[tuple[int, int]],
        ev: Evaluated,
        now: datetime,
    ) -> None:
        """Store the next re-check of every evaluated window pair; write only what
        changed (most pairs have none before and none after)."""
        rc = self.store.tables.stream_rechecks
        wanted: dict[tuple[int, int], datetime | None] = {pair: None for pair in due}
        wanted.update(ev.due)
        if not wanted:
            return
        per_contact: dict[int, set[int]] = {}
        for c, k in wanted:
            per_contact.setdefault(k, set()).add(c)
        # Compared as stored (microseconds; fetch_tuples converts nothing).
        have: dict[tuple[int, int], int] = {}
        for crits, contacts in grouped(per_contact):
            for part in chunks(contacts):
                q = select(rc.c.criterion_pk, rc.c.contact_pk, rc.c.due_at).where(
                    rc.c.criterion_pk.in_(crits), rc.c.contact_pk.in_(part)
                )
                for c, k, at in fetch_tuples(conn, q):
                    have[(c, k)] = at
        want_us = {
            pair: None if at is None else bound(conn, rc.c.due_at, at)
            for pair, at in wanted.items()
        }
        drop = [pair for pair, at in want_us.items() if pair in have and have[pair] != at]
        add = [
            (c, k, at)
            for (c, k), at in want_us.items()
            if at is not None and have.get((c, k)) != at
        ]
        dropping, adding = _recheck_statements(self.store.tables)
        dropping.executemany(conn, drop)
        adding.executemany(conn, add)

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

    def _record_error(self, crit_pk: int | None, cpk: int | None, error: str) -> None:
        with self.store.write() as conn:
            conn.execute(
                self.store.tables.stream_errors.insert().values(
                    at=utcnow(), criterion_pk=crit_pk, contact_pk=cpk, error=error[:2000]
                )
            )
        self.metrics.record_stream_changes(errors=1)

    # ---- reconciliation -----------------------------------------------------------

    def _reconcile_slice(self, index: og.Index, result: StepResult) -> None:
        """When idle: compare one criterion with a full evaluation (a round every
        stream_reconcile_s seconds) and repair what drifted."""
        every = self.settings.stream_reconcile_s
        if every <= 0 or not index.criteria:
            return
        if not self._reconcile_queue:
            if time.monotonic() - self._last_round < every:
                return
            self._last_round = time.monotonic()
            self._reconcile_queue = [c.pk for c in index.criteria]
        crit_pk = self._reconcile_queue.pop(0)
        crit = index.by_pk.get(crit_pk)
        if crit is not None:
            self.reconcile(crit)
            result.lifecycle.append(f"reconciled {crit.label}")

    def reconcile(
        self, crit: og.Ongoing, *, repair: bool = True, now: datetime | None = None
    ) -> dict[str, int]:
        """Compare `crit`'s memberships with a full evaluation now; repair drift.

        Contacts with changes still waiting in the feed (or a due re-check) are
        left to the stream: their difference is not drift.
        """
        now = now or utcnow()
        t = self.store.tables
        with self.store.read() as conn:
            offset = feed.get_offset(conn, self.store, self.name)
            catalog = self.store.catalog(conn)
            full = set(evaluate_set(conn, self.store, crit, catalog, now).tolist())
            pending: set[int] = set()
            for ch in self._changes_between(conn, offset, feed.head(conn, self.store)):
                pending.update(ch.pks)
            rc = t.stream_rechecks
            pending.update(
                conn.scalars(
                    select(rc.c.contact_pk).where(rc.c.criterion_pk == crit.pk, rc.c.due_at <= now)
                )
            )
        with self.store.write() as conn:
            self.store.lock_persona(conn, crit.persona_pk)
            holders = Holders.load_persona(conn, self.store, crit.persona_pk)
            current = {c for (_, c), s in holders.sources.items() if crit.pk in s}
            missing = {
                c
                for c in full - current - pending
                if (crit.persona_pk, c) not in holders.pinned_out
            }
            extra = (current - full - pending) if crit.exit_remove else set()
            outcome = Outcome()
            if repair and (missing or extra):
                writer = Writer(self.store, now, self.settings.bulk_log_threshold)
                writer.decide(
                    holders, crit.persona_pk, crit.pk, crit.exit_remove, missing | extra, missing
                )
                outcome = writer.flush(conn, reason=f"reconciliation of {crit.label}")
                self._recheck_readers(conn, self._criteria(), outcome, now)
            conn.execute(
                t.reconciliations.insert().values(
                    at=now,
                    criterion_pk=crit.pk,
                    offset_seq=offset,
                    missing=len(missing),
                    extra=len(extra),
                    repaired=bool(repair and (missing or extra)),
                )
            )
        drift = len(missing) + len(extra)
        self.metrics.record_reconciliation(crit.label, drift)
        self.metrics.record_memberships(entered=len(outcome.entered), exited=len(outcome.exited))
        if drift:
            log.warning(
                "reconciliation of %s: %d missing, %d extra%s",
                crit.label,
                len(missing),
                len(extra),
                " (repaired)" if repair else "",
            )
        return {"missing": len(missing), "extra": len(extra), "offset": offset}

    # ---- observability ------------------------------------------------------------

    def _rates(self, changes: int, evaluations: int) -> None:
        now = time.monotonic()
        self._recent.append((now, changes, evaluations))
        while self._recent and now - self._recent[0][0] > RATE_WINDOW_S:
            self._recent.popleft()
        span = max(now - self._recent[0][0], 1.0) if len(self._recent) > 1 else RATE_WINDOW_S
        self.metrics.set_stream_rates(
            sum(c for _, c, _ in self._recent) / span, sum(e for _, _, e in self._recent) / span
        )

    def _record(self, changes: list[feed.Change], result: StepResult) -> None:
        self._rates(len(changes), result.evaluations)
        self.metrics.record_stream_changes(changes=len(changes))
        if changes:
            lag = (utcnow() - changes[-1].at).total_seconds()
            self.metrics.observe_stream_latency(max(lag, 0.0))
        self._observe_lag(result.offset)

    def _observe_lag(self, offset: int) -> None:
        self._rates(0, 0)
        with self.store.read() as conn:
            head = feed.head(conn, self.store)
            oldest = feed.oldest_after(conn, self.store, offset)
            rc = self.store.tables.stream_rechecks
            waiting = int(conn.scalar(select(func.count()).select_from(rc)) or 0)
        seconds = 0.0 if oldest is None else max((utcnow() - oldest).total_seconds(), 0.0)
        self.metrics.set_stream_lag(head - offset, seconds, waiting)


def _recheck_statements(tables: Tables) -> tuple[Prepared, Prepared]:
    """(delete one pair, insert one pair with its due time), compiled once."""
    rc = tables.stream_rechecks

    def build() -> tuple[Prepared, Prepared]:
        drop = rc.delete().where(
            rc.c.criterion_pk == bindparam("criterion_pk"),
            rc.c.contact_pk == bindparam("contact_pk"),
        )
        return (
            Prepared(drop, ("criterion_pk", "contact_pk")),
            Prepared(rc.insert(), ("criterion_pk", "contact_pk", "due_at")),
        )

    return once_per_table(rc, "stream.rechecks", build)


def status(store: Store, name: str = OFFSET_NAME) -> dict[str, Any]:
    """Where the stream is: offset, feed head, lag, re-checks, errors, reconciliation."""
    t = store.tables
    with store.read() as conn:
        offset = feed.get_offset(conn, store, name)
        head = feed.head(conn, store)
        oldest = feed.oldest_after(conn, store, offset)
        so = t.stream_offsets
        updated = conn.scalar(select(so.c.updated_at).where(so.c.name == name))
        rc = t.stream_rechecks
        rechecks = int(conn.scalar(select(func.count()).select_from(rc)) or 0)
        next_due = conn.scalar(select(func.min(rc.c.due_at)))
        errors = int(conn.scalar(select(func.count()).select_from(t.stream_errors)) or 0)
        cr = t.criteria
        labels = {
            pk: f"{name}@{version}"
            for pk, name, version in conn.execute(select(cr.c.pk, cr.c.name, cr.c.version))
        }
        last_errors = [
            {
                "at": r.at,
                "criterion": labels.get(r.criterion_pk),
                "contact_pk": r.contact_pk,
                "error": r.error,
            }
            for r in conn.execute(
                select(t.stream_errors).order_by(t.stream_errors.c.seq.desc()).limit(5)
            )
        ]
        crits = [
            {"criterion": f"{c.name}@{c.version}", "persona": c.persona_key, "status": c.status}
            for c in og.load(conn, store, (og.ACTIVE, og.BUILDING, og.PAUSED))
        ]
        rec = t.reconciliations
        last_rec = [
            {
                "at": r.at,
                "criterion": labels.get(r.criterion_pk),
                "missing": r.missing,
                "extra": r.extra,
                "repaired": bool(r.repaired),
            }
            for r in conn.execute(select(rec).order_by(rec.c.seq.desc()).limit(10))
        ]
    lag_s = 0.0 if oldest is None else max((utcnow() - oldest).total_seconds(), 0.0)
    return {
        "offset": offset,
        "head": head,
        "lag_changes": head - offset,
        "lag_seconds": round(lag_s, 3),
        "updated_at": updated,
        "rechecks": rechecks,
        "next_recheck_at": next_due,
        "errors": errors,
        "recent_errors": last_errors,
        "criteria": crits,
        "reconciliations": last_rec,
    }
