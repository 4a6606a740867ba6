"""Personas, criteria, preview, contacts and pins, jobs, users and tokens, deploy, audit."""

from __future__ import annotations

import pytest

from personatag.audit_log import list_events
from tests.web.conftest import API, PASSWORD, Api


def test_personas(api: Api) -> None:
    c, admin, viewer = api.client, api.headers("admin"), api.headers("viewer")
    body = {"key": "apac", "name": "APAC", "category": "region", "description": "Asia"}
    r = c.post(f"{API}/personas", json=body, headers=admin)
    assert r.status_code == 201 and r.json()["members"] == 0 and r.json()["created_by"] == "admin"
    assert c.post(f"{API}/personas", json=body, headers=admin).status_code == 409
    r = c.post(f"{API}/personas", json={**body, "key": "Bad Key"}, headers=admin)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    r = c.post(f"{API}/personas", json={**body, "colour": "red"}, headers=admin)
    assert r.status_code == 422 and r.json()["error"]["field"] == "colour"
    keys = [p["key"] for p in c.get(f"{API}/personas", headers=viewer).json()["personas"]]
    assert keys == ["apac", "emea"]
    assert c.post(f"{API}/personas/apac/archive", headers=admin).json()["archived_at"]
    assert c.post(f"{API}/personas/apac/archive", headers=admin).status_code == 409
    assert len(c.get(f"{API}/personas", headers=viewer).json()["personas"]) == 1
    assert len(c.get(f"{API}/personas?all=true", headers=viewer).json()["personas"]) == 2
    r = c.get(f"{API}/personas/nope", headers=viewer)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    actions = [e["action"] for e in list_events(api.store, actor="admin")]
    assert "persona.add" in actions and "persona.archive" in actions


def test_persona_members_are_paged_by_id(api: Api) -> None:
    c, editor = api.client, api.headers("editor")
    for cid in ("c0003", "c0001", "c0002"):
        body = {"persona": "emea", "kind": "in", "reason": "test"}
        assert c.post(f"{API}/contacts/{cid}/pins", json=body, headers=editor).status_code == 200
    url = f"{API}/personas/emea/members"
    page = c.get(f"{url}?limit=2", headers=editor).json()
    assert page == {"members": ["c0001", "c0002"], "next_after": "c0002"}
    page = c.get(f"{url}?limit=2&after=c0002", headers=editor).json()
    assert page == {"members": ["c0003"], "next_after": None}
    shown = c.get(f"{API}/personas/emea", headers=editor).json()
    assert shown["members"] == 3
    r = c.get(f"{url}?limit=0", headers=editor)
    assert r.status_code == 422 and r.json()["error"]["field"] == "limit"


def test_criteria_versions_and_errors_with_positions(api: Api) -> None:
    c, editor, viewer = api.client, api.headers("editor"), api.headers("viewer")
    body = {"name": "emea-cio", "persona": "emea", "expr": 'region = "EMEA"'}
    r = c.post(f"{API}/criteria", json=body, headers=editor)
    assert r.status_code == 201 and r.json()["version"] == 1 and r.json()["created_by"] == "editor"
    assert c.post(f"{API}/criteria", json=body, headers=editor).status_code == 409
    r = c.put(f"{API}/criteria/emea-cio", json={"mode": "ongoing"}, headers=editor)
    assert r.json()["version"] == 2 and r.json()["expr"] == 'region = "EMEA"'
    bad = {"expr": 'job_title = "CIO" and regoin = "EMEA"'}
    r = c.put(f"{API}/criteria/emea-cio", json=bad, headers=editor)
    assert r.status_code == 422
    assert r.json()["error"] == {
        "status": 422,
        "code": "invalid_criterion",
        "message": "line 1, col 23: unknown field 'regoin' (did you mean 'region'?)",
        "field": "expr",
        "line": 1,
        "col": 23,
    }
    r = c.put(f"{API}/criteria/emea-cio", json={"mode": "sometimes"}, headers=editor)
    assert r.status_code == 422 and r.json()["error"]["field"] == "mode"
    assert c.put(f"{API}/criteria/nope", json={}, headers=editor).status_code == 404
    versions = c.get(f"{API}/criteria/emea-cio", headers=viewer).json()["versions"]
    assert [v["mode"] for v in versions] == ["adhoc", "ongoing"]
    listed = c.get(f"{API}/criteria", headers=viewer).json()["criteria"]
    assert [(x["name"], x["version"]) for x in listed] == [("emea-cio", 2)]
    assert c.get(f"{API}/personas/emea", headers=viewer).json()["criteria"][0]["version"] == 2
    edits = list_events(api.store, action="criterion.*")
    assert [e["action"] for e in edits] == ["criterion.edit", "criterion.add"]
    assert all(e["source"] == "api" and e["actor"] == "editor" for e in edits)


def test_validate_has_no_side_effects(api: Api) -> None:
    c, viewer = api.client, api.headers("viewer")
    r = c.post(f"{API}/criteria/validate", json={"expr": 'region  =  "EMEA"'}, headers=viewer)
    ast = {"op": "=", "field": "region", "value": "EMEA"}
    assert r.json() == {"ok": True, "expr": 'region = "EMEA"', "ast": ast, "error": None}
    r = c.post(f"{API}/criteria/validate", json={"expr": "seniority >"}, headers=viewer)
    assert r.status_code == 200 and r.json()["ok"] is False
    assert r.json()["error"]["line"] == 1 and r.json()["error"]["col"] == 12
    r = c.post(f"{API}/criteria/validate", json={}, headers=viewer)
    assert r.status_code == 422 and r.json()["error"]["field"] == "expr"
    assert list_events(api.store, action="criterion.*") == []


def test_preview(api: Api) -> None:
    c, viewer = api.client, api.headers("viewer")
    body = {"expr": 'region = "EMEA"', "persona": "emea", "sample": 3}
    r = c.post(f"{API}/preview", json=body, headers=viewer)
    assert r.json() == {
        "count": 10,
        "sample": ["c0000", "c0004", "c0008"],
        "would_enter": 10,
        "would_exit": None,
        "count_ignoring_case": None,
        "hint": None,
        "suggestion": None,
    }
    # an untag adds nobody; the stored criterion's action is the default
    body = {"expr": 'region = "EMEA"', "persona": "emea", "action": "untag"}
    r = c.post(f"{API}/preview", json=body, headers=viewer)
    assert (r.json()["would_enter"], r.json()["would_exit"]) == (None, 0)
    crit = {"name": "emea-off", "persona": "emea", "expr": 'region = "EMEA"', "action": "untag"}
    assert c.post(f"{API}/criteria", json=crit, headers=api.headers("editor")).status_code == 201
    r = c.post(f"{API}/preview", json={"criterion": "emea-off"}, headers=viewer)
    assert (r.json()["would_enter"], r.json()["would_exit"]) == (None, 0)
    r = c.post(f"{API}/preview", json={"criterion": "emea-off", "action": "tag"}, headers=viewer)
    assert (r.json()["would_enter"], r.json()["would_exit"]) == (10, None)
    r = c.post(f"{API}/preview", json={"expr": 'region = "emea"'}, headers=viewer)
    assert r.json()["hint"] == "0 match; 10 would match ignoring case — use ilike"
    assert r.json()["suggestion"] == 'region ilike "emea"'
    crit = {"name": "amer", "persona": "emea", "expr": 'region = "AMER"'}
    c.post(f"{API}/criteria", json=crit, headers=api.headers("editor"))
    r = c.post(f"{API}/preview", json={"criterion": "amer", "as_of": "2026-06-30"}, headers=viewer)
    assert r.status_code == 200 and r.json()["sample"][0] == "c0001"
    r = c.post(f"{API}/preview", json={"expr": "x", "criterion": "amer"}, headers=viewer)
    assert r.status_code == 422 and "exactly one" in r.json()["error"]["message"]
    r = c.post(
        f"{API}/preview", json={"expr": "seniority > 1", "as_of": "yesterday"}, headers=viewer
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "as_of"
    r = c.post(
        f"{API}/preview", json={"expr": "seniority > 1", "as_of": "0001-01-01"}, headers=viewer
    )
    assert r.status_code == 422
    r = c.post(f"{API}/preview", json={"expr": "seniority > 1", "persona": "nope"}, headers=viewer)
    assert r.status_code == 404


def test_contacts_and_pins(api: Api) -> None:
    c, editor, viewer = api.client, api.headers("editor"), api.headers("viewer")
    pin = {"persona": "emea", "kind": "out", "reason": "asked to"}
    r = c.post(f"{API}/contacts/c0000/pins", json=pin, headers=editor)
    assert r.json() == {"persona": "emea", "contact": "c0000", "pin": "out", "holds": False}
    shown = c.get(f"{API}/contacts/c0000", headers=viewer).json()
    assert shown["attributes"]["region"] == "EMEA"
    assert shown["pins"][0]["by"] == "editor" and shown["pins"][0]["reason"] == "asked to"
    r = c.post(f"{API}/contacts/c0000/pins", json={**pin, "kind": "sideways"}, headers=editor)
    assert r.status_code == 422 and r.json()["error"]["field"] == "kind"
    assert c.post(f"{API}/contacts/nope/pins", json=pin, headers=editor).status_code == 404
    r = c.delete(f"{API}/contacts/c0000/pins/emea", headers=editor)
    assert r.json()["pin"] is None
    assert c.delete(f"{API}/contacts/c0000/pins/emea", headers=editor).status_code == 404
    assert c.get(f"{API}/contacts/nope", headers=viewer).status_code == 404
    pins = list_events(api.store, target="c0000")
    assert [e["action"] for e in pins] == ["unpin", "pin"]


def test_users_and_tokens(api: Api) -> None:
    c, admin = api.client, api.headers("admin")
    body = {"username": "Ann", "password": PASSWORD, "role": "editor"}
    r = c.post(f"{API}/users", json=body, headers=admin)
    assert r.status_code == 201 and r.json()["username"] == "ann"
    assert c.post(f"{API}/users", json=body, headers=admin).status_code == 409
    r = c.post(f"{API}/users", json={**body, "username": "bob", "password": "short"}, headers=admin)
    assert r.status_code == 422 and "too short" in r.json()["error"]["message"]
    r = c.post(f"{API}/users", json={**body, "username": "bob", "role": "root"}, headers=admin)
    assert r.status_code == 422 and r.json()["error"]["field"] == "role"
    r = c.put(f"{API}/users/ann/role", json={"role": "viewer"}, headers=admin)
    assert r.json()["role"] == "viewer"
    r = c.put(f"{API}/users/admin/role", json={"role": "viewer"}, headers=admin)
    assert r.status_code == 409  # the last admin
    r = c.post(f"{API}/users/ann/tokens", json={"name": "ci", "expires_days": 30}, headers=admin)
    assert r.status_code == 201
    token, info = r.json()["token"], r.json()["info"]
    assert info["expires_at"] and token.startswith("pt_")
    me = c.get(f"{API}/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["username"] == "ann" and me["role"] == "viewer"
    listed = c.get(f"{API}/users/ann/tokens", headers=admin).json()["tokens"]
    assert [t["name"] for t in listed] == ["ci"] and "token" not in listed[0]
    r = c.post(f"{API}/users/ann/tokens", json={"name": "x", "expires_days": 0}, headers=admin)
    assert r.status_code == 422
    assert c.get(f"{API}/users/nobody/tokens", headers=admin).status_code == 404
    assert c.delete(f"{API}/tokens/999", headers=admin).status_code == 404
    assert c.delete(f"{API}/tokens/0", headers=admin).status_code == 422
    users = c.get(f"{API}/users", headers=admin).json()["users"]
    assert [u["username"] for u in users] == ["admin", "ann", "editor", "viewer"]
    audit = c.get(f"{API}/audit?actor=admin&action=user.*", headers=admin).json()["events"]
    assert [e["action"] for e in audit] == ["user.role", "user.create"]
    assert all(e["source"] == "api" for e in audit)


def test_audit_filters(api: Api) -> None:
    c, admin = api.client, api.headers("admin")
    r = c.get(f"{API}/audit?action=token.create&limit=2", headers=admin).json()["events"]
    assert len(r) == 2 and all(e["action"] == "token.create" for e in r)
    older = c.get(f"{API}/audit?before_seq={r[-1]['seq']}&action=token.*", headers=admin)
    assert len(older.json()["events"]) == 1
    assert c.get(f"{API}/audit?since=2000-01-01T00:00:00", headers=admin).json()["events"]
    # A bound outside what the store holds is still a bound: everything is after year 1.
    r = c.get(f"{API}/audit?since=0001-01-01T00:00:00", headers=admin)
    assert r.status_code == 200 and r.json()["events"]
    assert c.get(f"{API}/audit?limit=5000", headers=admin).status_code == 422


def test_deploy_and_rollback(api: Api) -> None:
    c, admin = api.client, api.headers("admin")
    assert c.get(f"{API}/deploy", headers=admin).json() == {"active": None, "bundles": []}
    r = c.post(f"{API}/deploy", json={"rollback": True}, headers=admin)
    assert r.status_code in (404, 409, 422)  # nothing to roll back to
    r = c.post(f"{API}/deploy", json={"properties": {"Bad Name": 1}}, headers=admin)
    assert r.status_code == 422
    first = c.post(f"{API}/deploy", json={"properties": {"parallelism": 2}}, headers=admin)
    assert first.status_code == 200, first.text
    assert first.json()["by"] == "admin"
    state = c.get(f"{API}/deploy", headers=admin).json()
    assert state["active"]["version"] == first.json()["version"]
    assert [b["active"] for b in state["bundles"]] == [True]
    assert list_events(api.store, action="deploy")[0]["target"] == first.json()["version"]


def test_absurdly_nested_input_is_a_422_not_a_crash(api: Api) -> None:
    deep = "(" * 3000 + 'region = "EMEA"' + ")" * 3000
    h = api.headers("viewer")
    r = api.client.post(f"{API}/criteria/validate", json={"expr": deep}, headers=h)
    assert r.status_code == 200
    assert r.json()["error"] == {
        "line": 1,
        "col": 21,
        "message": "the criterion nests more than 20 levels deep",
    }
    r = api.client.post(f"{API}/preview", json={"expr": deep}, headers=h)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_criterion"
    assert r.json()["error"]["col"] == 21


@pytest.mark.parametrize(
    ("expr", "col", "says"),
    [
        ("seniority > " + "9" * 4301, 13, "is too long"),
        ('created_at > date("0001-01-01T00:00:00+14:00")', 19, "outside years 1 to 9999"),
        ('created_at < date("9999-12-31T23:00:00-14:00")', 19, "outside years 1 to 9999"),
    ],
)
def test_preview_of_oversized_literals_is_a_422(api: Api, expr: str, col: int, says: str) -> None:
    """Issue 17 item 11: `POST /api/v1/preview` with a 4,301-digit integer or a date
    that overflows when moved to UTC answered 500 (ValueError, OverflowError)."""
    r = api.client.post(f"{API}/preview", json={"expr": expr}, headers=api.headers("viewer"))
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_criterion" and error["col"] == col and says in error["message"]


def test_a_lone_surrogate_in_a_contact_field_is_a_422(api: Api) -> None:
    """Issue 17 item 11: `PATCH /api/v1/contacts/ID` with a lone surrogate in a value
    answered 500 (UnicodeEncodeError in the store); it is refused with the field and
    the character's position, and nothing is written."""
    h = {**api.headers("editor"), "Content-Type": "application/json"}
    before = api.client.get(f"{API}/contacts/c0001", headers=h).json()["attributes"]
    for body in (
        b'{"fields": {"region": "EM\\ud800"}}',
        b'{"fields": {"interests": ["ok", "\\udc80"]}}',
        b'{"fields": {"interests": "a;\\udc80"}}',
    ):
        r = api.client.patch(f"{API}/contacts/c0001", content=body, headers=h)
        assert r.status_code == 422, r.text
        assert "lone surrogate" in r.json()["error"]["message"]
    r = api.client.patch(f"{API}/contacts/c0001", content=body, headers=h)
    assert "field 'interests'" in r.json()["error"]["message"]
    assert api.client.get(f"{API}/contacts/c0001", headers=h).json()["attributes"] == before
