"""The login page and the dashboard (home): personas, recent requests, the
stream's health, today's jobs and the Flink cluster at a glance."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from personatag.web.auth import PUBLIC
from personatag.web.pages.common import ctx, declare, page_user, render

router = APIRouter(include_in_schema=False)

# Personas shown as chips on the dashboard (the largest first).
TOP_PERSONAS = 8
RECENT_REQUESTS = 8


@router.get("/login", **declare(PUBLIC))
def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html", None, title="Log in")


def stream_glance(store: Any, settings: Any) -> dict[str, Any]:
    """Whether the stream runs, its lag now and its changes/s over the last sample."""
    from personatag.engines.local.stream.status import status
    from personatag.web.api.monitoring import stream_health

    health = stream_health(store, settings, hours=1)
    now = status(store)
    last = health["samples"][-1] if health["samples"] else None
    return {
        "running": health["running"],
        "last_sample_at": health["last_sample_at"],
        "lag_changes": now["lag_changes"],
        "lag_seconds": now["lag_seconds"],
        "changes_per_s": last["changes_per_s"] if last else None,
        "criteria": len(now["criteria"]),
    }


@router.get("/", **declare("viewer"))
def home(request: Request) -> HTMLResponse:
    from personatag.jobs import stats
    from personatag.web.api.monitoring import persona_sizes
    from personatag.web.pages.monitoring import flink_for_page

    who = page_user(request, "viewer")
    app_ctx = ctx(request)
    store = app_ctx.store
    personas = persona_sizes(store)
    return render(
        request,
        "home.html",
        who,
        title="Dashboard",
        personas=personas[:TOP_PERSONAS],
        persona_count=len(personas),
        recent=stats.recent_requests(store, RECENT_REQUESTS),
        jobs=stats.jobs_now(store),
        stream=stream_glance(store, app_ctx.settings),
        flink=flink_for_page(request),
    )
