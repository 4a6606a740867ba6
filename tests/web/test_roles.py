"""Every route declares a role, and every answer honours it.

Each route of the app is called with no credentials and as viewer, editor and
admin, with harmless arguments (unknown names, no body): the answer must be a
401 without credentials, a 403 below the declared role, and neither at or
above it. Public routes never answer 401 or 403.
"""

from __future__ import annotations

import re

from fastapi import FastAPI
from starlette.routing import BaseRoute

from personatag.web.auth import PUBLIC, RoleMount, declared_role, route_table
from tests.web.conftest import Api

LEVEL = {"viewer": 1, "editor": 2, "admin": 3}
# Path parameters: names nobody has, so no call changes anything.
SAMPLES = {
    "key": "ghost",
    "name": "ghost",
    "ref": "999",
    "request_id": "req-ghost",
    "file_name": "summary.json",
    "contact_id": "c0001",
    "persona": "ghost",
    "username": "ghost",
    "token_id": "999",
    "job_id": "999",
    "webhook_id": "999",
    "dead_letter_id": "999",
    "rule_id": "999",
    "run_id": "ev-ghost",
}


def _calls(app: FastAPI) -> list[tuple[str, str, str | None]]:
    """(method, path, role) for every method of every route."""
    calls = []
    for path, methods, role, route in route_table(app):
        path = re.sub(r"\{(\w+)(:[^}]*)?\}", lambda m: SAMPLES[m.group(1)], path)
        if isinstance(route, RoleMount):
            calls.append(("GET", path + "/overview", role))
        else:
            calls += [(method, path, role) for method in methods or ("GET",)]
    return calls


def test_every_route_declares_a_role(api: Api) -> None:
    undeclared = [f"{m} {p}" for m, p, role in _calls(api.app) if role is None]
    assert not undeclared, f"routes without a declared role: {undeclared}"


def test_a_route_without_a_declaration_is_caught() -> None:
    app = FastAPI()

    @app.get("/sneaky")
    def sneaky() -> str:
        return "no role"

    route: BaseRoute = app.routes[-1]
    assert declared_role(route) is None


def test_every_route_answers_by_role(api: Api) -> None:
    calls = _calls(api.app)
    assert len(calls) >= 40
    assert any(path.startswith("/flink") for _, path, _ in calls)  # the mount is walked too
    wrong = []
    for method, path, role in calls:
        assert role is not None
        for who in (None, "viewer", "editor", "admin"):
            headers = api.headers(who) if who else {}
            status = api.client.request(method, path, headers=headers).status_code
            if role == PUBLIC:
                ok = status not in (401, 403)
            elif who is None:
                ok = status == 401
            elif LEVEL[who] < LEVEL[role]:
                ok = status == 403
            else:
                ok = status not in (401, 403) and status < 500
            if not ok:
                wrong.append(f"{method} {path} ({role}) as {who or 'nobody'}: {status}")
    assert not wrong, "\n".join(wrong)


def test_the_openapi_document_shows_each_role(api: Api) -> None:
    doc = api.client.get("/api/v1/openapi.json").json()
    roles = {
        f"{method.upper()} {path}": op["x-role"]
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    }
    assert roles["GET /api/v1/personas"] == "viewer"
    assert roles["POST /api/v1/criteria"] == "editor"
    assert roles["POST /api/v1/criteria/validate"] == "viewer"
    assert roles["POST /api/v1/criteria/render"] == "viewer"
    assert roles["POST /api/v1/personas"] == "editor"
    assert roles["GET /api/v1/audit"] == "admin"
    assert roles["POST /api/v1/login"] == "public"
    assert doc["paths"]["/api/v1/personas"]["get"]["security"] == [{"bearer": []}, {"session": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]
    assert api.client.get("/api/v1/docs").status_code == 200
