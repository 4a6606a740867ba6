"""Request and job records: every ad hoc run is a request with one job."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, or_, select

from personatag.definitions.personas import persona_pks
from personatag.domain import Action, JobStatus, utcnow
from personatag.engines import engine_names
from personatag.errors import ConflictError, InputError, NotFoundError
from personatag.jobs.submissions import VIA
from personatag.jobs.views import JobPublic, RequestInfo
from personatag.store import Store

#: Job states by what they say, in JobStatus order (tuples: usable in SQL IN).
ACTIVE = tuple(s for s in JobStatus if not s.ended)
TERMINAL = tuple(s for s in JobStatus if s.ended)
APPLIED = tuple(s for s in JobStatus if s.applied)


def new_request_id(now: datetime | None = None) -> str:
    now = now or utcnow()
    return f"req-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"


def _comparable(spec: dict[str, Any]) -> dict[str, Any]:
    # as_of defaults to "now", so a plain re-run differs only there; the same
    # request may come from another file.
    return {k: v for k, v in spec.items() if k not in ("as_of", "source")}


def open_request(
    store: Store,
    *,
    request_id: str,
    submitted_by: str | None,
    persona_pk: int | None,
    action: str,
    engine: str,
    criterion_pk: int | None,
    expr: str | None,
    as_of: datetime,
    dry_run: bool,
    spec: dict[str, Any],
    status: JobStatus = JobStatus.RUNNING,
    deadline_at: datetime | None = None,
    owner: str | None = None,
    bundle_version: str | None = None,
    progress: dict[str, Any] | None = None,
    also: Callable[[Connection], None] | None = None,
    submitted_via: str | None = None,
    submitted_token: str | None = None,
) -> tuple[int, int, dict[str, Any] | None]:
    """Record a request (once per request id) and a new job for it (`status`:
    running, or queued), in one write transaction; `also` writes in it too.
    `progress`: a running job's first progress figure. `submitted_via` and
    `submitted_token`: how it was submitted (see jobs/submissions.py).

    Returns (request pk, job pk, previous result). The request id is an
    idempotency key: when a job of this request already succeeded (or was
    partial), nothing new is started and its recorded result comes back; a
    failed or cancelled request runs again as a new job; one still running is
    a ConflictError.
    """
    t = store.tables
    now = utcnow()
    with store.write() as conn:
        request_pk = conn.scalar(
            select(t.requests.c.pk).where(t.requests.c.request_id == request_id)
        )
        if request_pk is not None:
            stored = json.loads(
                conn.scalar(select(t.requests.c.spec).where(t.requests.c.pk == request_pk)) or "{}"
            )
            if _comparable(stored) != _comparable(spec):
                raise ConflictError(
                    f"request id {request_id!r} was used for a different request; use a new id"
                )
            last = conn.execute(
                select(t.jobs.c.pk, t.jobs.c.status, t.jobs.c.counts)
                .where(t.jobs.c.request_pk == request_pk)
                .order_by(t.jobs.c.pk.desc())
                .limit(1)
            ).first()
            if last is not None and last.status in APPLIED:
                return int(request_pk), int(last.pk), json.loads(last.counts)
            if last is not None and last.status not in TERMINAL:
                raise ConflictError(
                    f"request {request_id!r} is {last.status} (job {last.pk}); wait for it"
                )
        else:
            request_pk = conn.scalar(
                t.requests.insert()
                .values(
                    request_id=request_id,
                    submitted_by=submitted_by,
                    persona_pk=persona_pk,
                    action=action,
                    engine=engine,
                    criterion_pk=criterion_pk,
                    expr=expr,
                    as_of=as_of,
                    dry_run=dry_run,
                    spec=json.dumps(spec, sort_keys=True),
                    created_at=now,
                    submitted_via=submitted_via,
                    submitted_token=submitted_token,
                )
                .returning(t.requests.c.pk)
            )
        job_pk = conn.scalar(
            t.jobs.insert()
            .values(
                request_pk=request_pk,
                status=status,
                engine=engine,
                queued_at=now,
                started_at=now if status == JobStatus.RUNNING else None,
                deadline_at=deadline_at,
                # Owned from the first moment: a dispatcher killed right after
                # creating the job leaves nothing that recovery cannot see.
                owner=owner,
                heartbeat_at=now if owner else None,
                bundle_version=bundle_version,
                progress=json.dumps(progress) if progress is not None else None,
            )
            .returning(t.jobs.c.pk)
        )
        if also is not None:
            also(conn)
    return int(request_pk), int(job_pk), None


def start_job(
    store: Store,
    job_pk: int,
    deadline_s: float | None = None,
    also: Callable[[Connection], None] | None = None,
) -> JobStatus:
    """queued -> running (a job already running keeps its start time); returns
    the job's status now. Anything but running means the job already ended
    (cancelled while queued, or failed by a dispatcher that took its work
    over): it must not run. `also` writes in the same transaction once the
    job runs (its first progress figure).
    """
    jobs = store.tables.jobs
    now = utcnow()
    values: dict[str, Any] = {"status": JobStatus.RUNNING, "started_at": now}
    if deadline_s is not None:
        values["deadline_at"] = now + timedelta(seconds=deadline_s)
    with store.write() as conn:
        conn.execute(
            jobs.update()
            .where(jobs.c.pk == job_pk, jobs.c.status == JobStatus.QUEUED)
            .values(**values)
        )
        status = JobStatus(str(conn.scalar(select(jobs.c.status).where(jobs.c.pk == job_pk))))
        if also is not None and status is JobStatus.RUNNING:
            also(conn)
    return status


def finish_job(
    conn: Connection,
    store: Store,
    job_pk: int,
    status: JobStatus,
    counts: dict[str, Any],
    error: str | None = None,
) -> bool:
    """Record a job's outcome, unless it already has one; returns whether it did."""
    jobs = store.tables.jobs
    return bool(
        conn.execute(
            jobs.update()
            .where(jobs.c.pk == job_pk, jobs.c.status.in_(ACTIVE))
            .values(status=status, finished_at=utcnow(), counts=json.dumps(counts), error=error),
            execution_options={"preserve_rowcount": True},
        ).rowcount
    )


def record_engine(store: Store, job_pk: int, engine: str) -> None:
    """Record the engine that runs a job, when another than asked answered for
    it (the request keeps the engine it asked for)."""
    jobs = store.tables.jobs
    with store.write() as conn:
        conn.execute(jobs.update().where(jobs.c.pk == job_pk).values(engine=engine))


def outcome(store: Store, job_pk: int) -> dict[str, Any] | None:
    """The recorded result of a job that succeeded (or was partial), else None."""
    jobs = store.tables.jobs
    with store.read() as conn:
        row = conn.execute(select(jobs.c.status, jobs.c.counts).where(jobs.c.pk == job_pk)).first()
    if row is None or row.status not in APPLIED or not row.counts:
        return None
    return dict(json.loads(row.counts))


def note_results(conn: Connection, store: Store, job_pk: int, error: str | None) -> None:
    """Record (or clear, with None) on a job that succeeded why its request's
    result files could not be written. A job that failed keeps its own error."""
    jobs = store.tables.jobs
    conn.execute(
        jobs.update().where(jobs.c.pk == job_pk, jobs.c.status.in_(APPLIED)).values(error=error)
    )


def _jobs_query(store: Store) -> Any:
    t = store.tables
    r = t.requests
    return select(
        t.jobs,
        r.c.request_id,
        r.c.submitted_by,
        r.c.submitted_via,
        r.c.submitted_token,
        r.c.dry_run,
    ).join(r, r.c.pk == t.jobs.c.request_pk)


def list_jobs(store: Store, *, status: str | None = None, limit: int = 50) -> list[JobPublic]:
    """Newest jobs first, optionally only those with `status`."""
    if status is not None and status not in set(JobStatus):
        valid = ", ".join(JobStatus)
        raise InputError(f"unknown job status {status!r}: use one of {valid}")
    t = store.tables
    query = _jobs_query(store).order_by(t.jobs.c.pk.desc()).limit(limit)
    if status is not None:
        query = query.where(t.jobs.c.status == status)
    with store.read() as conn:
        return [JobPublic.from_row(r) for r in conn.execute(query)]


def get_job(store: Store, ref: str) -> JobPublic:
    """A job by its number, or the newest job of a request id."""
    t = store.tables
    query = _jobs_query(store)
    if ref.isdigit():
        query = query.where(t.jobs.c.pk == int(ref))
    else:
        query = query.where(t.requests.c.request_id == ref).order_by(t.jobs.c.pk.desc()).limit(1)
    with store.read() as conn:
        row = conn.execute(query).first()
    if row is None:
        raise NotFoundError(f"unknown job {ref!r}: give a job number or a request id")
    return JobPublic.from_row(row)


def cancel_job(store: Store, ref: str) -> JobPublic:
    """Cancel a queued job at once; ask a running one to stop (its dispatcher
    interrupts it within a poll interval). Finished jobs cannot be cancelled."""
    job = get_job(store, ref)
    t = store.tables
    with store.write() as conn:
        if job.status == JobStatus.QUEUED:
            conn.execute(
                t.jobs.update()
                .where(t.jobs.c.pk == job.id, t.jobs.c.status == JobStatus.QUEUED)
                .values(status=JobStatus.CANCELLED, finished_at=utcnow(), error="cancelled")
            )
            # Finish its request file too: a dispatcher that takes the file
            # over after a crash must not run a cancelled request.
            rf = t.request_files
            conn.execute(
                rf.update()
                .where(rf.c.request_id == job.request_id, rf.c.outcome.is_(None))
                .values(outcome=JobStatus.CANCELLED)
            )
        elif job.status == JobStatus.RUNNING:
            conn.execute(t.jobs.update().where(t.jobs.c.pk == job.id).values(cancel_requested=True))
        else:
            raise ConflictError(f"job {job.id} is {job.status}: nothing to cancel")
    return get_job(store, str(job.id))


@dataclass(frozen=True)
class RequestFilter:
    """What `list_requests` keeps: each given field must match (None: any)."""

    persona: str | None = None  # a persona key the request names (any of its items)
    action: str | None = None  # `tag` or `untag` (any of its items)
    engine: str | None = None
    dry_run: bool | None = None
    who: str | None = None  # submitted_by
    source: str | None = None  # one of jobs.submissions.VIA
    status: str | None = None  # its newest job's status


def _spec_names(column: Any, name: str, value: str) -> Any:
    """`column` (a request's spec, JSON written with sort_keys) names `value`
    under `name`, in its own fields or an item's. Text compares the same on
    every store; a quote inside an expression is escaped in the JSON, so the
    text of a criterion cannot match."""
    text = json.dumps({name: value})[1:-1]  # '"persona": "emea-cio"'
    pattern = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(f"%{pattern}%", escape="\\")


def _check_filter(store: Store, f: RequestFilter) -> None:
    if f.status is not None and f.status not in set(JobStatus):
        raise InputError(
            f"status: unknown job status {f.status!r}: use one of {', '.join(JobStatus)}"
        )
    if f.source is not None and f.source not in VIA:
        raise InputError(f"source: unknown source {f.source!r}: use one of {', '.join(VIA)}")
    if f.action is not None and f.action not in set(Action):
        raise InputError(f"action: unknown action {f.action!r}: use one of {', '.join(Action)}")
    if f.engine is not None and f.engine not in (known := engine_names()):
        raise InputError(f"engine: unknown engine {f.engine!r}: use one of {', '.join(known)}")
    if f.persona is not None:
        with store.read() as conn:
            if f.persona not in persona_pks(conn, store):
                raise InputError(f"persona: unknown persona {f.persona!r}")


def list_requests(
    store: Store, f: RequestFilter, *, limit: int = 50, offset: int = 0
) -> tuple[list[tuple[RequestInfo, JobPublic]], int]:
    """Requests that match `f`, newest first, each with its newest job; and how
    many match in all (for paging with `limit` and `offset`)."""
    _check_filter(store, f)
    t = store.tables
    r, j = t.requests, t.jobs
    newest = select(j.c.request_pk, func.max(j.c.pk).label("job_pk")).group_by(j.c.request_pk)
    latest = newest.subquery()
    conditions: list[Any] = []
    if f.persona is not None:
        conditions.append(_spec_names(r.c.spec, "persona", f.persona))
    if f.action is not None:
        conditions.append(or_(r.c.action == f.action, _spec_names(r.c.spec, "action", f.action)))
    if f.engine is not None:
        conditions.append(r.c.engine == f.engine)
    if f.dry_run is not None:
        conditions.append(r.c.dry_run == f.dry_run)
    if f.who is not None:
        conditions.append(r.c.submitted_by == f.who)
    if f.source is not None:
        conditions.append(r.c.submitted_via == f.source)
    if f.status is not None:
        conditions.append(j.c.status == f.status)
    joined = r.join(latest, latest.c.request_pk == r.c.pk).join(j, j.c.pk == latest.c.job_pk)
    query = (
        select(
            j,
            r.c.request_id,
            r.c.submitted_by,
            r.c.submitted_via,
            r.c.submitted_token,
            r.c.dry_run,
            r.c.spec,
            r.c.created_at,
            r.c.as_of,
            r.c.engine.label("request_engine"),
        )
        .select_from(joined)
        .where(*conditions)
    )
    counted = select(func.count()).select_from(joined).where(*conditions)
    with store.read() as conn:
        total = int(conn.scalar(counted) or 0)
        rows = conn.execute(query.order_by(r.c.pk.desc()).limit(limit).offset(offset)).all()
    return [(RequestInfo.from_row(row), JobPublic.from_row(row)) for row in rows], total


def get_request(store: Store, request_id: str) -> RequestInfo | None:
    """What request `request_id` asked for, who submitted it and how; None if unknown."""
    r = store.tables.requests
    query = select(
        r.c.request_id,
        r.c.submitted_by,
        r.c.submitted_via,
        r.c.submitted_token,
        r.c.dry_run,
        r.c.spec,
        r.c.created_at,
        r.c.as_of,
        r.c.engine.label("request_engine"),
    ).where(r.c.request_id == request_id)
    with store.read() as conn:
        row = conn.execute(query).first()
    return None if row is None else RequestInfo.from_row(row)
