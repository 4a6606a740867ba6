"""One error format for every answer that is not a success.

    {"error": {"status": 422, "code": "invalid_criterion", "message": "...",
               "field": "expr", "line": 1, "col": 23}}

`field`, `line` and `col` appear when known; some errors add more (`errors`: every
validation problem; `rows`: the rows of an uploaded file that cannot be used).
Bad input is never a 500: only a bug or a broken store or bucket is, and its
message is generic (the details go to the log with the same error id).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from personatag.buckets import BucketError
from personatag.criteria.errors import CriteriaError
from personatag.errors import (
    ConfigError,
    ConflictError,
    InputError,
    NotFoundError,
    PersonatagError,
)
from personatag.requests.files import RequestFileError
from personatag.store.db import StoreUnreachable
from personatag.store.transient import transient

log = logging.getLogger(__name__)

# How long a client is asked to wait before it tries again while the store
# does not answer (a database restarting, a dropped connection, a deadlock).
STORE_RETRY_AFTER_S = 5

_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_attempts",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An answer other than success, raised anywhere in a request."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})
        self.extra = extra


def error_body(status: int, code: str, message: str, **fields: Any) -> dict[str, Any]:
    body = {"status": status, "code": code, "message": message}
    body.update({k: v for k, v in fields.items() if v is not None})
    return {"error": body}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    **fields: Any,
) -> JSONResponse:
    return JSONResponse(error_body(status, code, message, **fields), status, headers=headers)


def _field_path(loc: tuple[Any, ...]) -> str | None:
    """`("body", "contacts", 2)` -> `contacts[2]`; the request part is left out."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for this type
    if any(e.get("type") == "json_invalid" for e in exc.errors()):
        return error_response(400, "invalid_json", "the request body is not valid JSON")
    problems = [
        {
            "field": _field_path(tuple(e.get("loc", ()))),
            "message": str(e.get("msg", "invalid")).removeprefix("Value error, "),
        }
        for e in exc.errors()
    ] or [{"field": None, "message": "invalid request"}]
    field, message = problems[0]["field"], str(problems[0]["message"])
    return error_response(
        422,
        "validation_error",
        f"{field}: {message}" if field else message,
        field=field,
        errors=problems,
    )


def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)  # noqa: S101
    return error_response(
        exc.status,
        exc.code,
        exc.message,
        headers=exc.headers,
        field=exc.field,
        **exc.extra,
    )


def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else _CODES.get(status, "error")
    headers = dict(getattr(exc, "headers", None) or {})
    if status == 404 and message == "Not Found":
        message = f"no such path: {request.url.path}"
    if status == 405:
        allowed = allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        message = f"{request.method} is not allowed on {request.url.path}: use {', '.join(allowed)}"
    return error_response(status, _CODES.get(status, "error"), message, headers=headers or None)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers at the request's path (Starlette's own 405
    names only the first route that matched the path)."""
    if request.url.path.startswith("/static/"):
        return ["GET", "HEAD"]
    methods = set()
    for route in request.app.router.routes:
        if isinstance(route, Mount):  # a mounted app answers its own 405s
            continue
        for method in _METHODS:
            match, _ = route.matches({**request.scope, "method": method})
            if match == Match.FULL:
                methods.add(method)
    return sorted(methods)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _personatag(request: Request, exc: Exception) -> JSONResponse:
    """Map the project's errors (raised by the modules the routes call) to answers."""
    if isinstance(exc, CriteriaError):
        # Criteria text travels in a field called `expr` in every request body.
        return error_response(
            422, "invalid_criterion", str(exc), field="expr", line=exc.line, col=exc.col
        )
    if isinstance(exc, RequestFileError):
        return error_response(422, "invalid_request_file", str(exc), line=exc.line)
    if isinstance(exc, StoreUnreachable):
        return _store_unavailable(request, str(exc), "the store is unreachable")
    if isinstance(exc, BucketError):
        return _unexpected(request, exc, 503, "storage_error", "the object storage failed")
    if isinstance(exc, NotFoundError):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, ConflictError):
        return error_response(409, "conflict", str(exc))
    if isinstance(exc, InputError):
        return error_response(422, "invalid_input", str(exc))
    if isinstance(exc, ConfigError):
        return _unexpected(request, exc, 500, "server_misconfigured", "the server is misconfigured")
    # Other PersonatagErrors are failures a person can act on (e.g. a store out of date).
    return error_response(409, "failed", str(exc))


def _store_failed(request: Request, exc: Exception) -> JSONResponse:
    """A store error: 503 with Retry-After when it is transient (the store is
    unreachable or restarting, a deadlock), else a 500 like any other bug."""
    cause = transient(exc)
    if cause is None:
        return _unexpected(request, exc, 500, "internal_error", "an unexpected error")
    return _store_unavailable(request, str(cause), f"the store is unavailable ({cause.kind})")


def _store_unavailable(request: Request, detail: str, what: str) -> JSONResponse:
    log.warning("%s %s: the store failed (%s)", request.method, request.url.path, detail)
    return error_response(
        503,
        "store_unavailable",
        f"{what}; try again shortly",
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


def _too_deep(request: Request, exc: Exception) -> JSONResponse:
    # Only input can nest this deeply (a criterion of thousands of parentheses):
    # the recursive parsers give up, and that is the input's fault, not a bug.
    return error_response(422, "too_deeply_nested", "the input is nested too deeply")


def _unexpected(
    request: Request, exc: BaseException, status: int, code: str, what: str
) -> JSONResponse:
    error_id = secrets.token_hex(6)
    log.error(
        "%s %s failed (error id %s)",
        request.method,
        request.url.path,
        error_id,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    return error_response(status, code, f"{what}; it was logged with error id {error_id}")


class CatchAll:
    """Answer an unexpected exception with a generic 500 in the common format
    (logged with an error id) instead of a bare text page; nothing is re-raised."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:  # too late for an error body; the client sees a cut response
                log.exception("%s %s failed while streaming", scope["method"], scope["path"])
                return
            response = _unexpected(
                Request(scope), exc, 500, "internal_error", "an unexpected error"
            )
            await response(scope, receive, send)


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the common format."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(PersonatagError, _personatag)
    app.add_exception_handler(RecursionError, _too_deep)
    app.add_exception_handler(DBAPIError, _store_failed)
    app.add_middleware(CatchAll)
