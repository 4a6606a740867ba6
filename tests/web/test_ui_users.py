"""Admins manage users and read the audit log in the workbench, through the UI only:
change a role, disable and enable, reset a password; a non-admin sees none of it;
the audit page shows a change made on the command line, with its actor."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.web.browser import PASSWORD, browser, cli, login, start_server

__all__ = ["browser"]

pytestmark = pytest.mark.slow

SHOTS = Path(os.environ.get("PERSONATAG_SHOTS", "/tmp/shots/users"))  # noqa: S108 - look-at-me pictures
WIDTHS = {"wide": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}


def _setup(env: dict[str, str]) -> None:
    for name, role in (("dora", "editor"), ("pete", "viewer"), ("rolf", "editor")):
        cli(env, "user", "add", name, "--role", role, "--password-stdin", stdin=PASSWORD + "\n")
    carol = {**env, "PERSONATAG_ACTOR": "carol"}
    cli(carol, "criterion", "add", "cio-emea", "--persona", "emea-cio", "--expr", 'region = "EMEA"')
    cli(carol, "pin", "emea-cio", "c00000042", "--in", "--reason", "asked for it")


@pytest.fixture(scope="module")
def users_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_server(tmp_path_factory.mktemp("users"), contacts=200, setup=_setup) as url:
        yield url


def _shots(page: Any, name: str) -> None:
    """The page at 1280 px and 390 px wide, for a person to look at."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for label, size in WIDTHS.items():
        page.set_viewport_size(size)
        page.screenshot(path=str(SHOTS / f"{name}-{label}.png"), full_page=True)
    page.set_viewport_size(WIDTHS["wide"])


def _try_login(browser: Any, url: str, user: str, password: str) -> tuple[Any, str]:
    """(page, error shown); the error is "" when the login worked."""
    page = browser.new_context().new_page()
    page.goto(f"{url}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_function(
        "() => location.pathname !== '/login' || document.getElementById('login-error').textContent"
    )
    if not page.url.endswith("/login"):
        return page, ""
    return page, page.inner_text("#login-error")


def _users(page: Any, url: str) -> dict[str, dict[str, Any]]:
    r = page.request.get(f"{url}/api/v1/users")
    assert r.ok
    return {u["username"]: u for u in r.json()["users"]}


def _row(page: Any, name: str) -> Any:
    return page.locator(f"tr[data-user='{name}']")


def test_an_admin_changes_a_role(browser: Any, users_server: str) -> None:
    page = login(browser, users_server, "ada")
    page.goto(f"{users_server}/admin/users")
    row = _row(page, "rolf")
    row.locator("select.user-role").select_option("viewer")
    row.locator("button.user-role-save").click()
    page.wait_for_selector(".toast-ok >> text=rolf is now viewer")
    assert _users(page, users_server)["rolf"]["role"] == "viewer"
    assert _row(page, "rolf").get_attribute("data-role") == "viewer"
    # The last admin cannot be demoted: asked first, then refused with the reason.
    me = _row(page, "ada")
    me.locator("select.user-role").select_option("editor")
    me.locator("button.user-role-save").click()
    page.click("#confirm-ok")
    error = page.wait_for_selector(".toast-error")
    assert "last active admin" in error.inner_text()
    assert _users(page, users_server)["ada"]["role"] == "admin"
    # An admin is not offered to disable themselves.
    assert _row(page, "ada").locator("button.user-disable").count() == 0
    _shots(page, "users")


def test_a_disabled_user_cannot_log_in_until_enabled(browser: Any, users_server: str) -> None:
    page = login(browser, users_server, "ada")
    page.goto(f"{users_server}/admin/users")
    _row(page, "dora").locator("button.user-disable").click()
    page.click("#confirm-ok")
    page.wait_for_selector(".toast-ok >> text=dora disabled")
    assert _users(page, users_server)["dora"]["disabled"] is True
    assert _row(page, "dora").locator(".badge.bad").inner_text() == "disabled"

    _, error = _try_login(browser, users_server, "dora", PASSWORD)
    assert "disabled" in error and "ask an admin" in error

    _row(page, "dora").locator("button.user-enable").click()
    page.wait_for_selector(".toast-ok >> text=dora can log in again")
    dora, error = _try_login(browser, users_server, "dora", PASSWORD)
    assert error == ""
    assert dora.inner_text(".who").startswith("D")
    page.goto(f"{users_server}/admin/users")
    # Her login is the last login the table shows.
    assert "ago" in _row(page, "dora").locator("time[data-ago]").inner_text() or "just now" in (
        _row(page, "dora").inner_text()
    )


def test_a_password_reset_is_shown_once_and_replaces_the_old_one(
    browser: Any, users_server: str
) -> None:
    page = login(browser, users_server, "ada")
    page.goto(f"{users_server}/admin/users")
    _row(page, "pete").locator("button.user-reset").click()
    page.click("#confirm-ok")
    new = page.wait_for_selector("#secret-value").inner_text().strip()
    assert len(new) >= 20
    _shots(page, "users-password-reset")
    page.click("#secret-done")
    page.wait_for_selector(".toast-ok >> text=password of pete reset")
    assert page.locator("#secret-value").count() == 0  # gone once closed

    _, error = _try_login(browser, users_server, "pete", PASSWORD)
    assert "wrong user name or password" in error
    _, error = _try_login(browser, users_server, "pete", new)
    assert error == ""


def test_a_non_admin_gets_no_admin_pages(browser: Any, users_server: str) -> None:
    page = login(browser, users_server, "erin")
    nav = page.inner_text("#nav")
    assert "Users" not in nav and "Audit" not in nav
    r = page.goto(f"{users_server}/admin/users")
    assert r.status == 403 and "needs the admin role" in page.inner_text("main")
    status = page.evaluate("async () => (await api('POST', '/users/vic/disable')).status")
    assert status == 403
    status = page.evaluate("async () => (await api('POST', '/users/vic/password-reset')).status")
    assert status == 403
    assert page.request.get(f"{users_server}/api/v1/audit").status == 403


def test_the_audit_page_shows_cli_changes_with_their_actor(browser: Any, users_server: str) -> None:
    page = login(browser, users_server, "ada")
    page.goto(f"{users_server}/audit")
    page.fill("input[name=actor]", "carol")
    page.click("form.audit-filters button[type=submit]")
    page.wait_for_url(lambda u: "actor=carol" in u)
    rows = page.locator("#audit-table tbody tr")
    actions = [rows.nth(i).get_attribute("data-action") for i in range(rows.count())]
    assert actions == ["pin", "criterion.add"]
    added = page.locator("tr[data-action='criterion.add']")
    assert added.locator(".audit-actor").inner_text() == "carol"
    assert added.locator(".audit-target a").get_attribute("href") == "/criteria/cio-emea"
    assert 'region = "EMEA"' in added.locator(".audit-change code.expr").inner_text()
    assert "cli" in added.inner_text()
    pin = page.locator("tr[data-action='pin']")
    assert pin.locator(".audit-change a.chip").inner_text() == "emea-cio"
    # Nothing in the whole log is anonymous, except refused logins.
    page.goto(f"{users_server}/audit")
    for actor in page.locator("#audit-table tbody tr .audit-actor").all_inner_texts():
        assert actor.strip() and actor.strip() not in ("None", "unknown")
    # A role change made in the UI is there too, with its before and after.
    page.goto(f"{users_server}/audit?action=user.role")
    if page.locator("tr[data-action='user.role']").count():
        change = page.locator("tr[data-action='user.role']").first.locator(".audit-change")
        assert change.locator(".del").count() == 1 and change.locator(".add").count() == 1
    page.goto(f"{users_server}/audit")
    _shots(page, "audit")
