"""The criterion AST over the API: `ast` in validate's answer, and /criteria/render
(the visual builder's way from a tree to text), checked like text is."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from personatag.audit_log import list_events
from tests.web.conftest import API, Api
from tests.web.test_auth import login

RENDER = f"{API}/criteria/render"
VALIDATE = f"{API}/criteria/validate"

EMEA_OR_APAC = {
    "op": "or",
    "args": [
        {"op": "=", "field": "region", "value": "EMEA"},
        {"op": "=", "field": "region", "value": "APAC"},
    ],
}
BUILT = {
    "op": "and",
    "args": [EMEA_OR_APAC, {"op": "not", "arg": {"op": ">=", "field": "seniority", "value": 8}}],
}
BUILT_TEXT = '(region = "EMEA" or region = "APAC") and not seniority >= 8'


def render(api: Api, ast: Any, role: str = "viewer") -> dict[str, Any]:
    r = api.client.post(RENDER, json={"ast": ast}, headers=api.headers(role))
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_validate_answers_the_ast(api: Api) -> None:
    r = api.client.post(VALIDATE, json={"expr": BUILT_TEXT}, headers=api.headers("viewer"))
    assert r.json() == {"ok": True, "expr": BUILT_TEXT, "ast": BUILT, "error": None}
    r = api.client.post(VALIDATE, json={"expr": "seniority >"}, headers=api.headers("viewer"))
    assert r.json()["ok"] is False and r.json()["ast"] is None


def test_render_gives_the_canonical_text_and_the_node_it_reads_back_as(api: Api) -> None:
    assert render(api, BUILT) == {"ok": True, "expr": BUILT_TEXT, "ast": BUILT, "error": None}
    # A nested `or` inside an `or` keeps its parentheses; timestamps are normalised.
    ast = {
        "op": "or",
        "args": [
            {"op": "in", "field": "region", "values": ["EMEA", "AMER"]},
            EMEA_OR_APAC,
            {
                "op": ">",
                "field": "created_at",
                "value": {"type": "timestamp", "value": "2026-06-30T00:00:00+00:00"},
            },
        ],
    }
    out = render(api, ast)
    assert out["expr"] == (
        'region in ("EMEA", "AMER") or (region = "EMEA" or region = "APAC") '
        'or created_at > date("2026-06-30")'
    )
    assert out["ast"]["args"][2]["value"] == {"type": "timestamp", "value": "2026-06-30"}
    assert out["ast"]["args"][1] == EMEA_OR_APAC


@pytest.mark.parametrize(
    "text",
    [
        BUILT_TEXT,
        'count(read where sector = "Banks" and not region = "EMEA", 30d) >= 2 or persona("emea")',
        'not not (interests contains_any ("Energy") and last_login_at within 90d)',
        'seniority between 3 and 7 and job_title is not null and region not in ("APAC")',
        'job_title ilike "%cio%" and count(login, 7d) = 0',
    ],
)
def test_validate_and_render_are_inverse(api: Api, text: str) -> None:
    """What validate answers as `ast`, render turns back into the same text and node."""
    viewer = api.headers("viewer")
    checked = api.client.post(VALIDATE, json={"expr": text}, headers=viewer).json()
    assert checked["ok"], checked
    rendered = render(api, checked["ast"])
    assert rendered["ok"] and (rendered["expr"], rendered["ast"]) == (
        checked["expr"],
        checked["ast"],
    )


@pytest.mark.parametrize(
    ("ast", "path", "message"),
    [
        ({"op": "nope"}, "$.ast.op", "unknown op 'nope'"),
        ({}, "$.ast.op", "unknown op None"),
        ({"op": "and", "args": [BUILT]}, "$.ast.args", "'and' needs a list of at least 2 args"),
        ({"op": "=", "field": "region"}, "$.ast", "missing key 'value'"),
        ({"op": "=", "field": "region", "value": "x", "colour": 1}, "$.ast", "unknown key"),
        ({"op": "in", "field": "region", "values": []}, "$.ast.values", "non-empty list"),
        ({"op": "=", "field": "region", "value": None}, "$.ast.value", "use the 'is_null' op"),
        ({"op": "within", "field": "created_at", "days": 0}, "$.ast.days", "from 1 to"),
        (
            {"op": "or", "args": [BUILT, {"op": "not", "arg": {"op": "count"}}]},
            "$.ast.args[1].arg",
            "missing key 'event'",
        ),
    ],
)
def test_render_reports_an_invalid_node_with_its_path(
    api: Api, ast: dict[str, Any], path: str, message: str
) -> None:
    out = render(api, ast)
    assert out["ok"] is False and out["expr"] is None and out["ast"] is None
    assert out["error"]["path"] == path
    assert message in out["error"]["message"]


def test_render_reports_an_unknown_field_like_text_does(api: Api) -> None:
    ast = {"op": "and", "args": [EMEA_OR_APAC, {"op": "=", "field": "regoin", "value": "EMEA"}]}
    assert render(api, ast)["error"] == {
        "path": "$.ast.args[1].field",
        "message": "unknown field 'regoin' (did you mean 'region'?)",
    }
    inside_count = {
        "op": "count",
        "event": "read",
        "where": {"op": "=", "field": "seniority", "value": 3},
        "days": 30,
        "cmp": ">",
        "value": 0,
    }
    error = render(api, inside_count)["error"]
    assert error["path"] == "$.ast.where.field"
    assert "'seniority' is a contact field" in error["message"]
    error = render(api, {"op": "persona", "key": "emae"})["error"]
    assert error == {
        "path": "$.ast.key",
        "message": "unknown persona 'emae' (did you mean 'emea'?)",
    }


def test_render_reports_a_type_mismatch_like_text_does(api: Api) -> None:
    ast = {"op": "or", "args": [EMEA_OR_APAC, {"op": ">=", "field": "seniority", "value": "8"}]}
    error = render(api, ast)["error"]
    assert error["path"] == "$.ast.args[1].value"
    assert error["message"].startswith(
        'type mismatch: seniority is an int field, but "8" is a string'
    )
    error = render(api, {"op": "within", "field": "region", "days": 30})["error"]
    assert error == {
        "path": "$.ast.field",
        "message": "'within' needs a timestamp field, but region is a string field",
    }
    error = render(api, {"op": "contains", "field": "interests", "value": 3})["error"]
    assert error["path"] == "$.ast.value" and "holds strings" in error["message"]


def test_render_refuses_a_body_that_is_not_a_node_object(api: Api) -> None:
    viewer = api.headers("viewer")
    for body in ({}, {"ast": "region = 'EMEA'"}, {"ast": [BUILT]}, {"ast": BUILT, "expr": "x"}):
        r = api.client.post(RENDER, json=body, headers=viewer)
        assert r.status_code == 422, body
        assert r.json()["error"]["code"] == "validation_error"
    r = api.client.post(
        RENDER, content=b"{", headers={**viewer, "Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_render_refuses_absurd_input_without_a_crash(api: Api) -> None:
    viewer = api.headers("viewer")
    leaf = json.dumps({"op": "=", "field": "region", "value": "x"})
    deep = '{"ast": ' + '{"op": "not", "arg": ' * 2000 + leaf + "}" * 2000 + "}"
    r = api.client.post(
        RENDER, content=deep, headers={**viewer, "Content-Type": "application/json"}
    )
    assert r.status_code in (400, 422) and r.json()["error"]["code"] in (
        "too_deeply_nested",
        "bad_request",
    )
    long = {"op": "in", "field": "region", "values": ["x" * 100] * 250}
    error = render(api, long)["error"]
    assert error["path"] == "$.ast" and re.search(
        r"would be \d+ characters, over 20000", error["message"]
    )


def test_render_needs_a_login_and_the_viewer_role_is_enough(api: Api) -> None:
    r = api.client.post(RENDER, json={"ast": BUILT})
    assert r.status_code == 401
    r = api.client.post(RENDER, json={"ast": BUILT}, headers={"Authorization": "Bearer pt_nope"})
    assert r.status_code == 401
    for role in ("viewer", "editor", "admin"):
        assert render(api, BUILT, role)["ok"] is True
    # A browser session needs the CSRF header, like every other write-shaped call.
    csrf = login(api.client, "viewer")
    assert api.client.post(RENDER, json={"ast": BUILT}).status_code == 403
    r = api.client.post(RENDER, json={"ast": BUILT}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["expr"] == BUILT_TEXT
    assert list_events(api.store, action="criterion.*") == []  # nothing is stored


def test_the_builder_page_carries_both_field_schemas(api: Api) -> None:
    """The tree's field pickers come from the page: contact fields from the store's
    catalog, and the publication fields (for count(read where ...)) too."""
    login(api.client, "viewer")
    page = api.client.get("/criteria/new")
    assert page.status_code == 200

    def attribute(name: str) -> Any:
        found = re.search(rf"{name}='([^']*)'", page.text)
        assert found, name
        return json.loads(found.group(1))

    catalog = api.store.catalog()
    assert attribute("data-fields") == [
        {"name": n, "type": t.value} for n, t in sorted(catalog.contact_fields.items())
    ]
    assert attribute("data-publication-fields") == [
        {"name": n, "type": t.value} for n, t in sorted(catalog.publication_fields.items())
    ]
    assert attribute("data-personas") == ["emea"]
