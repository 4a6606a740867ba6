"""GET /api/v1/contacts: search by id, name, email and firm, on every store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from personatag import accounts
from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.domain import PinKind
from personatag.memberships.pins import pin
from personatag.store import Store, open_store
from personatag.web import create_app
from tests.conftest import drop_pg, new_pg_url
from tests.helpers import add_contacts
from tests.web.conftest import API, PASSWORD

PEOPLE = [
    ("c0001", "Ada", "Lovelace", "ada.lovelace@analytical.example", "Analytical Engines", "EMEA"),
    ("c0002", "Adam", "Smith", "adam@wealth.example", "Wealth of Nations", "EMEA"),
    ("C0003", "Grace", "Hopper", "grace@navy.example", "US Navy", "AMER"),
    ("c0004", "Alan", "Turing", "alan@bletchley.example", "Bletchley Park", "EMEA"),
    ("c0005", "Bob", "Adams", "bob@acme.example", "Acme Capital", "APAC"),
    ("c0006", "Émile", "Borel", "emile@borel.example", "Adamant Partners", "EMEA"),
    ("c0007", "Ada", "Yonath", "yonath@weizmann.example", "Weizmann_Institute", "EMEA"),
    ("c0008", "Van", "der Berg", "vdb@acme.example", "100% Funds", "EMEA"),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def client(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> Iterator[tuple[TestClient, Store]]:
    if request.param == "sqlite":
        url = settings.resolved_store_url
        store = open_store(url, create=True)
    else:
        url = new_pg_url(request.getfixturevalue("pg_template"))
        store = open_store(url)
    add_contacts(
        store,
        [
            {"id": i, "first_name": f, "last_name": ln, "email": e, "firm": fm, "region": r}
            for i, f, ln, e, fm, r in PEOPLE
        ],
    )
    add_persona(store, "emea", name="EMEA", category="region")
    pin(store, "emea", "c0001", PinKind.IN, actor="test")
    accounts.create_user(store, "vic", PASSWORD, "viewer", actor="test")
    token, _ = accounts.create_token(store, "vic", "tests", actor="test")
    app = create_app(settings.model_copy(update={"store_url": url}), store)
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {token}"
        yield c, store
    store.dispose()
    if request.param == "postgresql":
        drop_pg(url)


def ids(client: tuple[TestClient, Store], **params: Any) -> list[str]:
    r = client[0].get(f"{API}/contacts", params=params)
    assert r.status_code == 200, r.text
    return [hit["id"] for hit in r.json()["items"]]


def test_search_by_id_is_trimmed_and_case_insensitive_exact(client: Any) -> None:
    assert ids(client, q="  C0001 ") == ["c0001"]
    assert ids(client, q="c0003") == ["C0003"]
    assert ids(client, q="c000") == []  # an id is matched whole, not by prefix


def test_search_by_name_prefix_any_case(client: Any) -> None:
    # id matches first, then first names, last names, emails, firms: each alphabetical
    assert ids(client, q="ada") == ["c0001", "c0007", "c0002", "c0005", "c0006"]
    assert ids(client, q="ADA LOVE") == ["c0001"]
    assert ids(client, q="hopp") == ["C0003"]
    assert ids(client, q="van der") == ["c0008"]


def test_search_by_email_and_firm_prefix(client: Any) -> None:
    assert ids(client, q="grace@") == ["C0003"]
    assert ids(client, q="ACME") == ["c0005"]  # by firm
    assert ids(client, q="vdb@ACME") == ["c0008"]
    # first name, last name, then firm; c0002's email matches too but it is listed once
    assert ids(client, q="adam") == ["c0002", "c0005", "c0006"]
    assert ids(client, q="bletchley p") == ["c0004"]


def test_search_treats_like_wildcards_as_text(client: Any) -> None:
    assert ids(client, q="100%") == ["c0008"]
    assert ids(client, q="weizmann_") == ["c0007"]
    assert ids(client, q="%") == []
    assert ids(client, q="_") == []


def test_search_hits_carry_name_email_firm_region_and_personas(client: Any) -> None:
    r = client[0].get(f"{API}/contacts", params={"q": "ada lovelace"})
    (hit,) = r.json()["items"]
    assert hit == {
        "id": "c0001",
        "name": "Ada Lovelace",
        "email": "ada.lovelace@analytical.example",
        "firm": "Analytical Engines",
        "region": "EMEA",
        "matched": "name",
        "personas": ["emea"],
    }


def test_search_pages(client: Any) -> None:
    first = client[0].get(f"{API}/contacts", params={"q": "ada", "limit": 2}).json()
    assert [h["id"] for h in first["items"]] == ["c0001", "c0007"]
    assert first["next_offset"] == 2
    rest = ids(client, q="ada", limit=2, offset=2) + ids(client, q="ada", limit=2, offset=4)
    assert rest == ["c0002", "c0005", "c0006"]
    last = client[0].get(f"{API}/contacts", params={"q": "ada", "limit": 2, "offset": 4})
    assert last.json()["next_offset"] is None
    assert ids(client, q="ada", offset=50) == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "   "}, "q"),
        ({"q": "x" * 201}, "q"),
        ({"q": "a\x00b"}, "q"),
        ({"q": "a", "limit": 0}, "limit"),
        ({"q": "a", "limit": 101}, "limit"),
        ({"q": "a", "offset": -1}, "offset"),
        ({"q": "a", "offset": 10_001}, "offset"),
        ({"q": "a", "limit": "ten"}, "limit"),
    ],
)
def test_bad_search_parameters_are_422_naming_the_field(
    client: Any, params: dict[str, Any], field: str
) -> None:
    r = client[0].get(f"{API}/contacts", params=params)
    assert r.status_code == 422, r.text
    assert field in r.text


def test_search_needs_a_login(client: Any) -> None:
    r = client[0].get(f"{API}/contacts", params={"q": "ada"}, headers={"Authorization": ""})
    assert r.status_code == 401
