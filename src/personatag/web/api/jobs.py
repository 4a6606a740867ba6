"""/jobs, /status and /stream: list and inspect jobs (viewer), cancel (editor);
where the stream processor is (viewer)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from personatag.audit_log import record_now
from personatag.domain import JobStatus
from personatag.errors import NotFoundError
from personatag.jobs.repository import TERMINAL, cancel_job, get_job, list_jobs
from personatag.jobs.views import JobPublic
from personatag.web.api.deps import StoreDep
from personatag.web.auth import CurrentUser, role
from personatag.web.schemas import JOB_STATUS_DOC, StatusView, StreamStatus

router = APIRouter(tags=["jobs"])

JobRef = Annotated[
    str,
    Path(
        pattern=r"^[A-Za-z0-9._:-]{1,128}$",
        description="a job number, or a request id (its newest job)",
    ),
]


class JobList(BaseModel):
    jobs: list[JobPublic]


def _ref(ref: str) -> str:
    # A number past the store's integer range names no job (and must not reach SQL).
    if ref.isdigit() and len(ref) > 18:
        raise NotFoundError(f"unknown job {ref!r}: give a job number or a request id")
    return ref


@router.get("/jobs", response_model=JobList, **role("viewer"))
def jobs_list(
    store: StoreDep,
    status: Annotated[str | None, Query(max_length=20, json_schema_extra=JOB_STATUS_DOC)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> JobList:
    """Jobs, newest first (queued, running, succeeded, partial, failed, cancelled)."""
    return JobList(jobs=list_jobs(store, status=status, limit=limit))


@router.get("/jobs/{ref}", response_model=JobPublic, **role("viewer"))
def job_show(ref: JobRef, store: StoreDep) -> JobPublic:
    """One job: status, engine, timings, counts, error."""
    return get_job(store, _ref(ref))


@router.post("/jobs/{ref}/cancel", response_model=JobPublic, **role("editor", errors=(409,)))
def job_cancel(ref: JobRef, store: StoreDep, who: CurrentUser) -> JobPublic:
    """Cancel a queued job, or ask a running one to stop (nothing is half-applied)."""
    job = cancel_job(store, _ref(ref))
    record_now(
        store,
        actor=who.user.username,
        action="job.cancel",
        target=job.request_id,
        detail={"job": job.id, "status": job.status},
        source="api",
    )
    return job


@router.get("/stream", response_model=StreamStatus, **role("viewer"))
def stream_status(store: StoreDep) -> dict[str, Any]:
    """The stream processor: feed offset and lag, re-checks, errors, reconciliations."""
    from personatag.engines.local.stream.status import status as current

    return current(store)


@router.get("/status", response_model=StatusView, **role("viewer"))
def status(store: StoreDep) -> dict[str, Any]:
    """The queue, the ten newest jobs, and the failure rate of the last 100."""
    last = list_jobs(store, limit=100)
    finished = [j for j in last if j.status in TERMINAL]
    failed = sum(1 for j in finished if j.status == JobStatus.FAILED)
    return {
        "queued": len(list_jobs(store, status=JobStatus.QUEUED, limit=1000)),
        "running": len(list_jobs(store, status=JobStatus.RUNNING, limit=1000)),
        "recent": last[:10],
        "finished_recent": len(finished),
        "failure_rate": round(failed / len(finished), 4) if finished else None,
    }
