"""Requests and jobs: the filtered, paged list of requests (its rows come from
GET /api/v1/requests, with the page's query string as its filters) and one
job's page."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from personatag.definitions.personas import persona_pks
from personatag.domain import Action, JobStatus
from personatag.engines import engine_names
from personatag.errors import NotFoundError
from personatag.jobs.progress import DONE, PHASES, WRITING_RESULTS, describe
from personatag.jobs.repository import get_job, get_request
from personatag.jobs.submissions import VIA
from personatag.schemas import request_id_problem
from personatag.web.pages.common import ctx, declare, not_found, page_user, render

router = APIRouter(include_in_schema=False)

RESULT_FILES = ("summary.json", "failed.csv", "changes.csv.gz")
#: The list's filters: the query parameters of GET /api/v1/requests it passes on.
FILTERS = ("persona", "action", "engine", "dry_run", "who", "source", "status")


@router.get("/requests", **declare("viewer"))
def requests_page(request: Request) -> HTMLResponse:
    who = page_user(request, "viewer")
    store = ctx(request).store
    with store.read() as conn:
        personas = sorted(persona_pks(conn, store))
    chosen = {k: request.query_params.get(k, "") for k in FILTERS}
    options = {
        "persona": personas,
        "action": [a.value for a in Action],
        "engine": engine_names(),
        "source": list(VIA),
        "status": [s.value for s in JobStatus],
    }
    return render(
        request,
        "requests.html",
        who,
        title="Requests",
        chosen=chosen,
        options=options,
        filtered=any(chosen.values()),
    )


def _phases(job: dict[str, Any], from_file: bool) -> list[dict[str, Any]]:
    """The phases a job goes through, each `done`, `now` or `todo` (or
    `stopped`, where a failed or cancelled job stopped), from the progress
    it keeps; the figure of the current one."""
    names = [p for p in PHASES if from_file or p != WRITING_RESULTS]
    progress = job.get("progress") or {}
    current = progress.get("phase")
    status = job["status"]
    if status in (JobStatus.SUCCEEDED, JobStatus.PARTIAL) and current is None:
        current = DONE
    at = names.index(current) if current in names else -1
    shown = []
    for i, name in enumerate(names):
        if at < 0:
            state = "todo"
        elif i < at or (i == at and name == DONE):
            state = "done"
        elif i == at:
            state = "stopped" if status in (JobStatus.FAILED, JobStatus.CANCELLED) else "now"
        else:
            state = "todo"
        figure = describe(progress, "running") if i == at and name != DONE else ""
        shown.append({"name": name, "state": state, "figure": figure})
    return shown


@router.get("/jobs/{job_id}", **declare("viewer"))
def job_page(request: Request, job_id: str) -> HTMLResponse:
    who = page_user(request, "viewer")
    c = ctx(request)
    # A job is named by its number, or by its request's id (its newest job).
    # A number past the store's integer range names no job.
    unusable = len(job_id) > 18 if job_id.isdigit() else request_id_problem(job_id) is not None
    try:
        if unusable:
            raise NotFoundError(job_id)
        job = get_job(c.store, job_id).as_json()
    except NotFoundError:
        return not_found(
            request,
            who,
            f"There is no job {job_id!r}: give a job number (as the Requests page lists "
            "them) or a request id.",
        )
    info = get_request(c.store, job["request_id"])
    results = c.buckets["results"]
    files = [f for f in RESULT_FILES if results.exists(f"{job['request_id']}/{f}")]
    from_file = bool(info and info.file)
    return render(
        request,
        "job.html",
        who,
        title=f"Job {job['id']}",
        job=job,
        info=info,
        files=files,
        phases=_phases(job, from_file),
        progress_text=describe(job["progress"], job["status"]),
        live=job["status"] in (JobStatus.QUEUED, JobStatus.RUNNING),
    )
