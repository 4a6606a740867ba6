"""Request and job records: every ad hoc run is a request with one job."""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from personatag.domain import utcnow
from personatag.errors import ConflictError
from personatag.store import Store

QUEUED, RUNNING, SUCCEEDED, PARTIAL, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "partial",
    "failed",
    "cancelled",
)
TERMINAL = frozenset({SUCCEEDED, PARTIAL, FAILED, CANCELLED})


def new_request_id(now: datetime | None = None) -> str:
    now = now or utcnow()
    return f"req-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"


def create_request(
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
) -> tuple[int, int]:
    """Record a request and its running job; returns (request pk, job pk)."""
    t = store.tables
    now = utcnow()
    with store.write() as conn:
        exists = conn.scalar(select(t.requests.c.pk).where(t.requests.c.request_id == request_id))
        if exists is not None:
            raise ConflictError(f"request {request_id!r} exists already")
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
            )
            .returning(t.requests.c.pk)
        )
        job_pk = conn.scalar(
            t.jobs.insert()
            .values(
                request_pk=request_pk,
                status=RUNNING,
                engine=engine,
                queued_at=now,
                started_at=now,
            )
            .returning(t.jobs.c.pk)
        )
    return int(request_pk), int(job_pk)


def finish_job(
    conn: Connection,
    store: Store,
    job_pk: int,
    status: str,
    counts: dict[str, Any],
    error: str | None = None,
) -> None:
    jobs = store.tables.jobs
    conn.execute(
        jobs.update()
        .where(jobs.c.pk == job_pk)
        .values(status=status, finished_at=utcnow(), counts=json.dumps(counts), error=error)
    )
