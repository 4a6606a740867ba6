"""Unauthenticated system routes: /healthz, /readyz, /metrics, and the API's own docs."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from sqlalchemy import text

from personatag.buckets import AREAS
from personatag.doctor import check_bucket
from personatag.metrics import render
from personatag.store.db import HEAD_REVISION, is_current
from personatag.web.api.deps import AppContext, ContextDep
from personatag.web.auth import role
from personatag.web.security import docs_csp

PREFIX = "/api/v1"

router = APIRouter(tags=["system"])


@router.get("/healthz", response_class=PlainTextResponse, **role("public"))
def healthz() -> str:
    """The process is up (says nothing about the store or buckets: see /readyz)."""
    return "ok\n"


def _readiness(ctx: AppContext) -> list[str]:
    reasons = []
    try:
        with ctx.store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        if not is_current(ctx.store.engine):
            reasons.append(
                f"store: schema is not at revision {HEAD_REVISION}: run `personatag init`"
            )
    except Exception as exc:  # any failure to reach the store means not ready
        reason = getattr(exc, "orig", None) or exc
        reasons.append(f"store: unreachable: {type(reason).__name__}: {reason}")
    for area in AREAS:
        check = check_bucket(ctx.settings, area)
        if check.status == "fail":
            reasons.append(f"bucket {area}: {check.detail}")
    return reasons


@router.get(
    "/readyz",
    **role("public", responses={503: {"description": "not ready; `reasons` says why"}}),
)
async def readyz(ctx: ContextDep, request: Request) -> JSONResponse:
    """Ready to serve: the store answers, its schema is at the newest migration,
    every bucket area can be written, read and deleted, and the background services
    the server runs (if any) are running. 503 with the reasons if not."""
    reasons = await run_in_threadpool(_readiness, ctx)
    for service in getattr(request.app.state, "services", ()):
        if not service.is_alive():
            reasons.append(f"service {service.thread_name}: stopped (the log says why)")
    return JSONResponse({"ready": not reasons, "reasons": reasons}, 503 if reasons else 200)


@router.get("/metrics", response_class=PlainTextResponse, **role("public"))
def metrics() -> Response:
    """Prometheus metrics (text format): the same registry the dispatcher records in."""
    payload, content_type = render()
    return Response(payload, media_type=content_type)


@router.get(f"{PREFIX}/openapi.json", include_in_schema=False, **role("public"))
def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get(f"{PREFIX}/docs", include_in_schema=False, **role("public"))
def docs() -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=f"{PREFIX}/openapi.json",
        title="personatag API",
        swagger_favicon_url="data:,",  # no request to a third party for an icon
    )
    # The workbench's policy would block Swagger UI's scripts: this page gets its own.
    page.headers["content-security-policy"] = docs_csp(bytes(page.body).decode())
    return page
