"""/api/v1/membership-log and /api/v1/webhooks over a real app and store."""

from __future__ import annotations

import json

from personatag.domain import PinKind
from personatag.membership_events.delivery import WebhookWorker
from personatag.memberships.pins import pin
from tests.events.conftest import FAST, Clock, tag
from tests.events.receiver import Receiver
from tests.web import conftest as web
from tests.web.conftest import API, Api

# The web tests' fixtures: an app over a SQLite store with a token per role.
api, flink_url, settings, store = web.api, web.flink_url, web.settings, web.store


def test_membership_log_streams_json_lines(api: Api) -> None:
    tag(api.store, "emea", 'region = "EMEA"', bulk=3)
    pin(api.store, "emea", "c0001", PinKind.IN)
    viewer = api.headers("viewer")
    res = api.client.get(f"{API}/membership-log", headers=viewer)
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("application/x-ndjson")
    events = [json.loads(line) for line in res.text.splitlines()]
    assert len(events) == 11 and events[-1]["contact_id"] == "c0001"
    page = api.client.get(f"{API}/membership-log?limit=1", headers=viewer).text.splitlines()
    assert len(page) == 10  # one bulk entry, never split
    since = events[0]["seq"]
    rest = api.client.get(f"{API}/membership-log?since={since}&persona=emea", headers=viewer)
    assert [json.loads(x) for x in rest.text.splitlines()] == events[10:]
    missing = api.client.get(f"{API}/membership-log?persona=ghost", headers=viewer)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "unknown persona 'ghost'"
    assert api.client.get(f"{API}/membership-log?limit=0", headers=viewer).status_code == 422


def test_webhooks_crud_and_dead_letters(api: Api, rx: Receiver) -> None:
    admin = api.headers("admin")
    res = api.client.post(f"{API}/webhooks", json={"url": rx.url}, headers=admin)
    assert res.status_code == 201
    created = res.json()
    rx.secret = created["secret"]
    hook = created["id"]
    assert (
        api.client.post(
            f"{API}/webhooks", json={"url": "file:///etc/passwd"}, headers=admin
        ).status_code
        == 422
    )
    assert (
        api.client.post(
            f"{API}/webhooks", json={"url": rx.url, "personas": ["ghost"]}, headers=admin
        ).status_code
        == 404
    )
    listed = api.client.get(f"{API}/webhooks", headers=admin).json()["webhooks"]
    assert [h["id"] for h in listed] == [hook] and "secret" not in listed[0]
    assert api.client.get(f"{API}/webhooks", headers=api.headers("editor")).status_code == 403
    pin(api.store, "emea", "c0001", PinKind.IN)
    rx.always_fail = True
    worker, clock = WebhookWorker(api.store, FAST), Clock()
    for _ in range(FAST.webhook_max_attempts):
        worker.deliver_once(clock())
    letters = api.client.get(f"{API}/webhooks/dead-letters?webhook={hook}", headers=admin).json()
    [letter] = letters["dead_letters"]
    assert letter["events"] == 1 and letter["last_error"] == "HTTP 500"
    url = f"{API}/webhooks/dead-letters/{letter['id']}/redeliver"
    refused = api.client.post(url, headers=admin)
    assert refused.status_code == 502 and refused.json()["error"]["code"] == "delivery_failed"
    rx.always_fail = False
    done = api.client.post(url, headers=admin)
    assert done.status_code == 200 and done.json()["redelivered_at"] is not None
    assert [e["contact_id"] for e in rx.events()] == ["c0001"]
    off = api.client.post(f"{API}/webhooks/{hook}/disable", headers=admin)
    assert off.status_code == 200 and off.json()["enabled"] is False
    on = api.client.post(f"{API}/webhooks/{hook}/enable", headers=admin)
    assert on.json()["enabled"] is True
    assert api.client.delete(f"{API}/webhooks/{hook}", headers=admin).status_code == 204
    assert api.client.delete(f"{API}/webhooks/{hook}", headers=admin).status_code == 404
    audit = api.client.get(f"{API}/audit?action=webhook.*", headers=admin).json()["events"]
    assert {(e["action"], e["source"], e["actor"]) for e in audit} == {
        ("webhook.create", "api", "admin"),
        ("webhook.redeliver", "api", "admin"),
        ("webhook.disable", "api", "admin"),
        ("webhook.enable", "api", "admin"),
        ("webhook.remove", "api", "admin"),
    }
