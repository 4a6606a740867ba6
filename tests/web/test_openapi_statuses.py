"""The OpenAPI document tells the truth about what each route can answer
(issue 17 item 14): the statuses, the methods in `Allow`, the time parameters."""

from __future__ import annotations

import inspect
import re
from typing import Any

from fastapi.routing import APIRoute

from personatag.web.auth import PUBLIC, route_table
from tests.web.conftest import API, Api

RAISED = re.compile(r"ApiError\(\s*(\d{3})")


def _operations(api: Api) -> dict[tuple[str, str], dict[str, Any]]:
    doc = api.client.get(f"{API}/openapi.json").json()
    return {
        (method.upper(), path): op
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if isinstance(op, dict)
    }


def test_every_status_a_route_can_answer_is_declared(api: Api) -> None:
    """Issue 17 item 14: 39 operations could answer 404, 400 or 409 without the
    OpenAPI document saying so. Walks the routes and the document: a path
    parameter can name nothing (404), a body can fail to parse (400), any input
    can be invalid (422), a role means 401/403, and every `ApiError(status, ...)`
    a handler raises itself is declared."""
    ops = _operations(api)
    missing = []
    walked = 0
    for path, methods, role, route in route_table(api.app):
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        doc_path = re.sub(r"{(\w+):\w+}", r"{\1}", path)
        for method in methods:
            op = ops[(method, doc_path)]
            walked += 1
            declared = {int(s) for s in op["responses"] if s.isdigit()}
            needed = set()
            if role != PUBLIC:
                needed |= {401, 403}
            if "{" in doc_path:
                needed |= {404, 422}
            if "requestBody" in op:
                needed |= {400, 422}
            if op.get("parameters"):
                needed.add(422)
            needed |= {int(s) for s in RAISED.findall(inspect.getsource(route.endpoint))}
            for status in sorted(needed - declared):
                missing.append(f"{method} {doc_path}: {status}")
            for status in declared - {200, 201, 202, 204}:
                body = op["responses"][str(status)].get("content", {}).get("application/json")
                if status >= 400 and body is not None and status != 503:
                    ref = body["schema"].get("$ref", "")
                    assert ref.endswith("/ErrorResponse"), f"{method} {doc_path} {status}: {ref}"
    assert walked >= 55
    assert not missing, "\n".join(missing)


def test_conflicts_and_lookups_by_body_are_declared(api: Api) -> None:
    """Issue 17 item 14: statuses the domain raises (409 for the last admin, an
    archived persona, a name in use; 404 for a persona named in a body or query)
    were left out of the routes that answer them."""
    ops = _operations(api)
    for method, path, status in (
        ("PUT", "/api/v1/users/{username}/role", 409),
        ("POST", "/api/v1/users/{username}/disable", 409),
        ("POST", "/api/v1/users", 409),
        ("POST", "/api/v1/personas", 409),
        ("POST", "/api/v1/personas/{key}/archive", 409),
        ("POST", "/api/v1/contacts/{contact_id}/pins", 409),
        ("POST", "/api/v1/criteria", 404),
        ("POST", "/api/v1/criteria", 409),
        ("GET", "/api/v1/membership-log", 404),
        ("GET", "/api/v1/webhooks/dead-letters", 404),
        ("POST", "/api/v1/requests", 200),
    ):
        assert str(status) in ops[(method, path)]["responses"], (method, path, status)
    # What they actually answer:
    r = api.client.put(
        f"{API}/users/admin/role", json={"role": "viewer"}, headers=api.headers("admin")
    )
    assert r.status_code == 409
    r = api.client.get(f"{API}/membership-log?persona=nope", headers=api.headers("viewer"))
    assert r.status_code == 404


def test_405_names_every_method_of_the_path(api: Api) -> None:
    """Issue 17 item 14: a 405 named only the methods of the first route that
    matched the path (`OPTIONS /api/v1/criteria` said `Allow: GET`, not POST)."""
    admin = api.headers("admin")
    for method, path, allow in (
        ("OPTIONS", "/api/v1/criteria", "GET, POST"),
        ("PUT", "/api/v1/personas", "GET, POST"),
        ("DELETE", "/api/v1/users", "GET, POST"),
        ("PUT", "/api/v1/contacts/c1", "GET, PATCH"),
        ("GET", "/api/v1/feed/evaluations/x/cancel", "POST"),
        ("POST", "/healthz", "GET"),
        ("POST", "/static/js/core.js", "GET, HEAD"),
    ):
        r = api.client.request(method, path, headers=admin)
        assert r.status_code == 405, (method, path, r.text)
        assert r.headers["allow"] == allow, (method, path)
        assert r.json()["error"]["code"] == "method_not_allowed"
        assert allow in r.json()["error"]["message"]


def test_delete_dead_letters_is_a_clean_405(api: Api) -> None:
    """Issue 17 item 14: `DELETE /api/v1/webhooks/dead-letters` was taken for
    `DELETE /api/v1/webhooks/{webhook_id}` with the id "dead-letters" (a 422
    about an integer). Dead letters are not deleted one by one or in bulk (they go
    with their webhook, or are redelivered): the answer is 405 with `Allow: GET`."""
    r = api.client.delete(f"{API}/webhooks/dead-letters", headers=api.headers("admin"))
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == "GET"
    # Numeric ids still route; a word where an id goes names no resource.
    r = api.client.delete(f"{API}/webhooks/999", headers=api.headers("admin"))
    assert r.status_code == 404
    r = api.client.post(f"{API}/webhooks/abc/disable", headers=api.headers("admin"))
    assert r.status_code == 404


def test_times_are_iso_8601_never_numbers(api: Api) -> None:
    """Issue 17 item 14: `GET /api/v1/audit?until=0.5` was taken as 0.5 s after
    1970 (pydantic reads numbers as Unix time) although the parameter is a
    documented ISO-8601 date-time: a number is now a 422 that says so, here and
    in every other time the API takes."""
    admin = api.headers("admin")
    for query in ("until=0.5", "since=1700000000", "until=-3"):
        r = api.client.get(f"{API}/audit?{query}", headers=admin)
        assert r.status_code == 422, query
        err = r.json()["error"]
        assert err["field"] == query.split("=")[0] and "ISO-8601" in err["message"]
    r = api.client.get(f"{API}/audit?until=2030-01-01T00:00:00Z&since=2000-01-01", headers=admin)
    assert r.status_code == 200 and r.json()["events"]
    # Any valid date-time is a valid bound, even outside what the store can hold.
    for query in ("until=0429-09-25T11:19:34Z", "since=9999-12-31T23:59:59-14:00"):
        r = api.client.get(f"{API}/audit?{query}", headers=admin)
        assert r.status_code == 200 and r.json()["events"] == [], query
    r = api.client.get(f"{API}/audit?since=0001-01-01T00:00:00%2B14:00", headers=admin)
    assert r.status_code == 200 and r.json()["events"]
    r = api.client.post(
        f"{API}/contacts/c00000001/events", json={"logins": [1700000000]}, headers=admin
    )
    assert r.status_code == 422 and "ISO-8601" in r.json()["error"]["message"]
    r = api.client.get(f"{API}/contacts/c00000001/feed?as_of=12", headers=admin)
    assert r.status_code == 422 and r.json()["error"]["field"] == "as_of"


def test_booleans_in_bodies_are_json_booleans(api: Api) -> None:
    """Issue 17 item 14 (found by schemathesis): `{"from_start": 0}` was taken as
    false although the document says boolean; 0, 1 and "yes" are now refused."""
    admin = api.headers("admin")
    for value in (0, 1, "yes", "true"):
        r = api.client.post(
            f"{API}/webhooks", json={"url": "http://127.0.0.1:9/x", "from_start": value},
            headers=admin,
        )  # fmt: skip
        assert r.status_code == 422 and r.json()["error"]["field"] == "from_start", value
        r = api.client.patch(
            f"{API}/contacts/c00000001",
            json={"fields": {"region": "EMEA"}, "create": value},
            headers=admin,
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "create", value
    r = api.client.post(
        f"{API}/webhooks", json={"url": "http://127.0.0.1:9/x", "from_start": True}, headers=admin
    )
    assert r.status_code == 201


def test_numbers_in_bodies_are_json_numbers(api: Api) -> None:
    """Issue 17 item 14 family (found by schemathesis): `{"seed": false}` was taken
    as the integer 0 by POST /feed/evaluations although the document says
    integer; booleans and numeric strings are refused where a body wants a number."""
    admin = api.headers("admin")
    for value in (False, True, "3"):
        r = api.client.post(f"{API}/feed/evaluations", json={"seed": value}, headers=admin)
        assert r.status_code == 422 and r.json()["error"]["field"] == "seed", value
        r = api.client.post(
            f"{API}/users/viewer/tokens", json={"name": "t", "expires_days": value}, headers=admin
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "expires_days", value


def test_a_huge_rule_id_is_a_422_not_a_500(api: Api) -> None:
    """Issue 17 item 14 (found by schemathesis): `DELETE
    /api/v1/personas/{key}/feed-rules/{rule_id}` took any integer and the store
    overflowed on one past 64 bits (500); ids are bounded like the others."""
    r = api.client.delete(f"{API}/personas/emea/feed-rules/{2**80}", headers=api.headers("editor"))
    assert r.status_code == 422 and r.json()["error"]["field"] == "rule_id"
