"""Logins, session cookies, CSRF, bearer tokens and the login rate limit."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from personatag import accounts
from personatag.audit_log import list_events
from personatag.web.auth import CSRF_HEADER, SESSION_COOKIE, LoginLimiter
from tests.web.conftest import API, PASSWORD, Api


def login(client: TestClient, user: str = "viewer", password: str = PASSWORD) -> str:
    r = client.post(f"{API}/login", json={"username": user, "password": password})
    assert r.status_code == 200, r.text
    assert r.json()["user"]["username"] == user
    return str(r.json()["csrf_token"])


def test_login_sets_a_safe_session_cookie(api: Api) -> None:
    r = api.client.post(f"{API}/login", json={"username": "Viewer", "password": PASSWORD})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
    me = api.client.get(f"{API}/me")
    assert me.json() == {**r.json()["user"], "via": "session"}
    events = list_events(api.store, action="login")
    assert events[0]["actor"] == "viewer" and events[0]["source"] == "api"


def test_the_cookie_is_secure_over_https(api: Api) -> None:
    with TestClient(api.app, base_url="https://testserver") as client:
        r = client.post(f"{API}/login", json={"username": "viewer", "password": PASSWORD})
        assert "Secure" in r.headers["set-cookie"]


def test_cookie_writes_need_the_csrf_header(api: Api) -> None:
    csrf = login(api.client, "editor")
    body = {"expr": 'region = "EMEA"'}
    r = api.client.post(f"{API}/criteria/validate", json=body)
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
    r = api.client.post(f"{API}/criteria/validate", json=body, headers={CSRF_HEADER: "wrong"})
    assert r.status_code == 403
    r = api.client.post(f"{API}/criteria/validate", json=body, headers={CSRF_HEADER: csrf})
    assert r.status_code == 200 and r.json()["ok"] is True
    assert api.client.get(f"{API}/personas").status_code == 200  # reads need no header
    # A bearer token needs no CSRF header (browsers never send it on their own).
    r = api.client.post(f"{API}/criteria/validate", json=body, headers=api.headers("viewer"))
    assert r.status_code == 200


def test_wrong_password_and_unknown_user_look_the_same(api: Api) -> None:
    for user, password in (("viewer", "Wrong-Password-1"), ("nobody", PASSWORD)):
        r = api.client.post(f"{API}/login", json={"username": user, "password": password})
        assert r.status_code == 401
        assert r.json()["error"] == {
            "status": 401,
            "code": "invalid_credentials",
            "message": "wrong user name or password",
        }
    assert len(list_events(api.store, action="login.failed")) == 2


def test_login_rate_limit(api: Api) -> None:
    wrong = {"username": "editor", "password": "Wrong-Password-1"}
    for _ in range(5):
        assert api.client.post(f"{API}/login", json=wrong).status_code == 401
    r = api.client.post(f"{API}/login", json=wrong)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "too_many_attempts"
    assert int(r.headers["Retry-After"]) in range(1, 301)
    # The right password waits too; another user name does not.
    right = {"username": "editor", "password": PASSWORD}
    assert api.client.post(f"{API}/login", json=right).status_code == 429
    other = {"username": "admin", "password": PASSWORD}
    assert api.client.post(f"{API}/login", json=other).status_code == 200


def test_the_limit_window_slides() -> None:
    limiter = LoginLimiter(limit=2, window_s=0.3)
    key = ("u", "127.0.0.1")
    limiter.failed(key)
    limiter.failed(key)
    assert limiter.retry_after(key) == 1
    time.sleep(0.35)
    assert limiter.retry_after(key) is None
    limiter.failed(key)
    limiter.succeeded(key)
    assert limiter.retry_after(key) is None


def test_bad_bearer_tokens_are_401_and_never_fall_back_to_the_cookie(api: Api) -> None:
    login(api.client, "admin")
    for header in ("Bearer pt_nope", "Bearer ", "Basic dXNlcjpwYXNz", "pt_x"):
        r = api.client.get(f"{API}/me", headers={"Authorization": header})
        assert r.status_code == 401, header
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert api.client.get(f"{API}/me").json()["username"] == "admin"


def test_revoked_tokens_and_disabled_users_are_shut_out(api: Api) -> None:
    token, info = accounts.create_token(api.store, "editor", "short", actor="test")
    bearer = {"Authorization": f"Bearer {token}"}
    assert api.client.get(f"{API}/me", headers=bearer).status_code == 200
    r = api.client.delete(f"{API}/tokens/{info.id}", headers=api.headers("admin"))
    assert r.status_code == 200 and r.json()["revoked"] is True
    r = api.client.get(f"{API}/me", headers=bearer)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    r = api.client.post(f"{API}/users/viewer/disable", headers=api.headers("admin"))
    assert r.json()["disabled"] is True
    assert api.client.get(f"{API}/me", headers=api.headers("viewer")).status_code == 401
    r = api.client.post(f"{API}/login", json={"username": "viewer", "password": PASSWORD})
    # The right password learns that the account is disabled; a wrong one learns nothing.
    assert r.status_code == 403 and r.json()["error"]["code"] == "user_disabled"
    assert "disabled" in r.json()["error"]["message"]
    r = api.client.post(f"{API}/login", json={"username": "viewer", "password": PASSWORD + "x"})
    assert r.status_code == 401


def test_logout_ends_the_session(api: Api) -> None:
    csrf = login(api.client, "viewer")
    session = api.client.cookies[SESSION_COOKIE]
    assert api.client.post(f"{API}/logout").status_code == 403  # CSRF header missing
    r = api.client.post(f"{API}/logout", headers={CSRF_HEADER: csrf})
    assert r.status_code == 204
    assert SESSION_COOKIE not in api.client.cookies
    api.client.cookies.set(SESSION_COOKIE, session)
    r = api.client.get(f"{API}/me")
    assert r.status_code == 401 and r.json()["error"]["code"] == "session_expired"
    assert list_events(api.store, action="logout")[0]["actor"] == "viewer"
    api.client.cookies.clear()
    assert api.client.post(f"{API}/logout").status_code == 204  # no session: nothing to do


def test_me_says_how_the_caller_authenticated(api: Api) -> None:
    r = api.client.get(f"{API}/me", headers=api.headers("editor"))
    assert r.json()["role"] == "editor" and r.json()["via"] == "token"
