"""/flink/: the Flink dashboard and REST API, read-only, for any logged-in user;
and /api/v1/flink/cluster: the cluster at a glance (the Flink cluster page).

The proxy (`personatag.engines.flink.runtime.proxy.read_only_proxy`) is a WSGI app; it is
bridged with a2wsgi when installed, else Starlette's WSGIMiddleware while
Starlette still ships it, else a small buffering adapter below. The gate in
front checks credentials the same way the API does (viewer or more).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from personatag.config import Settings
from personatag.web.api.deps import AppContext, SettingsDep
from personatag.web.auth import RoleMount, check_role, principal_of, role
from personatag.web.errors import ApiError, error_response

PATH = "/flink"

router = APIRouter(tags=["flink"])


class TaskManager(BaseModel):
    id: str | None
    slots_total: int
    slots_free: int
    memory_bytes: int | None = Field(description="configured process memory, bytes")
    cpu_cores: int | None
    last_heartbeat: str | None = Field(description="UTC time of its last heartbeat")


class FlinkJob(BaseModel):
    id: str | None
    name: str | None
    state: str | None
    start_time: str | None
    end_time: str | None = None
    duration_ms: int | None


class ClusterView(BaseModel):
    url: str
    reachable: bool
    reason: str | None = Field(
        None, description="why it does not answer, in words, with what to do"
    )
    error: str | None = Field(None, description="the error as the REST client saw it")
    managed: bool = Field(description="a supervisor of this data dir runs it")
    flink_version: str | None = None
    slots_total: int
    slots_available: int
    jobs: dict[str, int] = Field(description="jobs running, finished, failed, cancelled")
    task_managers: list[TaskManager]
    running_jobs: list[FlinkJob]
    recent_jobs: list[FlinkJob] = Field(default_factory=list, description="ended, newest first")
    dashboard: str | None = Field(description="the read-only dashboard proxy, when configured")
    autoscale: dict[str, Any] | None = Field(
        None,
        description="the local cluster's autoscaler: enabled, minimum, maximum, current and "
        "target task managers, the reason for the last decision, rescales in the last hour, "
        "the recent rescales (absent for a cluster not run from this data dir)",
    )


def cluster_view(settings: Settings) -> dict[str, Any]:
    """The cluster's status (engines.flink.runtime.cluster.status); a cluster
    that answers with an error counts as not reachable, with that error."""
    from personatag.engines.flink.runtime.cluster import status
    from personatag.engines.flink.runtime.home import rest_url
    from personatag.errors import PersonatagError

    try:
        info = status(settings)
    except PersonatagError as exc:
        url = rest_url(settings)
        info = {
            "url": url,
            "reachable": False,
            "managed": False,
            "reason": f"the cluster at {url} answered with an error: {exc}",
            "error": str(exc),
            "slots_total": 0,
            "slots_available": 0,
            "jobs": {},
            "task_managers": [],
            "running_jobs": [],
        }
    info["dashboard"] = PATH + "/" if flink_upstream(settings) is not None else None
    return info


@router.get("/flink/cluster", response_model=ClusterView, **role("viewer"))
async def flink_cluster(settings: SettingsDep) -> dict[str, Any]:
    """The Flink cluster: reachable or not (and why), task managers, slots,
    running and recently ended jobs, and the read-only dashboard's address."""
    return await run_in_threadpool(cluster_view, settings)


def flink_upstream(settings: Settings) -> str | None:
    """The cluster to proxy: PERSONATAG_FLINK_URL, or the local cluster once
    `personatag flink start` has configured it; None when there is neither."""
    from personatag.engines.flink.runtime.cluster import ClusterLayout
    from personatag.engines.flink.runtime.home import rest_url

    if settings.flink_url or ClusterLayout.of(settings).config_file.exists():
        return rest_url(settings)
    return None


def wsgi_to_asgi(wsgi: Callable[..., Iterable[bytes]]) -> ASGIApp:
    try:
        from a2wsgi import WSGIMiddleware  # type: ignore[import-not-found,unused-ignore]

        return WSGIMiddleware(wsgi)  # type: ignore[no-any-return,unused-ignore]
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated in Starlette 1.x, still works
            from starlette.middleware.wsgi import WSGIMiddleware as StarletteWSGI
        return StarletteWSGI(wsgi)
    except ImportError:
        return _BufferedWSGI(wsgi)


class _BufferedWSGI:
    """A minimal WSGI bridge: the request and response are held in memory."""

    def __init__(self, wsgi: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi = wsgi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status_headers: list[Any] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            status_headers[:] = [int(status.split(" ", 1)[0]), headers]
            return lambda _data: None

        def run() -> bytes:
            result = self.wsgi(_environ(scope, body), start_response)
            try:
                return b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()

        payload = await run_in_threadpool(run)
        status, headers = status_headers
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _environ(scope: Scope, body: bytes) -> dict[str, Any]:
    root = scope.get("root_path", "")
    path = scope["path"]
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root,
        "PATH_INFO": path[len(root) :] if path.startswith(root) else path,
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": (scope.get("server") or ("localhost", 80))[0],
        "SERVER_PORT": str((scope.get("server") or ("localhost", 80))[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "CONTENT_LENGTH": str(len(body)),
    }
    for name, value in scope["headers"]:
        key = name.decode("latin-1").upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        environ[key] = value.decode("latin-1")
    return environ


class FlinkGate:
    """Lets callers with at least the viewer role through to the proxy."""

    def __init__(self, ctx: AppContext, app: ASGIApp) -> None:
        self.ctx = ctx
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope)
        try:
            principal = await run_in_threadpool(principal_of, request, self.ctx.store)
            if principal is None:
                raise ApiError(
                    401,
                    "unauthenticated",
                    "log in (POST /api/v1/login) or send `Authorization: Bearer <token>`",
                )
            check_role(principal, "viewer")
        except ApiError as exc:
            response = error_response(exc.status, exc.code, exc.message, headers=exc.headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def flink_mount(ctx: AppContext) -> RoleMount | None:
    """The /flink mount, or None when no Flink cluster is configured."""
    upstream = flink_upstream(ctx.settings)
    if upstream is None:
        return None
    from personatag.engines.flink.runtime.proxy import read_only_proxy

    proxied = wsgi_to_asgi(read_only_proxy(upstream, prefix=PATH))
    return RoleMount(PATH, FlinkGate(ctx, proxied), role="viewer", name="flink")
