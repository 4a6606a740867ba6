"""Monitoring: jobs, the stream and the Flink cluster."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from personatag.errors import PersonatagError
from personatag.web.pages.common import ctx, declare, page_user, render

router = APIRouter(include_in_schema=False)


@router.get("/monitoring", **declare("viewer"))
def monitoring_page(request: Request) -> HTMLResponse:
    from personatag.domain import JobStatus
    from personatag.engines.flink.runtime import cluster
    from personatag.jobs.repository import list_jobs

    who = page_user(request, "viewer")
    app_ctx = ctx(request)
    store = app_ctx.store
    recent = [j.as_json() for j in list_jobs(store, limit=20)]
    ended = [j for j in recent if JobStatus(j["status"]).ended]
    failed = sum(1 for j in ended if j["status"] in (JobStatus.FAILED, JobStatus.CANCELLED))
    status = {
        "queued": len(list_jobs(store, status=JobStatus.QUEUED, limit=1000)),
        "running": len(list_jobs(store, status=JobStatus.RUNNING, limit=1000)),
        "recent": recent,
        "failure_rate": failed / len(ended) if ended else 0.0,
    }
    try:
        info = cluster.status(app_ctx.settings)
    except PersonatagError as exc:
        info = {"reachable": False, "url": "-", "error": str(exc)}
    flink = {
        "reachable": info.get("reachable"),
        "url": info.get("url"),
        "error": info.get("error"),
        "task_managers": len(info.get("task_managers") or []),
        "slots_total": info.get("slots_total"),
        "slots_available": info.get("slots_available"),
        "jobs_running": (info.get("jobs") or {}).get("running", 0),
    }
    from personatag.engines.local.stream.status import status as stream_status
    from personatag.metrics import default_metrics

    stream = stream_status(store)
    registry = default_metrics().registry

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels or None) or 0.0

    stream["rates"] = {
        "changes": sample("personatag_stream_changes_per_second"),
        "evaluations": sample("personatag_stream_evaluations_per_second"),
        "entered": sample("personatag_stream_memberships_changed_total", change="enter"),
        "exited": sample("personatag_stream_memberships_changed_total", change="exit"),
        "repairs": sample("personatag_reconciliation_repairs_total"),
    }
    return render(
        request,
        "monitoring.html",
        who,
        title="Monitoring",
        status=status,
        flink=flink,
        stream=stream,
        store_kind=store.dialect,
    )
