"""Contact updates and events, criterion lifecycle and stream status over the API."""

from __future__ import annotations

from sqlalchemy import select

from personatag.config import Settings
from personatag.engines.local.stream.processor import StreamProcessor
from tests.web.conftest import API, Api


def test_contact_update_and_events(api: Api) -> None:
    c, editor, viewer = api.client, api.headers("editor"), api.headers("viewer")
    r = c.patch(
        f"{API}/contacts/c0001", json={"fields": {"region": "EMEA", "seniority": 7}}, headers=editor
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"id": "c0001", "created": False, "changed": ["region", "seniority"]}
    shown = c.get(f"{API}/contacts/c0001", headers=viewer).json()
    assert shown["attributes"]["region"] == "EMEA" and shown["attributes"]["seniority"] == 7
    # Text is read like a CSV cell; the field and the reason are named.
    r = c.patch(f"{API}/contacts/c0001", json={"fields": {"seniority": "abc"}}, headers=editor)
    assert r.status_code == 422 and "seniority" in r.json()["error"]["message"]
    r = c.patch(f"{API}/contacts/c0001", json={"fields": {"colour": "red"}}, headers=editor)
    assert r.status_code == 422 and "unknown contact field 'colour'" in r.json()["error"]["message"]
    r = c.patch(f"{API}/contacts/nobody", json={"fields": {"region": "EMEA"}}, headers=editor)
    assert r.status_code == 404
    r = c.patch(
        f"{API}/contacts/new-1", json={"fields": {"region": "EMEA"}, "create": True}, headers=editor
    )
    assert r.status_code == 200 and r.json()["created"] is True
    assert c.patch(f"{API}/contacts/c0001", json={"fields": {}}, headers=editor).status_code == 422
    r = c.patch(f"{API}/contacts/c0001", json={"fields": {"region": "X"}}, headers=viewer)
    assert r.status_code == 403
    with api.store.write() as conn:
        conn.execute(api.store.tables.publications.insert().values(id="p1", sector="Energy"))
    body = {
        "reads": [{"publication": "p1", "at": "2026-06-01T10:00:00Z"}],
        "logins": ["2026-06-02T09:00:00Z"],
    }
    r = c.post(f"{API}/contacts/c0001/events", json=body, headers=editor)
    assert r.status_code == 200 and r.json() == {"reads": 1, "logins": 1}
    r = c.post(f"{API}/contacts/c0001/events", json=body, headers=editor)
    assert r.json() == {"reads": 0, "logins": 0}  # already known
    r = c.post(
        f"{API}/contacts/c0001/events", json={"reads": [{"publication": "nope"}]}, headers=editor
    )
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
    assert c.post(f"{API}/contacts/c0001/events", json={}, headers=editor).status_code == 422
    # Every write went into the change feed.
    with api.store.read() as conn:
        kinds = conn.scalars(select(api.store.tables.changes.c.kind)).all()
    assert kinds == ["contact", "contact", "read", "login", "contact"]


def test_criterion_lifecycle_and_stream_status(api: Api) -> None:
    c, editor, viewer = api.client, api.headers("editor"), api.headers("viewer")
    body = {
        "name": "emea-live",
        "persona": "emea",
        "expr": 'region = "EMEA"',
        "mode": "ongoing",
        "exit": "remove",
    }
    r = c.post(f"{API}/criteria", json=body, headers=editor)
    assert r.status_code == 201 and r.json()["status"] == "building"
    StreamProcessor(api.store, Settings(stream_reconcile_s=0)).catch_up()
    status = c.get(f"{API}/stream", headers=viewer).json()
    assert status["criteria"] == [
        {"criterion": "emea-live@1", "persona": "emea", "status": "active"}
    ]
    assert status["lag_changes"] == 0
    assert c.post(f"{API}/criteria/emea-live/pause", headers=editor).json()["status"] == "paused"
    r = c.post(f"{API}/criteria/emea-live/pause", headers=editor)
    assert r.status_code == 409 and "no version to pause" in r.json()["error"]["message"]
    assert c.post(f"{API}/criteria/emea-live/resume", headers=editor).json()["status"] == "building"
    assert c.post(f"{API}/criteria/emea-live/retire", headers=editor).json()["status"] == "retired"
    assert c.post(f"{API}/criteria/emea-live/retire", headers=viewer).status_code == 403
    assert c.post(f"{API}/criteria/nope/retire", headers=editor).status_code == 404


def test_stream_status_and_the_monitoring_page_show_partitions(api: Api) -> None:
    from personatag.contacts import set_contact
    from personatag.engines.local.stream import partitions
    from personatag.store import changefeed
    from tests.web.conftest import PASSWORD

    set_contact(api.store, "c0001", {"region": "EMEA"})
    set_contact(api.store, "c0002", {"region": "AMER"})
    partitions.align(api.store, "stream", 2)
    settings = Settings(stream_reconcile_s=0)
    StreamProcessor(api.store, settings, partition=(0, 2)).catch_up()  # p1 stays behind
    with api.store.read() as conn:
        head = changefeed.head(conn, api.store)
    data = api.client.get(f"{API}/stream", headers=api.headers("viewer")).json()
    assert [(p["name"], p["offset"]) for p in data["partitions"]] == [
        ("stream.p0of2", head),
        ("stream.p1of2", 0),
    ]
    assert data["offset"] == 0 and data["lag_changes"] == head  # the one furthest behind
    r = api.client.post(f"{API}/login", json={"username": "viewer", "password": PASSWORD})
    assert r.status_code == 200
    page = api.client.get("/monitoring").text
    assert 'id="stream-partitions"' in page and "stream.p1of2" in page
    assert f'<meter min="0" max="{head}" value="{head}"' in page
