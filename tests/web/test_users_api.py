"""Admins manage users over the API: enable, password reset, last login, and the
refusals (yourself, the last admin, lower roles)."""

from __future__ import annotations

from personatag import accounts
from personatag.audit_log import list_events
from tests.web.conftest import API, PASSWORD, Api


def _login(api: Api, user: str, password: str = PASSWORD) -> int:
    r = api.client.post(f"{API}/login", json={"username": user, "password": password})
    api.client.cookies.clear()
    return r.status_code


def test_disable_then_enable_lets_the_user_log_in_again(api: Api) -> None:
    admin = api.headers("admin")
    assert api.client.post(f"{API}/users/editor/disable", headers=admin).json()["disabled"]
    assert _login(api, "editor") == 403
    r = api.client.post(f"{API}/users/editor/enable", headers=admin)
    assert r.status_code == 200 and r.json()["disabled"] is False
    assert _login(api, "editor") == 200
    actions = [e["action"] for e in list_events(api.store, actor="admin", action="user.*")]
    assert actions == ["user.enable", "user.disable"]


def test_an_admin_cannot_disable_themselves(api: Api) -> None:
    r = api.client.post(f"{API}/users/Admin/disable", headers=api.headers("admin"))
    assert r.status_code == 409
    assert "cannot disable yourself" in r.json()["error"]["message"]
    assert not accounts.get_user(api.store, "admin").disabled


def test_the_last_admin_keeps_the_role(api: Api) -> None:
    r = api.client.put(
        f"{API}/users/admin/role", json={"role": "editor"}, headers=api.headers("admin")
    )
    assert r.status_code == 409 and "last active admin" in r.json()["error"]["message"]


def test_password_reset_is_shown_once_and_ends_sessions(api: Api) -> None:
    r = api.client.post(f"{API}/login", json={"username": "viewer", "password": PASSWORD})
    session = dict(api.client.cookies)
    api.client.cookies.clear()
    r = api.client.post(f"{API}/users/viewer/password-reset", headers=api.headers("admin"))
    assert r.status_code == 200
    new = r.json()["password"]
    assert r.json()["user"]["username"] == "viewer" and len(new) >= 20
    accounts.check_password_policy(new)
    assert _login(api, "viewer") == 401  # the old password
    assert _login(api, "viewer", new) == 200
    for name, value in session.items():
        api.client.cookies.set(name, value)
    assert api.client.get(f"{API}/me").status_code == 401  # the old session ended
    api.client.cookies.clear()
    (event,) = list_events(api.store, action="user.password")
    assert (event["actor"], event["target"], event["source"]) == ("admin", "viewer", "api")
    assert new not in str(event)


def test_last_login_is_recorded_for_sessions_and_tokens(api: Api) -> None:
    users = {
        u["username"]: u
        for u in api.client.get(f"{API}/users", headers=api.headers("admin")).json()["users"]
    }
    # The admin's token was just used; the viewer has never logged in.
    assert users["admin"]["last_login_at"] is not None
    assert users["viewer"]["last_login_at"] is None
    assert _login(api, "viewer") == 200
    assert accounts.get_user(api.store, "viewer").last_login_at is not None


def test_only_admins_manage_users(api: Api) -> None:
    for role in ("viewer", "editor"):
        h = api.headers(role)
        assert api.client.post(f"{API}/users/viewer/enable", headers=h).status_code == 403
        r = api.client.post(f"{API}/users/viewer/password-reset", headers=h)
        assert r.status_code == 403
        assert api.client.post(f"{API}/users/viewer/disable", headers=h).status_code == 403
        assert api.client.get(f"{API}/users", headers=h).status_code == 403
    r = api.client.post(f"{API}/users/nobody/password-reset", headers=api.headers("admin"))
    assert r.status_code == 404
