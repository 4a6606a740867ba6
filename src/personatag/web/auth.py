"""Who is asking, and may they: bearer tokens, session cookies, CSRF, roles, login limits.

- `Authorization: Bearer <token>` (an API token, `personatag token create` or
  `POST /api/v1/users/{name}/tokens`) wins over the session cookie; a bad
  token is a 401, never a fall-back to the cookie.
- The session cookie (`POST /api/v1/login`) is HttpOnly, SameSite=Lax, and
  Secure when the request came over https. A cookie-authenticated request
  with an unsafe method must carry `X-CSRF-Token` equal to the session's CSRF
  token (returned by login): a 403 otherwise.
- Every route declares its role with `**role("editor")`: the dependency that
  enforces it and `x-role` in the OpenAPI operation, so the declaration can be
  read back from the route (`declared_role`) and tested.
"""

from __future__ import annotations

import functools
import hmac
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Mount

from personatag import accounts
from personatag.config import Settings
from personatag.store import Store
from personatag.web.api.deps import StoreDep
from personatag.web.errors import ApiError
from personatag.web.schemas import ErrorResponse

PUBLIC = "public"
ROLES = (PUBLIC, *accounts.ROLES)
SESSION_COOKIE = "personatag_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Defaults of the login limits (settings login_max_failures*, login_window_s).
LOGIN_FAILURES = 5
LOGIN_WINDOW_S = 300.0


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the user, and how they proved it."""

    user: accounts.User
    via: str  # "token" | "session"
    csrf_token: str | None = None


def _unauthenticated(message: str, code: str = "unauthenticated") -> ApiError:
    return ApiError(401, code, message, headers={"WWW-Authenticate": "Bearer"})


def principal_of(request: Request, store: Store) -> Principal | None:
    """The caller of `request`, None when it carries no credentials at all.

    Raises a 401 for a malformed, unknown, revoked or expired token or session,
    and a 403 for a cookie-authenticated unsafe request without the CSRF header.
    """
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthenticated("the Authorization header must be `Bearer <token>`")
        user = accounts.verify_token(store, token.strip())
        if user is None:
            raise _unauthenticated(
                "the bearer token is unknown, revoked or expired", "invalid_token"
            )
        return Principal(user, "token")
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    found = accounts.session_user(store, cookie)
    if found is None:
        raise _unauthenticated("the session has ended: log in again", "session_expired")
    user, csrf = found
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), csrf.encode()):
            raise ApiError(
                403,
                "csrf_failed",
                f"a request authenticated by the session cookie must send the {CSRF_HEADER} "
                "header with the csrf_token that login returned",
            )
    return Principal(user, "session", csrf)


def optional_principal(request: Request, store: StoreDep) -> Principal | None:
    return principal_of(request, store)


OptionalPrincipal = Annotated[Principal | None, Depends(optional_principal)]


async def current_principal(principal: OptionalPrincipal) -> Principal:
    if principal is None:
        raise _unauthenticated(
            "log in (POST /api/v1/login) or send `Authorization: Bearer <token>`"
        )
    return principal


CurrentUser = Annotated[Principal, Depends(current_principal)]


@functools.cache
def check_role(principal: Principal, role: str) -> Principal:
    """`principal` when their role is at least `role`; a 403 otherwise."""
    if not accounts.role_at_least(principal.user.role, role):
        raise ApiError(
            403,
            "forbidden",
            f"this needs the {role} role; {principal.user.username} is {principal.user.role}",
        )
    return principal


def require(role: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets callers with at least `role` through (401/403 otherwise)."""
    if role not in accounts.ROLES:
        raise ValueError(f"unknown role {role!r}")

    async def dependency(principal: CurrentUser) -> Principal:
        return check_role(principal, role)

    dependency.__name__ = f"require_{role}"
    return dependency


# The error answers routes share, in the common error format (web/errors.py).
# Every route gets 401/403 from its role; 400 (a body that is not JSON), 404 (a
# path naming something that does not exist) and 422 are added to the OpenAPI
# document where they apply (app._openapi); the others a route declares with
# `role(..., errors=(404, 409))`.
ERRORS: dict[int, str] = {
    400: "the request body is not valid JSON",
    401: "no or bad credentials",
    403: "role too low, or CSRF header missing",
    404: "something the request names does not exist",
    409: "conflicts with the current state (e.g. the last admin, a name in use)",
    413: "the body is too large",
    422: "invalid input: `field` and `message` say what and where",
    429: "too many attempts; see Retry-After",
    502: "an upstream system refused or failed",
    503: "the store or the object storage is unavailable; see Retry-After",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` declaring `statuses` as answers in the common error format."""
    return {s: {"model": ErrorResponse, "description": ERRORS[s]} for s in statuses}


def role(
    name: str,
    *,
    errors: tuple[int, ...] = (),
    responses: dict[int | str, dict[str, Any]] | None = None,
    **openapi_extra: Any,
) -> dict[str, Any]:
    """Route keyword arguments declaring (and enforcing) who may call the route, and
    the error statuses (`errors`) it can answer beyond the ones every route may."""
    if name not in ROLES:
        raise ValueError(f"unknown role {name!r}: use one of {', '.join(ROLES)}")
    return {
        "dependencies": [] if name == PUBLIC else [Depends(require(name))],
        "openapi_extra": {"x-role": name, **openapi_extra},
        "responses": {
            **error_responses(*(() if name == PUBLIC else (401, 403)), *errors),
            **(responses or {}),
        },
    }


class RoleMount(Mount):
    """A mounted sub-application with a declared role (it checks the role itself)."""

    def __init__(self, path: str, app: Any, *, role: str, name: str | None = None) -> None:
        super().__init__(path, app=app, name=name)
        self.role = role


def declared_role(route: BaseRoute) -> str | None:
    """The role a route declares, None when it declares none (a bug: see tests)."""
    if isinstance(route, APIRoute):
        value = (route.openapi_extra or {}).get("x-role")
        return value if value in ROLES else None
    if isinstance(route, RoleMount):
        return route.role
    return None


def route_table(app: FastAPI) -> list[tuple[str, tuple[str, ...], str | None, BaseRoute]]:
    """(path, methods, declared role, route) of every route the app serves, with
    routers included under a prefix expanded (FastAPI keeps those lazily)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before lazy includes: app.routes is already flat
        return [
            (
                str(getattr(r, "path", "")),
                tuple(sorted(getattr(r, "methods", None) or ())),
                declared_role(r),
                r,
            )
            for r in app.routes
        ]
    table = []
    for ctx in iter_route_contexts(app.routes):
        route = ctx.original_route
        table.append(
            (ctx.path or "", tuple(sorted(ctx.methods or ())), declared_role(route), route)
        )
    return table


# -- sessions and login limits -----------------------------------------------


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=SESSION_TTL_S,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


class LoginLimiter:
    """Failed logins in a sliding window, counted four ways: per (user name, client
    address), per user name, per client address and over all. A login is refused
    while any of the four is at its limit. In memory: per process; a restart forgets.
    """

    def __init__(
        self,
        limit: int = LOGIN_FAILURES,
        window_s: float = LOGIN_WINDOW_S,
        *,
        per_account: int = 4 * LOGIN_FAILURES,
        per_address: int = 4 * LOGIN_FAILURES,
        overall: int = 20 * LOGIN_FAILURES,
    ) -> None:
        self.window_s = window_s
        self.limits = {
            "pair": limit,
            "account": per_account,
            "address": per_address,
            "all": overall,
        }
        self._failures: dict[tuple[str, ...], deque[float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> LoginLimiter:
        return cls(
            settings.login_max_failures,
            settings.login_window_s,
            per_account=settings.login_max_failures_account,
            per_address=settings.login_max_failures_address,
            overall=settings.login_max_failures_global,
        )

    @staticmethod
    def _keys(key: tuple[str, str]) -> dict[str, tuple[str, ...]]:
        name, address = key
        return {
            "pair": ("pair", name, address),
            "account": ("account", name),
            "address": ("address", address),
            "all": ("all",),
        }

    def _recent(self, key: tuple[str, ...], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def blocked(self, key: tuple[str, str]) -> tuple[str, int] | None:
        """(which limit, seconds until another attempt is allowed) for (user name,
        client address), None when an attempt is allowed now. Which limit is one of
        `pair`, `account`, `address`, `all`."""
        now = time.monotonic()
        worst: tuple[str, int] | None = None
        with self._lock:
            for kind, k in self._keys(key).items():
                limit = self.limits[kind]
                times = self._recent(k, now)
                if len(times) < limit:
                    if not times:
                        self._failures.pop(k, None)
                    continue
                wait = max(1, math.ceil(times[-limit] + self.window_s - now))
                if worst is None or wait > worst[1]:
                    worst = (kind, wait)
        return worst

    def retry_after(self, key: tuple[str, str]) -> int | None:
        """Seconds until another attempt is allowed, None when it is allowed now."""
        found = self.blocked(key)
        return None if found is None else found[1]

    def failed(self, key: tuple[str, str]) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > 10_000:  # many names tried: forget the stale ones
                for old in [
                    k for k, v in self._failures.items() if not v or v[-1] <= now - self.window_s
                ]:
                    del self._failures[old]
            for kind, k in self._keys(key).items():
                times = self._recent(k, now)
                times.append(now)
                while len(times) > self.limits[kind]:  # only the newest `limit` matter
                    times.popleft()

    def succeeded(self, key: tuple[str, str]) -> None:
        """A correct password clears that user's own counts (not the address's or
        the overall one: a valid login must not reset a spraying attacker's)."""
        with self._lock:
            keys = self._keys(key)
            self._failures.pop(keys["pair"], None)
            self._failures.pop(keys["account"], None)


def login_limiter(request: Request) -> LoginLimiter:
    limiter: LoginLimiter = request.app.state.login_limiter
    return limiter


def client_address(request: Request) -> str:
    """The client's address: the socket's peer, or what a trusted proxy says it is
    (PERSONATAG_TRUSTED_PROXIES, applied by `personatag.web.security`)."""
    return request.client.host[:64] if request.client else "unknown"
