"""Requests and jobs."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from personatag.errors import PersonatagError
from personatag.web.pages.common import ctx, declare, page_user, render

router = APIRouter(include_in_schema=False)


@router.get("/requests", **declare("viewer"))
def requests_page(request: Request) -> HTMLResponse:
    who = page_user(request, "viewer")
    return render(request, "requests.html", who, title="Requests")


@router.get("/jobs/{job_id}", **declare("viewer"))
def job_page(request: Request, job_id: str) -> HTMLResponse:
    from personatag.jobs.repository import get_job

    who = page_user(request, "viewer")
    try:
        job = get_job(ctx(request).store, job_id).as_json()
    except PersonatagError as exc:
        return render(request, "forbidden.html", who, 404, title="Not found", message=str(exc))
    from personatag.jobs.progress import describe

    progress_text = describe(job["progress"], job["status"])
    return render(
        request, "job.html", who, title=f"Job {job['id']}", job=job, progress_text=progress_text
    )
