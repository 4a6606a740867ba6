"""Personas through the API on both stores: create, edit, archive, restore
(editor), the size history from the membership log, and the members CSV."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from personatag import accounts
from personatag.audit_log import list_events
from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.domain import Action, utcnow
from personatag.store import Store
from personatag.web import create_app
from tests.events.conftest import tag
from tests.helpers import add_contacts, population
from tests.memberships.guard import outside_writes
from tests.web.conftest import API, PASSWORD, Api


@pytest.fixture
def both(store: Store, store_url: str, tmp_path: Path) -> Iterator[Api]:
    """The app over a fresh store of each kind, with a user and token per role."""
    rows = [{"first_name": None, "last_name": None, **r} for r in population(40)]
    rows[5]["first_name"], rows[5]["last_name"] = "=Ada", "Lovelace"
    rows[6]["first_name"], rows[6]["last_name"] = "Grace", "Hopper"
    add_contacts(store, rows)
    add_persona(store, "emea", name="EMEA", category="region")
    tokens = {}
    for role in accounts.ROLES:
        accounts.create_user(store, role, PASSWORD, role, actor="test")
        tokens[role], _ = accounts.create_token(store, role, "tests", actor="test")
    settings = Settings(data_dir=tmp_path / "data", store_url=store_url)
    with TestClient(create_app(settings, store)) as client:
        yield Api(client.app, client, store, settings, tokens)  # type: ignore[arg-type]


def test_create_edit_archive_restore(both: Api) -> None:
    c, editor, viewer = both.client, both.headers("editor"), both.headers("viewer")
    body = {"key": "apac", "name": "APAC", "category": "region", "description": "Asia"}
    assert c.post(f"{API}/personas", json=body, headers=editor).status_code == 201
    r = c.patch(f"{API}/personas/apac", json={"name": " Asia Pacific "}, headers=editor)
    assert r.status_code == 200
    assert (r.json()["name"], r.json()["category"], r.json()["description"]) == (
        "Asia Pacific",
        "region",
        "Asia",
    )
    r = c.patch(f"{API}/personas/apac", json={"description": None}, headers=editor)
    assert r.json()["description"] is None and r.json()["name"] == "Asia Pacific"
    # the same values again: nothing changes, nothing is audited
    assert c.patch(f"{API}/personas/apac", json={"name": "Asia Pacific"}, headers=editor).is_success
    r = c.post(f"{API}/personas/apac/archive", headers=editor)
    assert r.status_code == 200 and r.json()["archived_at"]
    r = c.patch(f"{API}/personas/apac", json={"category": "geo"}, headers=editor)
    assert r.status_code == 200 and r.json()["category"] == "geo"  # archived ones can be edited
    r = c.post(f"{API}/personas/apac/restore", headers=editor)
    assert r.status_code == 200 and r.json()["archived_at"] is None
    keys = [p["key"] for p in c.get(f"{API}/personas", headers=viewer).json()["personas"]]
    assert keys == ["apac", "emea"]  # by category: geo, then region
    events = list_events(both.store, target="apac")
    assert [e["action"] for e in events] == [
        "persona.restore",
        "persona.edit",
        "persona.archive",
        "persona.edit",
        "persona.edit",
        "persona.add",
    ]
    assert all(e["actor"] == "editor" and e["source"] == "api" for e in events)
    assert events[1]["detail"] == {"category": {"from": "region", "to": "geo"}}
    assert events[4]["detail"] == {"name": {"from": "APAC", "to": "Asia Pacific"}}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("POST", "/personas", {"key": "", "name": "X", "category": "c"}, 422, "key"),
        ("POST", "/personas", {"key": "Bad Key", "name": "X", "category": "c"}, 422, "Bad Key"),
        ("POST", "/personas", {"key": "emea", "name": "X", "category": "c"}, 409, "already"),
        ("POST", "/personas", {"key": "x", "name": "  ", "category": "c"}, 422, "name"),
        ("PATCH", "/personas/nope", {"name": "X"}, 404, "nope"),
        ("PATCH", "/personas/emea", {"name": ""}, 422, "name"),
        ("PATCH", "/personas/emea", {"name": "   "}, 422, "name"),
        ("PATCH", "/personas/emea", {"category": None}, 422, "category"),
        ("PATCH", "/personas/emea", {"key": "other"}, 422, "key"),
        ("POST", "/personas/nope/archive", None, 404, "nope"),
        ("POST", "/personas/nope/restore", None, 404, "nope"),
        ("POST", "/personas/emea/restore", None, 409, "not archived"),
        ("GET", "/personas/nope/size-history", None, 404, "nope"),
        ("GET", "/personas/emea/size-history?days=0", None, 422, "days"),
        ("GET", "/personas/emea/size-history?days=x", None, 422, "days"),
        ("GET", "/personas/nope/members.csv", None, 404, "nope"),
    ],
)
def test_bad_input_is_a_clear_4xx(
    both: Api, method: str, path: str, body: dict[str, object] | None, status: int, says: str
) -> None:
    r = both.client.request(method, API + path, json=body, headers=both.headers("editor"))
    assert r.status_code == status, r.text
    assert says in r.text


def test_viewers_read_but_cannot_change(both: Api) -> None:
    c, viewer = both.client, both.headers("viewer")
    writes = [
        ("POST", "/personas", {"key": "x", "name": "X", "category": "c"}),
        ("PATCH", "/personas/emea", {"name": "X"}),
        ("POST", "/personas/emea/archive", None),
        ("POST", "/personas/emea/restore", None),
    ]
    for method, path, body in writes:
        r = c.request(method, API + path, json=body, headers=viewer)
        assert r.status_code == 403, (method, path, r.text)
        assert "editor" in r.json()["error"]["message"]
    assert c.get(f"{API}/personas/emea/size-history", headers=viewer).status_code == 200
    assert c.get(f"{API}/personas/emea/members.csv", headers=viewer).status_code == 200
    assert c.get(f"{API}/personas/emea", headers=viewer).json()["name"] == "EMEA"


def _log_by_day(store: Store, persona_pk: int) -> tuple[Counter[date], Counter[date]]:
    """Enters and exits per UTC day, counted row by row from the log (the test's
    own count, to hold the API's aggregate against)."""
    log = store.tables.membership_log
    entered: Counter[date] = Counter()
    exited: Counter[date] = Counter()
    with store.read() as conn:
        rows = conn.execute(
            select(log.c.at, log.c.change, log.c.bulk_count).where(log.c.persona_pk == persona_pk)
        )
        for at, change, bulk in rows:
            (entered if change == "enter" else exited)[at.astimezone(UTC).date()] += bulk or 1
    return entered, exited


def test_size_history_counts_the_log_per_day(both: Api) -> None:
    c, editor, store = both.client, both.headers("editor"), both.store
    # Real writers: one bulk tag (10 EMEA contacts), a row-wise tag, pins in and out.
    tag(store, "emea", 'region = "EMEA"', bulk=1)
    tag(store, "emea", 'job_title = "Treasurer"')  # 8, of which 2 already EMEA
    for cid, kind in (("c0001", "in"), ("c0002", "in"), ("c0004", "out")):
        body = {"persona": "emea", "kind": kind, "reason": "test"}
        assert c.post(f"{API}/contacts/{cid}/pins", json=body, headers=editor).is_success
    assert c.delete(f"{API}/contacts/c0002/pins/emea", headers=editor).is_success
    tag(store, "emea", 'region = "APAC"', action=Action.UNTAG)
    # Spread the entries over days (the test's own write): seq n back n*2 days,
    # some of them before the window asked for.
    log = store.tables.membership_log
    today = utcnow().date()
    with outside_writes(), store.write() as conn:
        seqs = list(conn.scalars(select(log.c.seq).order_by(log.c.seq)))
        for n, seq in enumerate(seqs):
            at = datetime.combine(today - timedelta(days=2 * (len(seqs) - n)), datetime.min.time())
            at = at.replace(tzinfo=UTC) + timedelta(hours=23, minutes=59)
            conn.execute(log.update().where(log.c.seq == seq).values(at=at))
    assert len(seqs) > 5
    days = len(seqs)  # about half the entries fall before the window
    h = c.get(f"{API}/personas/emea/size-history?days={days}", headers=both.headers("viewer"))
    assert h.status_code == 200
    got = h.json()
    entered, exited = _log_by_day(store, 1)
    window = [today - timedelta(days=days - 1 - i) for i in range(days)]
    assert got["days"] == [d.isoformat() for d in window]
    assert got["entered"] == [entered[d] for d in window]
    assert got["exited"] == [exited[d] for d in window]
    start = sum(v for d, v in entered.items() if d < window[0]) - sum(
        v for d, v in exited.items() if d < window[0]
    )
    assert start > 0 and sum(got["entered"]) > 0 and sum(got["exited"]) > 0
    expected, size = [], start
    for d in window:
        size += entered[d] - exited[d]
        expected.append(size)
    assert got["size"] == expected
    # and the last day's size is the size now
    assert got["size"][-1] == c.get(f"{API}/personas/emea", headers=editor).json()["members"]


def test_members_csv_streams_every_member(both: Api) -> None:
    c, store = both.client, both.store
    tag(store, "emea", 'region = "EMEA" or job_title = "CIO"', bulk=1)
    members = c.get(f"{API}/personas/emea/members?limit=10000", headers=both.headers("viewer"))
    ids = members.json()["members"]
    with c.stream("GET", f"{API}/personas/emea/members.csv", headers=both.headers("viewer")) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/csv")
        assert 'filename="emea-members.csv"' in r.headers["content-disposition"]
        text = b"".join(r.iter_bytes()).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["id"] for row in rows] == ids and len(ids) == 16
    ada = next(row for row in rows if row["id"] == "c0005")
    assert ada["first_name"] == "'=Ada"  # no formula for a spreadsheet to run
    header = ["id", "first_name", "last_name", "email", "job_title", "firm", "region"]
    assert list(rows[0]) == header


def test_members_search_by_id_or_name_prefix(both: Api) -> None:
    c, viewer = both.client, both.headers("viewer")
    tag(both.store, "emea", 'region = "EMEA" or job_title = "CIO"')
    url = f"{API}/personas/emea/members"

    def found(q: str) -> list[str]:
        r = c.get(url, params={"q": q}, headers=viewer)
        assert r.status_code == 200, r.text
        return list(r.json()["members"])

    assert found("=ada") == ["c0005"]  # first name, any case
    assert found("  LOVE ") == ["c0005"]  # last name, trimmed
    assert found("=Ada Lov") == ["c0005"]  # "first last"
    assert found("gra") == []  # Grace Hopper (c0006) holds no persona
    assert found("C000") == ["c0000", "c0004", "c0005", "c0008"]  # id prefix
    assert found("%") == [] and found("_") == []  # no wildcards
    r = c.get(url, params={"q": "x" * 201}, headers=viewer)
    assert r.status_code == 422 and r.json()["error"]["field"] == "q"


def test_size_history_window_edges(both: Api) -> None:
    from personatag.memberships.persona_view import size_history

    store = both.store
    tag(store, "emea", 'region = "EMEA"', bulk=1)  # one bulk entry of 10, today
    today = utcnow().date()
    with store.read() as conn:
        later = size_history(conn, store, 1, 3, today=today + timedelta(days=5))
        earlier = size_history(conn, store, 1, 3, today=today - timedelta(days=1))
        one = size_history(conn, store, 1, 1)
    # before the window: the start size; after `today`: counted on the last day
    assert later.size == [10, 10, 10] and later.entered == [0, 0, 0]
    assert earlier.size == [0, 0, 10] and earlier.entered == [0, 0, 10]
    assert one.as_json() == {
        "days": [today.isoformat()],
        "size": [10],
        "entered": [10],
        "exited": [0],
    }


def test_pages_show_controls_by_role_and_say_what_is_missing(both: Api) -> None:
    c, editor, viewer = both.client, both.headers("editor"), both.headers("viewer")
    tag(both.store, "emea", 'region = "EMEA"')
    page = c.get("/personas/emea", headers=editor)
    assert page.status_code == 200
    assert 'data-archive="emea"' in page.text and 'id="persona-edit"' in page.text
    assert page.text.count('tr data-member="') == 10 and 'id="size-chart"' in page.text
    shown = c.get("/personas/emea", headers=viewer).text
    assert "data-archive" not in shown and "persona-edit" not in shown
    assert 'tr data-member="c0004"' in shown  # everything else is there
    assert "persona-new" not in c.get("/personas", headers=viewer).text
    searched = c.get("/personas/emea", params={"q": "c0004"}, headers=viewer).text
    assert searched.count('tr data-member="') == 1
    missing = c.get("/personas/nope", headers=viewer)
    assert missing.status_code == 404 and "There is no persona &#39;nope&#39;" in missing.text
    assert c.post(f"{API}/personas/emea/archive", headers=editor).is_success
    listed = c.get("/personas", headers=editor).text
    assert "No active personas — create one" in listed and 'data-restore="emea"' in listed
