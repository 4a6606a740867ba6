"""The FastAPI application: `create_app(settings, store)`; nothing happens at import."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi

from personatag import __version__
from personatag.buckets import open_buckets
from personatag.config import Settings
from personatag.service import Service, stop_all
from personatag.store import Store, open_store
from personatag.web import errors, pages
from personatag.web.api import accounts, admin, contacts, criteria, jobs, personas, requests, system
from personatag.web.api import events as events_api
from personatag.web.api import feed as feed_api
from personatag.web.api import flink as flink_api
from personatag.web.api import monitoring as monitoring_api
from personatag.web.api.deps import AppContext
from personatag.web.auth import ERRORS, PUBLIC, SESSION_COOKIE, LoginLimiter
from personatag.web.security import SecurityHeaders, trust_proxies

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
ROUTERS = (
    personas,
    criteria,
    requests,
    jobs,
    contacts,
    accounts,
    admin,
    events_api,
    feed_api,
    monitoring_api,
    flink_api,
)


# Seconds the app's shutdown waits for each of its services (running jobs roll back).
SERVICE_STOP_S = 60.0


def create_app(
    settings: Settings,
    store: Store | None = None,
    *,
    services: Sequence[Service] = (),
    stop_timeout_s: float = SERVICE_STOP_S,
) -> FastAPI:
    """The API over `store` (default: the one `settings` name; it must be initialised)
    and the buckets `settings` name. The caller owns `store` and disposes of it.

    `services` (the dispatcher, the stream processor, the webhook worker) start
    with the app's lifespan and are stopped, up to `stop_timeout_s` s each, when
    it ends; /readyz reports one whose loop ended."""
    if store is None:
        store = open_store(settings.resolved_store_url)
    ctx = AppContext(settings=settings, store=store, buckets=open_buckets(settings))
    running = list(services)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        for service in running:
            service.start()
        try:
            yield
        finally:
            left = await run_in_threadpool(stop_all, running, stop_timeout_s)
            for service in left:
                log.warning("%s did not stop within %s s", service.title, stop_timeout_s)

    app = FastAPI(
        lifespan=lifespan,
        title="personatag",
        version=__version__,
        summary="Tag research readers with personas.",
        openapi_url=None,  # served by system.openapi under /api/v1, with its role declared
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.services = running
    app.state.login_limiter = LoginLimiter.from_settings(settings)
    errors.install(app)
    # Outside the catch-all, so that its 500s carry the headers too.
    app.add_middleware(SecurityHeaders)
    if settings.trusted_proxies:
        app.add_middleware(trust_proxies, proxies=settings.trusted_proxy_list)
    for module in ROUTERS:
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(system.router)
    pages.install(app)
    mount = flink_api.flink_mount(ctx)
    if mount is not None:
        app.router.routes.append(mount)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema plus how to authenticate: a bearer token or the cookie."""
    schema = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"},
        "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
    }
    for path, operations in schema.get("paths", {}).items():
        for op in operations.values():
            if not isinstance(op, dict):
                continue
            if op.get("x-role", PUBLIC) != PUBLIC:
                op["security"] = [{"bearer": []}, {"session": []}]
            _declare_shared_errors(path, op)
    # FastAPI's own 422 body is replaced everywhere by the common error format.
    schemas = schema["components"].get("schemas", {})
    if "#/components/schemas/HTTPValidationError" not in json.dumps(schema["paths"]):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return schema


def _declare_shared_errors(path: str, op: dict[str, Any]) -> None:
    """The error answers that follow from an operation's shape: a body may not
    parse (400); a path parameter may name nothing (404); any input may be invalid
    (422); every operation reads the store, which may be unreachable (503).
    Declared here once instead of on every route."""
    wanted = [503]
    body = op.get("requestBody", {}).get("content", {})
    if body:
        wanted.append(400)
    if "{" in path:
        wanted.append(404)
    if body or op.get("parameters"):
        wanted.append(422)
    responses = op.setdefault("responses", {})
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for status in wanted:
        current = responses.setdefault(str(status), {"description": ERRORS[status]})
        current["description"] = ERRORS[status]
        current["content"] = {"application/json": {"schema": ref}}
