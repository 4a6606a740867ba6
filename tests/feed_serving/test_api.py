"""The feed routes: shapes, roles, errors in the common format, rules CRUD."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from personatag.audit_log import list_events
from personatag.config import Settings
from personatag.contacts import add_events
from personatag.definitions.personas import add_persona
from personatag.domain import PinKind, utcnow
from personatag.engines.flink.runtime.supervisor import pid_alive
from personatag.memberships.pins import pin
from personatag.recommend.baselines import BASELINES
from personatag.store import versions
from tests.feed_serving.conftest import publications
from tests.web import conftest as web
from tests.web.conftest import API, Api

# The web fixtures (an app over a SQLite store, a token per role) in this module.
flink_url, settings, store, api = web.flink_url, web.settings, web.store, web.api


def world(api: Api) -> None:
    with api.store.write() as conn:
        conn.execute(api.store.tables.publications.insert(), publications(utcnow()))
        versions.bump(conn, api.store.tables, ["publications"])
    add_persona(api.store, "treas", name="Corporate Treasurers", category="role")
    pin(api.store, "treas", "c0002", PinKind.IN, actor="test")


def test_feed_shape_and_errors(api: Api) -> None:
    world(api)
    viewer = api.headers("viewer")
    r = api.client.get(f"{API}/contacts/c0001/feed?k=3", headers=viewer)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["contact"] == "c0001" and body["as_of"].endswith("Z")
    assert len(body["items"]) == 3
    assert set(body["items"][0]) == {
        "id", "title", "score", "reason", "series", "sector", "published_at", "rules"
    }  # fmt: skip
    assert api.client.get(f"{API}/contacts/c0001/feed").status_code == 401

    r = api.client.get(f"{API}/contacts/nobody/feed", headers=viewer)
    assert r.status_code == 404
    assert r.json()["error"] == {
        "status": 404, "code": "not_found", "message": "unknown contact 'nobody'"
    }  # fmt: skip
    for query, field in (
        ("k=0", "k"),
        ("k=101", "k"),
        ("k=ten", "k"),
        ("as_of=yesterday", "as_of"),
        ("as_of=2999-01-01T00:00:00Z", "as_of"),
    ):
        r = api.client.get(f"{API}/contacts/c0001/feed?{query}", headers=viewer)
        assert r.status_code == 422, (query, r.text)
        assert r.json()["error"]["field"] == field, query
    past = (utcnow() - timedelta(hours=5, minutes=30)).isoformat()
    r = api.client.get(
        f"{API}/contacts/c0001/feed", params={"k": 100, "as_of": past}, headers=viewer
    )
    assert {i["id"] for i in r.json()["items"]} == {f"p{i:02d}" for i in range(6, 13)}


def test_rules_crud_by_role(api: Api) -> None:
    world(api)
    rules = f"{API}/personas/treas/feed-rules"
    boost = {"kind": "boost", "expr": 'series = "Credit Monthly"', "weight": 50}
    assert api.client.post(rules, json=boost, headers=api.headers("viewer")).status_code == 403
    r = api.client.post(rules, json=boost, headers=api.headers("editor"))
    assert r.status_code == 201, r.text
    rule = r.json()
    assert (rule["kind"], rule["persona"], rule["created_by"]) == ("boost", "treas", "editor")
    r = api.client.get(rules, headers=api.headers("viewer"))
    assert [x["id"] for x in r.json()["rules"]] == [rule["id"]]

    # applies on the next request: the holder's feed leads with the boosted series
    feed = api.client.get(f"{API}/contacts/c0002/feed?k=4", headers=api.headers("viewer")).json()
    assert [i["series"] for i in feed["items"]] == ["Credit Monthly"] * 4

    bad = {"kind": "filter", "expr": 'sector = "Energy" and\n  regoin = "EMEA"'}
    r = api.client.post(rules, json=bad, headers=api.headers("editor"))
    assert r.status_code == 422
    err = r.json()["error"]
    assert (err["code"], err["field"], err["line"], err["col"]) == (
        "invalid_criterion",
        "expr",
        2,
        3,
    )
    assert "did you mean 'region'" in err["message"]
    for body, code in (
        ({"kind": "boost", "expr": 'sector = "Energy"'}, "invalid_input"),
        ({"kind": "pin", "publication": "p01", "weight": 2}, "invalid_input"),
        ({"kind": "cap", "cap": 0}, "validation_error"),
        ({"kind": "cap", "cap": 2, "extra": 1}, "validation_error"),
        ({"kind": "nudge"}, "validation_error"),
    ):
        r = api.client.post(rules, json=body, headers=api.headers("editor"))
        assert (r.status_code, r.json()["error"]["code"]) == (422, code), body
    r = api.client.post(
        f"{API}/personas/ghost/feed-rules", json=boost, headers=api.headers("editor")
    )
    assert r.status_code == 404

    one = f"{rules}/{rule['id']}"
    assert api.client.delete(one, headers=api.headers("viewer")).status_code == 403
    assert api.client.delete(f"{API}/personas/emea/feed-rules/{rule['id']}",
                             headers=api.headers("editor")).status_code == 404  # fmt: skip
    r = api.client.delete(one, headers=api.headers("editor"))
    assert r.status_code == 200 and r.json()["id"] == rule["id"]
    assert api.client.delete(one, headers=api.headers("editor")).status_code == 404
    feed = api.client.get(f"{API}/contacts/c0002/feed?k=4", headers=api.headers("viewer")).json()
    assert [i["series"] for i in feed["items"]] != ["Credit Monthly"] * 4
    events = list_events(api.store, action="feed_rule.*")
    assert [(e["action"], e["source"]) for e in events] == [
        ("feed_rule.remove", "api"),
        ("feed_rule.add", "api"),
    ]


def test_pin_and_cap_rules_over_the_api(api: Api) -> None:
    world(api)
    rules = f"{API}/personas/treas/feed-rules"
    editor = api.headers("editor")
    expires = (utcnow() + timedelta(days=1)).isoformat()
    r = api.client.post(rules, json={"kind": "pin", "publication": "p12", "expires_at": expires},
                        headers=editor)  # fmt: skip
    assert r.status_code == 201, r.text
    assert api.client.post(rules, json={"kind": "cap", "cap": 1}, headers=editor).status_code == 201
    r = api.client.post(rules, json={"kind": "cap", "cap": 2}, headers=editor)
    assert r.status_code == 409
    items = api.client.get(f"{API}/contacts/c0002/feed", headers=editor).json()["items"]
    assert items[0]["id"] == "p12" and items[0]["reason"] == "pinned for Corporate Treasurers"
    assert len(items) == 3 and len({i["series"] for i in items}) == 3


def test_feed_by_a_baseline(api: Api) -> None:
    world(api)
    viewer = api.headers("viewer")
    add_events(api.store, "c0001", reads=[("p01", utcnow() - timedelta(minutes=1))])
    plain = api.client.get(f"{API}/contacts/c0001/feed?k=3", headers=viewer).json()
    assert "ranker" not in plain  # the served ranking's answer is unchanged
    for key, name in (
        ("b0", "B0 editions"),
        ("b1", "B1 popular"),
        ("b2", "B2 persona popular"),
        ("b3", "B3 your coverage"),
        ("b4", "B4 item-kNN"),
    ):
        r = api.client.get(f"{API}/contacts/c0001/feed?k=5&ranker={key}", headers=viewer)
        assert r.status_code == 200, (key, r.text)
        body = r.json()
        assert body["ranker"] == key and len(body["items"]) == 5
        ids = [i["id"] for i in body["items"]]
        # Eligible only: nothing read (p01), nothing not yet published.
        assert "p01" not in ids and "pfuture" not in ids, key
        assert all(i["reason"].startswith(f"{name}: ") for i in body["items"]), key
    # Nobody read anything else: B1's popularity ties, so recency decides.
    b1 = api.client.get(f"{API}/contacts/c0001/feed?k=3&ranker=b1", headers=viewer).json()
    assert [i["id"] for i in b1["items"]] == ["p02", "p03", "p04"]
    r = api.client.get(f"{API}/contacts/c0001/feed?ranker=b9", headers=viewer)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "ranker"
    assert "use one of ours, b0, b1, b2, b3, b4" in r.json()["error"]["message"]


def _wait_for(api: Api, run_id: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = api.client.get(f"{API}/feed/evaluations/{run_id}", headers=api.headers("viewer"))
        assert r.status_code == 200, r.text
        if r.json()["status"] != "running":
            return r.json()  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"{run_id} still running"
        time.sleep(0.5)


def test_feed_evaluations_run_in_their_own_process(api: Api) -> None:
    editor, viewer = api.headers("editor"), api.headers("viewer")
    small = {"contacts": 3000, "reports": 150, "weeks": 2, "samples": 20, "seed": 4}
    assert api.client.post(f"{API}/feed/evaluations", json=small, headers=viewer).status_code == 403
    for bad, field in (({"contacts": 0}, "contacts"), ({"persona_share": 2}, "persona_share")):
        r = api.client.post(f"{API}/feed/evaluations", json=bad, headers=editor)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
    r = api.client.post(f"{API}/feed/evaluations", json={"colour": "red"}, headers=editor)
    assert r.status_code == 422

    r = api.client.post(f"{API}/feed/evaluations", json=small, headers=editor)
    assert r.status_code == 202, r.text
    run = r.json()
    assert run["status"] == "running" and run["created_by"] == "editor"
    assert run["params"] == {**small, "persona_share": 0.5}
    # One at a time: the first is still starting up.
    again = api.client.post(f"{API}/feed/evaluations", json=small, headers=editor)
    assert again.status_code == 409
    assert run["id"] in again.json()["error"]["message"]

    done = _wait_for(api, run["id"])
    assert done["status"] == "succeeded", done["error"]
    summary = done["summary"]
    assert (summary["generated_contacts"], summary["generated_reports"]) == (3000, 150)
    assert set(summary["rankers"]) == {"ours", *BASELINES}
    assert len(summary["weeks"]) == 2 and summary["units"] > 0
    listed = api.client.get(f"{API}/feed/evaluations", headers=viewer).json()["evaluations"]
    assert [e["id"] for e in listed] == [run["id"]]
    assert api.client.get(f"{API}/feed/evaluations/ev-nope", headers=viewer).status_code == 404


def test_a_running_feed_evaluation_can_be_cancelled(api: Api, settings: Settings) -> None:
    editor, viewer = api.headers("editor"), api.headers("viewer")
    big = {"contacts": 500_000, "weeks": 8}
    run = api.client.post(f"{API}/feed/evaluations", json=big, headers=editor).json()
    pid = json.loads((settings.data_dir / "feed-evaluations" / f"{run['id']}.json").read_text())[
        "pid"
    ]
    assert pid_alive(pid)
    url = f"{API}/feed/evaluations/{run['id']}/cancel"
    assert api.client.post(url, headers=viewer).status_code == 403
    r = api.client.post(url, headers=editor)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["error"]) == ("cancelled", "cancelled by editor")
    # Its process is gone, and the run stays cancelled.
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid)
    shown = api.client.get(f"{API}/feed/evaluations/{run['id']}", headers=viewer).json()
    assert shown["status"] == "cancelled" and shown["summary"] is None
    again = api.client.post(url, headers=editor)
    assert again.status_code == 409 and "not running (cancelled)" in again.text
    # Nothing runs any more: a new one may start.
    small = {"contacts": 1500, "reports": 60, "weeks": 1, "samples": 10}
    r = api.client.post(f"{API}/feed/evaluations", json=small, headers=editor)
    assert r.status_code == 202, r.text
    assert _wait_for(api, r.json()["id"])["status"] == "succeeded"
