"""Monitoring (jobs, the stream, requests and memberships as charts over time)
and the Flink cluster page."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup, escape

from personatag.web.pages.common import ctx, declare, page_user, render

router = APIRouter(include_in_schema=False)


def code_ticks(text: Any) -> Markup:
    """Text whose `backticked` parts (commands, settings) are shown as code."""
    parts = str(text or "").split("`")
    return Markup("").join(
        Markup("<code>{}</code>").format(part) if i % 2 else escape(part)
        for i, part in enumerate(parts)
    )


def flink_for_page(request: Request) -> dict[str, Any]:
    """The cluster's status, with why it does not answer as HTML (`why`)."""
    from personatag.web.api.flink import cluster_view

    info = cluster_view(ctx(request).settings)
    info["why"] = code_ticks(info.get("reason") or info.get("error") or "no answer")
    return info


@router.get("/monitoring", **declare("viewer"))
def monitoring_page(request: Request) -> HTMLResponse:
    """The charts are drawn by static/js/monitoring.js from /api/v1/monitoring/*;
    the figures of the moment are rendered here."""
    from personatag.engines.local.stream.status import status as stream_status
    from personatag.jobs import stats
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
        flink=flink_for_page(request),
        stream=stream,
        sample_s=app_ctx.settings.stream_sample_s,
        store_kind=store.dialect,
    )


@router.get("/cluster", **declare("viewer"))
def cluster_page(request: Request) -> HTMLResponse:
    """The Flink cluster: reachable or not (and why), task managers, slots, jobs."""
    who = page_user(request, "viewer")
    info = flink_for_page(request)
    return render(request, "cluster.html", who, title="Flink cluster", flink=info)
