"""Ad hoc requests: tag or untag everyone who matches now (or a list), once.

A request holds one or more items (persona + action + what to match: a stored
criterion, an expression or a list of contact ids). All items of a request
apply in one write transaction, with the job's outcome: a request is applied
completely or not at all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Connection

from personatag.config import Settings
from personatag.criteria import Node, compile_criterion, from_json, references
from personatag.definitions.criteria import Criterion, get_criterion
from personatag.definitions.personas import Persona, get_persona, persona_pks
from personatag.domain import SOURCE_ADHOC, Action, Catalog, check_as_of, utcnow
from personatag.engines import get_engine
from personatag.engines.base import Engine, Match, MatchSpec
from personatag.engines.control import JobControl, JobStopped
from personatag.errors import InputError, PersonatagError
from personatag.jobs import repository as jobs
from personatag.jobs.progress import APPLYING, DONE, EVALUATING, Progress
from personatag.memberships.apply import ApplyCounts, apply_adhoc
from personatag.memberships.log import LogContext
from personatag.requests.results import ChangesBuilder
from personatag.store import Store
from personatag.store.matchset import TempPks, is_heavy, materialize
from personatag.store.transient import describe as describe_store_error
from personatag.store.transient import retrying
from personatag.tagging.contact_lists import FailedRow, LoadedList, read_contact_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One persona and action, and what to match (exactly one of the three)."""

    persona: str | None
    action: Action
    criterion: str | None = None
    expr: str | None = None
    contact_ids: Sequence[tuple[int, str]] | None = None  # (line, id)


@dataclass
class AdhocRequest:
    """What `personatag tag|untag` asks for: one item."""

    persona: str | None
    action: Action
    expr: str | None = None
    criterion: str | None = None
    contacts_file: Path | None = None
    contact_ids: list[str] | None = None
    as_of: datetime | None = None
    dry_run: bool = False
    actor: str | None = None
    request_id: str | None = None
    engine: str = "local"


@dataclass
class ItemResult:
    persona: str
    action: str
    counts: ApplyCounts
    failures: list[FailedRow] = field(default_factory=list)


def _sum(counts: Sequence[ApplyCounts]) -> ApplyCounts:
    return ApplyCounts(
        matched=sum(c.matched for c in counts),
        tagged=sum(c.tagged for c in counts),
        untagged=sum(c.untagged for c in counts),
        already=sum(c.already for c in counts),
        pinned=sum(c.pinned for c in counts),
    )


@dataclass
class AdhocResult:
    request_id: str
    status: str
    counts: ApplyCounts
    dry_run: bool
    failures: list[FailedRow] = field(default_factory=list)
    failed: int = 0  # rows that could not be used (len(failures) on a fresh run)
    items: list[ItemResult] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        c = self.counts
        return {
            "request_id": self.request_id,
            "status": self.status,
            "matched": c.matched,
            "tagged": c.tagged,
            "untagged": c.untagged,
            "already": c.already,
            "failed": self.failed,
            "pinned": c.pinned,
            "dry_run": self.dry_run,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> AdhocResult:
        counts = ApplyCounts(
            matched=data["matched"],
            tagged=data["tagged"],
            untagged=data["untagged"],
            already=data["already"],
            pinned=data["pinned"],
        )
        return AdhocResult(
            data["request_id"], data["status"], counts, data["dry_run"], failed=data["failed"]
        )


class RequestFailed(PersonatagError):
    """A recorded request whose job failed (or was cancelled); nothing was applied."""

    def __init__(self, request_id: str, reason: str, status: str = jobs.FAILED) -> None:
        super().__init__(f"request {request_id} {status}: {reason}")
        self.request_id = request_id
        self.reason = reason
        self.status = status


def reason_of(exc: BaseException) -> str:
    """One line for people (and the job record): no SQL, no parameters."""
    if isinstance(exc, PersonatagError):
        return str(exc)
    # The store error that started it, named (a deadlock, a lost connection),
    # not the "current transaction is aborted" that followed it.
    return describe_store_error(exc)


@dataclass(frozen=True)
class Resolved:
    """An item checked against the store: its persona, criterion and AST exist."""

    item: Item
    persona: Persona
    criterion: Criterion | None
    ast: Node | None


@dataclass(frozen=True)
class Plan:
    items: tuple[Resolved, ...]
    catalog: Catalog
    persona_pks: dict[str, int]


def resolve(store: Store, items: Sequence[Item]) -> Plan:
    """Check every item against the store; raise InputError naming the first problem."""
    out = []
    with store.read() as conn:
        catalog = store.catalog(conn)
        for item in items:
            out.append(_resolve_one(conn, store, catalog, item))
        pks = persona_pks(conn, store)
    return Plan(tuple(out), catalog, pks)


def _resolve_one(conn: Connection, store: Store, catalog: Catalog, item: Item) -> Resolved:
    given = [x is not None for x in (item.expr, item.criterion, item.contact_ids)]
    if sum(given) != 1:
        raise InputError("give exactly one of a criterion, an expression or contacts")
    criterion = None
    ast = None
    if item.criterion is not None:
        criterion = get_criterion(conn, store, item.criterion)
        if item.persona and item.persona != criterion.persona_key:
            raise InputError(
                f"criterion {criterion.label} is for persona {criterion.persona_key!r}, "
                f"not {item.persona!r}"
            )
        if criterion.action is not item.action:
            raise InputError(
                f"criterion {criterion.label} has action {criterion.action.value!r}, not "
                f"{item.action.value!r}: run it with `personatag {criterion.action.value}`"
            )
        persona_key = criterion.persona_key
        ast = from_json(criterion.ast)
        compile_criterion(criterion.expr, catalog)  # still valid against today's schema?
    elif item.persona is None:
        raise InputError("a persona is required")
    else:
        persona_key = item.persona
        if item.expr is not None:
            ast = compile_criterion(item.expr, catalog).ast
    persona = get_persona(conn, store, persona_key, active=True)
    return Resolved(item, persona, criterion, ast)


def execute(
    store: Store,
    settings: Settings,
    plan: Plan,
    *,
    request_id: str,
    request_pk: int,
    job_pk: int,
    as_of: datetime,
    dry_run: bool,
    actor: str | None,
    engine_name: str = "local",
    control: JobControl | None = None,
    row_failures: Sequence[FailedRow] = (),
    changes: ChangesBuilder | None = None,
    progress: Progress | None = None,
) -> AdhocResult:
    """Run a recorded job: compute each item on the engine, then apply all items
    in one transaction with the job's outcome. Raises RequestFailed (the job is
    recorded failed or cancelled; nothing applied).

    The job's progress goes to `progress`; without one, execute records its
    own and marks it done when the job succeeds.
    """
    control = control or JobControl()
    own = progress is None
    progress = progress or Progress(store, job_pk)
    try:
        retrying(
            lambda _: jobs.start_job(store, job_pk, control.deadline_s),
            what=f"request {request_id}",
        )
        engine = get_engine(engine_name, store, settings)
        matches: list[Match | None] = []
        computed = sum(1 for r in plan.items if r.ast is not None)
        if computed:
            progress.phase(EVALUATING, done=0, total=computed, unit="items")
        evaluated = 0
        for r in plan.items:
            control.check()
            spec = None
            if r.ast is not None:
                spec = MatchSpec(
                    ast=r.ast,
                    as_of=as_of,
                    catalog=plan.catalog,
                    persona_pks=plan.persona_pks,
                    job_pk=job_pk,
                    control=control,
                    progress=progress.reporter(),
                )
            matches.append(None if spec is None else compute_within(engine, spec, control))
            if spec is not None:
                evaluated += 1
                progress.count(evaluated, computed, "items")
        control.check()

        def apply_all(attempt: int) -> AdhocResult:
            if attempt > 1:
                control.check()
                # A commit that broke off with the connection may have landed.
                landed = jobs.outcome(store, job_pk)
                if landed is not None:
                    return AdhocResult.from_json(landed)
                if changes is not None:
                    changes.reset()  # what the failed try reported was rolled back
            return _apply_all(
                store,
                settings,
                plan,
                matches,
                progress,
                control,
                request_id=request_id,
                request_pk=request_pk,
                job_pk=job_pk,
                dry_run=dry_run,
                actor=actor,
                row_failures=row_failures,
                changes=changes,
            )

        # One transaction applies the request and records its outcome: when
        # the store fails transiently (a dropped connection, a deadlock) it
        # rolled back whole, and runs again on a fresh connection.
        result = retrying(
            apply_all, what=f"request {request_id}", give_up=lambda: control.stopped() is not None
        )
        if dry_run:
            with store.write() as conn:
                jobs.finish_job(conn, store, job_pk, result.status, result.as_json())
    except Exception as exc:
        status = exc.status if isinstance(exc, JobStopped) else jobs.FAILED
        reason = reason_of(exc)
        log.debug("request %s %s", request_id, status, exc_info=True)

        def record_failure(_attempt: int) -> None:
            with store.write() as conn:
                jobs.finish_job(conn, store, job_pk, status, {}, error=reason)

        retrying(record_failure, what=f"request {request_id}")
        if own:
            progress.close()  # it stays where the job stopped
        raise RequestFailed(request_id, reason, status) from exc
    if own:
        progress.phase(DONE)
        progress.close()
    return result


def _apply_all(
    store: Store,
    settings: Settings,
    plan: Plan,
    matches: Sequence[Match | None],
    progress: Progress,
    control: JobControl,
    *,
    request_id: str,
    request_pk: int,
    job_pk: int,
    dry_run: bool,
    actor: str | None,
    row_failures: Sequence[FailedRow],
    changes: ChangesBuilder | None,
) -> AdhocResult:
    """Apply every item and record the job's outcome, in one transaction."""
    # A dry run writes nothing but its temp tables: no write lock needed.
    with (
        progress.in_transaction(
            APPLYING, total=len(plan.items), unit="items", holds_write_lock=not dry_run
        ) as step,
        store.read() if dry_run else store.write() as conn,
        control.guard(conn),
    ):
        # Every persona of the request at once, in the store's one order:
        # locked item by item, two requests with the same personas in other
        # orders would deadlock.
        store.lock_personas(conn, (r.persona.pk for r in plan.items))
        results = []
        for r, m in zip(plan.items, matches, strict=True):
            results.append(
                _apply_item(
                    conn, store, settings, r, m, request_id, request_pk, actor, dry_run, changes
                )
            )
            step(len(results))
        failures = sorted(
            [*row_failures, *(f for res in results for f in res.failures)],
            key=lambda f: f.line,
        )
        status = jobs.PARTIAL if failures else jobs.SUCCEEDED
        result = AdhocResult(
            request_id,
            status,
            _sum([res.counts for res in results]),
            dry_run,
            failures,
            failed=len(failures),
            items=results,
        )
        # The outcome commits with the memberships; a job that was ended
        # meanwhile (taken over, cancelled) must not apply: roll back.
        if not dry_run and not jobs.finish_job(conn, store, job_pk, status, result.as_json()):
            raise JobStopped(jobs.FAILED, "the job was ended elsewhere while it ran")
    return result


def compute_within(engine: Engine, spec: MatchSpec, control: JobControl) -> Match:
    """engine.compute(spec), but give up when the job's deadline passes or it is
    cancelled, even if the engine stops answering (its thread is left behind)."""
    outcome: list[Match] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            outcome.append(engine.compute(spec))
        except BaseException as exc:  # handed to the job below
            failure.append(exc)

    worker = threading.Thread(target=work, name=f"engine-{engine.name}", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.05)
        stop = control.stopped()
        if stop is not None and worker.is_alive():
            if not control.cancel_event.is_set():  # the deadline, not a cancel or shutdown
                raise JobStopped(
                    jobs.FAILED,
                    f"engine {engine.name!r} did not finish within the deadline of "
                    f"{control.deadline_s:g} s",
                )
            raise stop
    if failure:
        raise failure[0]
    return outcome[0]


def _apply_item(
    conn: Connection,
    store: Store,
    settings: Settings,
    r: Resolved,
    match: Match | None,
    request_id: str,
    request_pk: int,
    actor: str | None,
    dry_run: bool,
    changes: ChangesBuilder | None = None,
) -> ItemResult:
    ctx = LogContext(
        at=utcnow(),
        persona_pk=r.persona.pk,
        source=SOURCE_ADHOC,
        request_pk=request_pk,
        criterion_pk=r.criterion.pk if r.criterion else None,
        actor=actor,
        reason=f"{r.item.action.value} request {request_id}",
    )
    loaded: LoadedList | None = None
    held: TempPks | None = None
    portable = match is not None and match.portable
    # Temp tables are dropped only after success: on a failure the transaction
    # rolls back and takes them with it, and a drop would fail on the aborted
    # transaction (PostgreSQL) and hide the real error.
    if match is not None:
        condition: ColumnElement[bool] = match.condition(conn, store)
        if r.ast is not None and not match.materialized and is_heavy(references(r.ast)):
            held = materialize(conn, store, condition)
            condition = held.contains(store.tables.contacts.c.pk)
            portable = False
    else:
        loaded = LoadedList(conn, store, r.item.contact_ids or (), r.persona.key)
        condition = store.tables.contacts.c.pk.in_(loaded.pks.select())
    counts = apply_adhoc(
        conn,
        store,
        action=r.item.action,
        condition=condition,
        ctx=ctx,
        dry_run=dry_run,
        bulk_threshold=settings.bulk_log_threshold,
        portable=portable,
        bulk=changes.for_persona(r.persona.key) if changes is not None else None,
        known_pks=match.known_pks() if match is not None else None,
    )
    failures = loaded.failed if loaded else []
    if held is not None:
        held.drop(conn)
    if loaded is not None:
        loaded.drop(conn)
    if match is not None:
        match.close(conn)
    return ItemResult(r.persona.key, r.item.action.value, counts, failures)


def run_adhoc(store: Store, req: AdhocRequest, settings: Settings) -> AdhocResult:
    """Validate, record, compute on the engine, apply all-or-nothing, record the outcome."""
    given = [x is not None for x in (req.expr, req.criterion, req.contacts_file, req.contact_ids)]
    if sum(given) != 1:
        raise InputError("give exactly one of --expr, --criterion or --contacts")
    if req.criterion is None and req.persona is None:
        raise InputError("--persona is required")
    as_of = check_as_of(req.as_of or utcnow())
    get_engine(req.engine, store, settings)  # an unknown engine fails before anything is recorded
    ids: list[tuple[int, str]] | None = None
    if req.contacts_file is not None:
        ids = list(read_contact_ids(req.contacts_file))
    elif req.contact_ids is not None:
        ids = list(enumerate(req.contact_ids, start=1))
    item = Item(req.persona, req.action, criterion=req.criterion, expr=req.expr, contact_ids=ids)
    plan = resolve(store, [item])
    first = plan.items[0]
    request_id = req.request_id or jobs.new_request_id()
    spec = {
        "persona": first.persona.key,
        "action": req.action.value,
        "engine": req.engine,
        "dry_run": req.dry_run,
        "as_of": as_of.isoformat(),
        "criterion": first.criterion.label if first.criterion else None,
        "expr": req.expr,
        "contacts": str(req.contacts_file) if req.contacts_file else None,
    }
    request_pk, job_pk, previous = jobs.open_request(
        store,
        request_id=request_id,
        submitted_by=req.actor,
        persona_pk=first.persona.pk,
        action=req.action.value,
        engine=req.engine,
        criterion_pk=first.criterion.pk if first.criterion else None,
        expr=req.expr,
        as_of=as_of,
        dry_run=req.dry_run,
        spec=spec,
    )
    if previous is not None:  # the same request id ran to completion before
        return AdhocResult.from_json(previous)
    return execute(
        store,
        settings,
        plan,
        request_id=request_id,
        request_pk=request_pk,
        job_pk=job_pk,
        as_of=as_of,
        dry_run=req.dry_run,
        actor=req.actor,
        engine_name=req.engine,
    )
