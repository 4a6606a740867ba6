"""Unauthenticated system routes: /healthz, /readyz, /metrics, and the API's own docs."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)
from sqlalchemy import text

from personatag.buckets import AREAS
from personatag.doctor import check_bucket
from personatag.errors import NotFoundError
from personatag.metrics import default_metrics, render
from personatag.store.db import HEAD_REVISION, is_current
from personatag.web.api.deps import AppContext, ContextDep, SettingsDep
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
def metrics(settings: SettingsDep) -> Response:
    """Prometheus metrics (text format): the same registry the dispatcher records
    in, with the local Flink cluster's autoscaler when it runs."""
    from functools import partial

    from personatag.engines.flink.runtime.cluster import autoscale_state

    default_metrics().watch_autoscaler(partial(autoscale_state, settings))
    payload, content_type = render()
    return Response(payload, media_type=content_type)


@router.get(f"{PREFIX}/openapi.json", include_in_schema=False, **role("public"))
def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


# Swagger UI's files come with the package (web/static/vendor/swagger-ui, with
# its licence and source), so the page works on a machine without internet;
# these two are all it loads.
_SWAGGER_UI = Path(__file__).resolve().parent.parent / "static" / "vendor" / "swagger-ui"
_DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}


@router.get(f"{PREFIX}/docs", include_in_schema=False, **role("public"))
def docs() -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=f"{PREFIX}/openapi.json",
        title="personatag API",
        swagger_js_url=f"{PREFIX}/docs/assets/swagger-ui-bundle.js",
        swagger_css_url=f"{PREFIX}/docs/assets/swagger-ui.css",
        swagger_favicon_url="data:,",  # no request for an icon
    )
    # The workbench's policy would block Swagger UI's scripts: this page gets its own.
    page.headers["content-security-policy"] = docs_csp(bytes(page.body).decode())
    return page


@router.get(f"{PREFIX}/docs/assets/{{name}}", include_in_schema=False, **role("public"))
def docs_asset(name: str) -> Response:
    """One of Swagger UI's files, from the installed package (cached a day)."""
    media_type = _DOCS_ASSETS.get(name)
    if media_type is None:
        raise NotFoundError(f"no API page asset {name!r}")
    return FileResponse(
        _SWAGGER_UI / name, media_type=media_type, headers={"cache-control": "max-age=86400"}
    )
