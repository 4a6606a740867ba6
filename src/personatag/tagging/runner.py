"""Running a job: one JobRunner opens, runs and finishes every ad hoc job,
whether it comes from the command line (`personatag tag|untag`) or from a
request file (the dispatcher, which the API and `submit` feed).

Opening records the request (once per request id) and its job in one write
transaction; running computes each item on the engine and applies all items
in one transaction with the job's outcome: a request is applied completely or
not at all. The runner makes the job's progress and, for a request file's
results, its changes file, and closes them when the job is over.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection

from personatag.config import Settings
from personatag.criteria import references
from personatag.domain import SOURCE_ADHOC, JobStatus, utcnow
from personatag.engines import get_engine
from personatag.engines.base import Engine, Match, MatchSpec
from personatag.engines.control import JobControl, JobStopped
from personatag.errors import ConflictError
from personatag.jobs import repository as jobs
from personatag.jobs.progress import (
    APPLYING,
    DONE,
    EVALUATING,
    WRITING_RESULTS,
    Progress,
    figure,
)
from personatag.memberships.apply import apply_adhoc
from personatag.memberships.log import LogContext
from personatag.store import Store
from personatag.store.matchset import TempPks, is_heavy, materialize
from personatag.store.transient import retrying
from personatag.tagging.changes import ChangesBuilder
from personatag.tagging.contact_lists import FailedRow, LoadedList
from personatag.tagging.fallback import Ran, run_on
from personatag.tagging.outcome import (
    AdhocResult,
    ItemResult,
    RequestFailed,
    reason_of,
    sum_counts,
)
from personatag.tagging.plan import Plan, Resolved

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRequest:
    """A request checked against the store (its plan), ready to be opened.

    `source` and `format` name the request file it came from; a request from
    the command line has neither, one item, and the `contacts_file` it read.
    `via` and `token`: how it was submitted (jobs/submissions.py).
    """

    request_id: str
    plan: Plan
    as_of: datetime
    engine: str
    dry_run: bool = False
    submitted_by: str | None = None
    source: str | None = None
    format: str | None = None
    contacts_file: str | None = None
    row_failures: tuple[FailedRow, ...] = ()
    via: str | None = None
    token: str | None = None

    def spec(self) -> dict[str, Any]:
        """What is recorded with the request; a request id that comes again must
        ask for the same (see jobs.open_request)."""
        common = {"engine": self.engine, "dry_run": self.dry_run, "as_of": self.as_of.isoformat()}
        if self.source is None:
            first = self.plan.items[0]
            return {
                "persona": first.persona.key,
                "action": first.item.action.value,
                **common,
                "criterion": first.criterion.label if first.criterion else None,
                "expr": first.item.expr,
                "contacts": self.contacts_file,
            }
        items = [
            {
                "persona": r.persona.key,
                "action": r.item.action.value,
                "criterion": r.criterion.label if r.criterion else None,
                "expr": r.item.expr,
                "contacts": len(r.item.contact_ids) if r.item.contact_ids is not None else None,
            }
            for r in self.plan.items
        ]
        return {"source": self.source, "format": self.format, **common, "items": items}


@dataclass(frozen=True)
class OpenedJob:
    """A recorded request and its new job: running, or queued for a dispatcher."""

    request: JobRequest
    request_pk: int
    job_pk: int
    queued: bool
    progress: dict[str, Any] | None = None  # a running job's first figure, recorded with it


class JobRun:
    """One job being run (JobRunner.start), used as a context manager: `execute`
    it; with `results`, the caller then writes the request's result files (with
    `changes`, built while the job applied) and says when they are written
    (`done_in`). Leaving the block closes the job's progress and changes."""

    def __init__(
        self, runner: JobRunner, job: OpenedJob, control: JobControl, results: bool
    ) -> None:
        self.job = job
        self.control = control
        self.results = results
        self._runner = runner
        self.progress = Progress(
            runner.store, job.job_pk, every_s=runner.progress_s, written=job.progress
        )
        self.changes = ChangesBuilder(runner.store) if results else None

    def execute(self) -> AdhocResult:
        """Compute and apply; the outcome is recorded. Raises RequestFailed."""
        job, request = self.job, self.job.request
        return execute(
            self._runner.store,
            self._runner.settings,
            request.plan,
            request_id=request.request_id,
            request_pk=job.request_pk,
            job_pk=job.job_pk,
            as_of=request.as_of,
            dry_run=request.dry_run,
            actor=request.submitted_by,
            engine_name=request.engine,
            control=self.control,
            row_failures=request.row_failures,
            changes=self.changes,
            progress=self.progress,
            start=job.queued,
            # A job that succeeded is done, or writing its results: recorded
            # with its outcome.
            then=WRITING_RESULTS if self.results else DONE,
        )

    def done_in(self, conn: Connection) -> None:
        """The job succeeded and its result files are written: recorded in the
        caller's transaction `conn` (the one that ends its request file)."""
        self.progress.phase_in(conn, DONE)

    def close(self) -> None:
        """Nothing more is written once the job is over: a job that failed
        keeps the progress it stopped at."""
        try:
            self.progress.close()
        finally:
            if self.changes is not None:
                self.changes.close()

    def __enter__(self) -> JobRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JobRunner:
    """Opens, runs and finishes ad hoc jobs on one store.

    `progress_s`: a running job writes its progress counts at most this often
    (phase changes are written at once).
    """

    def __init__(self, store: Store, settings: Settings, *, progress_s: float = 1.0) -> None:
        self.store = store
        self.settings = settings
        self.progress_s = progress_s

    def open(
        self,
        request: JobRequest,
        *,
        owner: str | None = None,
        deadline_s: float | None = None,
        bundle_version: str | None = None,
        also: Callable[[Connection], None] | None = None,
    ) -> OpenedJob | AdhocResult:
        """Record the request and a new job in one write transaction: running at
        once, or, with an `owner` (a dispatcher), queued and owned by it.
        `also` runs in the same transaction (a dispatcher names the request on
        its claim there). Returns the recorded result instead when a job of the
        same request id succeeded before; raises ConflictError when the id asks
        for something else, or its job is still queued or running."""
        first = request.plan.items[0]
        queued = owner is not None
        computed = sum(1 for r in request.plan.items if r.ast is not None)
        # A job that runs at once is evaluating from its first moment (a
        # queued one enters it when it starts).
        progress = None if queued or not computed else figure(EVALUATING, 0, computed, "items")
        request_pk, job_pk, previous = jobs.open_request(
            self.store,
            request_id=request.request_id,
            submitted_by=request.submitted_by,
            persona_pk=first.persona.pk,
            action=first.item.action.value,
            engine=request.engine,
            criterion_pk=first.criterion.pk if first.criterion else None,
            expr=first.item.expr,
            as_of=request.as_of,
            dry_run=request.dry_run,
            spec=request.spec(),
            status=JobStatus.QUEUED if queued else JobStatus.RUNNING,
            deadline_at=None if deadline_s is None else utcnow() + timedelta(seconds=deadline_s),
            owner=owner,
            bundle_version=bundle_version,
            progress=progress,
            also=also,
            submitted_via=request.via,
            submitted_token=request.token,
        )
        if previous is not None:  # the same request id ran to completion before
            return AdhocResult.from_json(previous)
        return OpenedJob(request, request_pk, job_pk, queued, progress)

    def start(
        self, job: OpenedJob, *, control: JobControl | None = None, results: bool = False
    ) -> JobRun:
        """A run of `job`, to use as a context manager; `results`: the caller
        writes result files once it succeeded (a request file's)."""
        return JobRun(self, job, control or JobControl(), results)

    def run(self, job: OpenedJob, *, control: JobControl | None = None) -> AdhocResult:
        """Run `job` to its end (nothing more to report): RequestFailed if it fails."""
        with self.start(job, control=control) as run:
            return run.execute()


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
    engine_name: str,
    control: JobControl | None = None,
    row_failures: Sequence[FailedRow] = (),
    changes: ChangesBuilder | None = None,
    progress: Progress,
    start: bool = True,
    then: str | None = None,
) -> AdhocResult:
    """Run a recorded job: compute each item on the engine, then apply all items
    in one transaction with the job's outcome. Raises RequestFailed (the job is
    recorded failed or cancelled; nothing applied). JobRunner calls it, with
    the job's progress and changes; `start`: the job may be queued (it is moved
    to running first, with its first phase), else it was opened running (with
    its first phase: JobRunner.open); `then`: the phase the job
    is in once its outcome commits (written with it), if any.
    """
    control = control or JobControl()
    ended = False  # the job ended before it started (cancelled while queued)
    computed = sum(1 for r in plan.items if r.ast is not None)
    try:
        # An engine that cannot be had fails the job once it has started.
        got: Engine | Exception = get_engine(engine_name, store, settings)
    except Exception as exc:
        got = exc

    def evaluating(conn: Connection) -> None:
        if computed and not isinstance(got, Exception):
            progress.phase_in(conn, EVALUATING, done=0, total=computed, unit="items")

    try:
        if start:  # queued -> running, with the first phase in the same transaction
            status = retrying(
                lambda _: jobs.start_job(store, job_pk, control.deadline_s, also=evaluating),
                what=f"request {request_id}",
            )
            if status is not JobStatus.RUNNING:
                ended = True
                if status is JobStatus.CANCELLED:
                    raise JobStopped(JobStatus.CANCELLED, "cancelled")
                raise ConflictError(f"job {job_pk} is {status}; it does not run")
        if isinstance(got, Exception):
            raise got
        engine = got
        matches: list[Match | None] = []
        warnings: list[str] = []
        ran_on: str | None = None  # the fallback engine that answered, if one did
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
            if spec is None:
                matches.append(None)
            else:
                ran = _compute(store, settings, engine, spec, control, request_id)
                matches.append(ran.answer)
                if ran.warning is not None:
                    # Later items go to the engine that answered; the job
                    # records which ran it, and why.
                    engine = get_engine(ran.engine, store, settings)
                    warnings.append(ran.warning)
                    ran_on = ran.engine
                    retrying(
                        lambda _: jobs.record_engine(store, job_pk, ran_on),  # noqa: B023
                        what=f"request {request_id}",
                    )
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
                then=then,
                warnings=warnings,
                engine=ran_on,
            )

        # One transaction applies the request and records its outcome: when
        # the store fails transiently (a dropped connection, a deadlock) it
        # rolled back whole, and runs again on a fresh connection.
        result = retrying(
            apply_all, what=f"request {request_id}", give_up=lambda: control.stopped() is not None
        )
        if dry_run:
            with store.write() as conn:
                if jobs.finish_job(conn, store, job_pk, result.status, result.as_json()) and then:
                    progress.phase_in(conn, then)
    except Exception as exc:
        failed = exc.status if isinstance(exc, JobStopped) else JobStatus.FAILED
        reason = reason_of(exc)
        log.debug("request %s %s", request_id, failed, exc_info=True)

        def record_failure(_attempt: int) -> None:
            with store.write() as conn:
                jobs.finish_job(conn, store, job_pk, failed, {}, error=reason)

        if not ended:  # a job that ended elsewhere keeps that outcome
            retrying(record_failure, what=f"request {request_id}")
        raise RequestFailed(request_id, reason, failed) from exc
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
    then: str | None,
    warnings: Sequence[str] = (),
    engine: str | None = None,
) -> AdhocResult:
    """Apply every item and record the job's outcome (and its phase `then`),
    in one transaction."""
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
        status = JobStatus.PARTIAL if failures else JobStatus.SUCCEEDED
        result = AdhocResult(
            request_id,
            status,
            sum_counts([res.counts for res in results]),
            dry_run,
            failures,
            failed=len(failures),
            items=results,
            warnings=list(warnings),
            engine=engine,
        )
        # The outcome commits with the memberships; a job that was ended
        # meanwhile (taken over, cancelled) must not apply: roll back.
        if not dry_run:
            if not jobs.finish_job(conn, store, job_pk, status, result.as_json()):
                raise JobStopped(JobStatus.FAILED, "the job was ended elsewhere while it ran")
            if then is not None:
                progress.phase_in(conn, then)
    return result


def _compute(
    store: Store,
    settings: Settings,
    engine: Engine,
    spec: MatchSpec,
    control: JobControl,
    request_id: str,
) -> Ran[Match]:
    """One item's match on `engine`, or on its fallback when it cannot answer."""

    def on(name: str) -> Match:
        chosen = engine if name == engine.name else get_engine(name, store, settings)
        return compute_within(chosen, spec, control)

    return run_on(engine.name, on, what=f"request {request_id}")


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
                    JobStatus.FAILED,
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
