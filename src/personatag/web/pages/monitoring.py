"""Monitoring (jobs, the stream, requests and memberships as charts over time)
and the Flink cluster page."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from personatag.web.pages.common import ctx, declare, page_user, render

router = APIRouter(include_in_schema=False)


@router.get("/monitoring", **declare("viewer"))
def monitoring_page(request: Request) -> HTMLResponse:
    """The charts are drawn by static/js/monitoring.js from /api/v1/monitoring/*;
    the figures of the moment are rendered here."""
    from personatag.engines.local.stream.status import status as stream_status
    from personatag.jobs import stats
    from personatag.web.api.flink import cluster_view
    from personatag.web.api.monitoring import stream_health

    who = page_user(request, "viewer")
    app_ctx = ctx(request)
    store = app_ctx.store
    stream = stream_status(store)
    health = stream_health(store, app_ctx.settings, hours=1)
    last = health["samples"][-1] if health["samples"] else None
    stream["running"] = health["running"]
    stream["last_sample_at"] = health["last_sample_at"]
    stream["changes_per_s"] = last["changes_per_s"] if last else None
    stream["evaluations_per_s"] = last["evaluations_per_s"] if last else None
    return render(
        request,
        "monitoring.html",
        who,
        title="Monitoring",
        jobs=stats.jobs_now(store),
        flink=cluster_view(app_ctx.settings),
        stream=stream,
        sample_s=app_ctx.settings.stream_sample_s,
        store_kind=store.dialect,
    )


@router.get("/cluster", **declare("viewer"))
def cluster_page(request: Request) -> HTMLResponse:
    """The Flink cluster: reachable or not (and why), task managers, slots, jobs."""
    from personatag.web.api.flink import cluster_view

    who = page_user(request, "viewer")
    info = cluster_view(ctx(request).settings)
    return render(request, "cluster.html", who, title="Flink cluster", flink=info)
