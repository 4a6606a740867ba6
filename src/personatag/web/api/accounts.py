"""Sessions (/login, /logout: public; /me: viewer) and accounts (/users, /tokens: admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel

from personatag import accounts
from personatag.audit_log import record_now
from personatag.errors import ConflictError
from personatag.web.api.deps import StoreDep
from personatag.web.auth import (
    SESSION_COOKIE,
    SESSION_TTL_S,
    CurrentUser,
    LoginLimiter,
    clear_session_cookie,
    client_address,
    login_limiter,
    principal_of,
    role,
    set_session_cookie,
)
from personatag.web.errors import ApiError
from personatag.web.schemas import (
    ErrorResponse,
    LoginRequest,
    LoginResponse,
    Me,
    PasswordReset,
    RoleUpdate,
    TokenCreate,
    TokenCreated,
    TokenPublic,
    UserCreate,
    UserPublic,
)

router = APIRouter(tags=["accounts"])

TokenId = Annotated[int, Path(ge=1, le=2**63 - 1)]
UserName = Annotated[str, Path(max_length=200)]


class UserList(BaseModel):
    users: list[UserPublic]


class TokenList(BaseModel):
    tokens: list[TokenPublic]


def user_public(u: accounts.User) -> dict[str, Any]:
    return {
        "username": u.username,
        "role": u.role,
        "created_at": u.created_at,
        "disabled": u.disabled,
        "last_login_at": u.last_login_at,
    }


def token_public(t: accounts.TokenInfo) -> dict[str, Any]:
    return {
        "id": t.id,
        "username": t.username,
        "name": t.name,
        "prefix": t.prefix,
        "created_at": t.created_at,
        "last_used_at": t.last_used_at,
        "expires_at": t.expires_at,
        "revoked": t.revoked,
    }


# -- sessions ------------------------------------------------------------------

_TOO_MANY = {
    "pair": "too many failed logins for {name!r} from this address",
    "account": "too many failed logins for {name!r}",
    "address": "too many failed logins from this address",
    "all": "too many failed logins on this server",
}


@router.post(
    "/login",
    response_model=LoginResponse,
    **role(
        "public",
        responses={
            401: {"model": ErrorResponse, "description": "wrong user name or password"},
            403: {"model": ErrorResponse, "description": "the user is disabled"},
            429: {"model": ErrorResponse, "description": "too many failed attempts"},
        },
    ),
)
def login(
    body: LoginRequest,
    request: Request,
    response: Response,
    store: StoreDep,
    limiter: Annotated[LoginLimiter, Depends(login_limiter)],
) -> dict[str, Any]:
    """Start a session: sets the session cookie and returns the CSRF token that
    cookie-authenticated writes must send as `X-CSRF-Token`. Failed attempts are
    limited per user name and address, per user name, per address and over all
    (settings `login_*`; then 429 with Retry-After)."""
    key = (body.username.lower(), client_address(request))
    blocked = limiter.blocked(key)
    if blocked is not None:
        kind, wait = blocked
        raise ApiError(
            429,
            "too_many_attempts",
            f"{_TOO_MANY[kind].format(name=body.username)}: try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    try:
        user = accounts.authenticate(store, body.username, body.password, tell_disabled=True)
    except accounts.DisabledUserError as exc:
        limiter.failed(key)
        record_now(
            store,
            actor=None,
            action="login.disabled",
            target=body.username.lower()[:64],
            detail={"client": key[1]},
            source="api",
        )
        raise ApiError(403, "user_disabled", str(exc)) from None
    if user is None:
        limiter.failed(key)
        record_now(
            store,
            actor=None,
            action="login.failed",
            target=body.username.lower()[:64],
            detail={"client": key[1]},
            source="api",
        )
        raise ApiError(401, "invalid_credentials", "wrong user name or password")
    limiter.succeeded(key)
    token, csrf = accounts.create_session(store, user, ttl_s=SESSION_TTL_S)
    record_now(
        store,
        actor=user.username,
        action="login",
        target=user.username,
        detail={"client": key[1]},
        source="api",
    )
    set_session_cookie(request, response, token)
    # Read again: the session's start is the user's last login.
    return {"csrf_token": csrf, "user": user_public(accounts.get_user(store, user.username))}


@router.post("/logout", status_code=204, **role("public"))
def logout(request: Request, store: StoreDep) -> Response:
    """End the session of the cookie (with `X-CSRF-Token`) and clear the cookie."""
    response = Response(status_code=204)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and accounts.session_user(store, cookie) is not None:
        principal = principal_of(request, store)  # a 403 without the CSRF header
        accounts.end_session(store, cookie)
        if principal is not None:
            name = principal.user.username
            record_now(store, actor=name, action="logout", target=name, source="api")
    clear_session_cookie(request, response)
    return response


@router.get("/me", response_model=Me, **role("viewer"))
def me(who: CurrentUser) -> dict[str, Any]:
    """The caller, and how they authenticated (`token` or `session`)."""
    return {**user_public(who.user), "via": who.via}


# -- users and tokens ------------------------------------------------------------


@router.get("/users", response_model=UserList, **role("admin"))
def users_list(store: StoreDep) -> dict[str, Any]:
    """Every user, disabled ones included."""
    return {"users": [user_public(u) for u in accounts.list_users(store)]}


@router.post("/users", status_code=201, response_model=UserPublic, **role("admin", errors=(409,)))
def user_create(body: UserCreate, store: StoreDep, who: CurrentUser) -> dict[str, Any]:
    """Create a user (password: 12+ characters of at least two kinds)."""
    user = accounts.create_user(
        store, body.username, body.password, body.role, actor=who.user.username, source="api"
    )
    return user_public(user)


@router.put("/users/{username}/role", response_model=UserPublic, **role("admin", errors=(409,)))
def user_role(
    username: UserName, body: RoleUpdate, store: StoreDep, who: CurrentUser
) -> dict[str, Any]:
    """Change a user's role (refused for the last active admin)."""
    user = accounts.set_role(store, username, body.role, actor=who.user.username, source="api")
    return user_public(user)


@router.post("/users/{username}/disable", response_model=UserPublic, **role("admin", errors=(409,)))
def user_disable(username: UserName, store: StoreDep, who: CurrentUser) -> dict[str, Any]:
    """Disable a user: no more logins, tokens revoked, sessions ended (idempotent).
    Refused for yourself and for the last active admin."""
    if username.lower() == who.user.username:
        raise ConflictError(
            f"you cannot disable yourself ({who.user.username!r}): ask another admin"
        )
    user = accounts.disable_user(store, username, actor=who.user.username, source="api")
    return user_public(user)


@router.post("/users/{username}/enable", response_model=UserPublic, **role("admin"))
def user_enable(username: UserName, store: StoreDep, who: CurrentUser) -> dict[str, Any]:
    """Let a disabled user log in again (idempotent); revoked tokens stay revoked."""
    user = accounts.enable_user(store, username, actor=who.user.username, source="api")
    return user_public(user)


@router.post("/users/{username}/password-reset", response_model=PasswordReset, **role("admin"))
def user_password_reset(username: UserName, store: StoreDep, who: CurrentUser) -> dict[str, Any]:
    """Give the user a new generated password, in this answer only (only its hash
    is stored); the user's web sessions end, API tokens stay valid."""
    password = accounts.reset_password(store, username, actor=who.user.username, source="api")
    return {"user": user_public(accounts.get_user(store, username)), "password": password}


@router.get("/users/{username}/tokens", response_model=TokenList, **role("admin"))
def tokens_list(username: UserName, store: StoreDep) -> dict[str, Any]:
    """The user's API tokens, revoked and expired ones too (never the secrets)."""
    return {"tokens": [token_public(t) for t in accounts.list_tokens(store, username)]}


@router.post(
    "/users/{username}/tokens",
    status_code=201,
    response_model=TokenCreated,
    **role("admin", errors=(409,)),
)
def token_create(
    username: UserName, body: TokenCreate, store: StoreDep, who: CurrentUser
) -> dict[str, Any]:
    """A new API token for the user; the token is in this answer only."""
    token, info = accounts.create_token(
        store,
        username,
        body.name,
        actor=who.user.username,
        expires_days=body.expires_days,
        source="api",
    )
    return {"token": token, "info": token_public(info)}


@router.delete("/tokens/{token_id:int}", response_model=TokenPublic, **role("admin"))
def token_revoke(token_id: TokenId, store: StoreDep, who: CurrentUser) -> dict[str, Any]:
    """Revoke an API token for good (idempotent)."""
    return token_public(
        accounts.revoke_token(store, token_id, actor=who.user.username, source="api")
    )
