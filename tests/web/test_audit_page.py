"""The audit page: pages of 50, filters, readable changes, bad input said plainly."""

from __future__ import annotations

import re

from personatag.audit_log import record_now
from tests.web.conftest import API, PASSWORD, Api


def _admin_session(api: Api) -> None:
    r = api.client.post(f"{API}/login", json={"username": "admin", "password": PASSWORD})
    assert r.status_code == 200


def test_pages_filters_and_readable_changes(api: Api) -> None:
    for i in range(60):
        record_now(
            api.store,
            actor="carol",
            action="persona.add",
            target=f"p{i}",
            detail={"name": f"P {i}"},
        )
    record_now(
        api.store,
        actor="carol",
        action="user.role",
        target="bob",
        detail={"from": "viewer", "to": "editor"},
    )
    _admin_session(api)
    page = api.client.get("/audit?actor=carol").text
    assert page.count("<tr data-seq") == 50
    older = re.search(r'id="audit-older" href="([^"]+)"', page)
    assert older is not None
    rest = api.client.get(older.group(1).replace("&amp;", "&")).text
    assert rest.count("<tr data-seq") == 11 and 'id="audit-older"' not in rest
    assert 'href="/personas/p0"' in rest  # the object is a persona chip
    role = api.client.get("/audit?action=user.role").text
    assert '<span class="del">viewer</span> → <span class="add">editor</span>' in role
    # Logins are left out unless asked for.
    assert 'data-action="login"' not in api.client.get("/audit").text
    assert 'data-action="login"' in api.client.get("/audit?logins=on").text


def test_bad_filters_are_said_plainly(api: Api) -> None:
    _admin_session(api)
    r = api.client.get("/audit?since=yesterday&before=x")
    assert r.status_code == 200
    assert "is not a date: use YYYY-MM-DD" in r.text and "is not an event number" in r.text
    r = api.client.get("/audit?since=2000-01-01&until=2000-01-02")
    assert r.status_code == 200 and "No change matches these filters" in r.text
