"""Stored text that is not UTF-8, written into a SQLite file by another
program: the reads that must go on do (the stream's inputs, a contact's
page and search, the API), showing the bytes as U+FFFD, and other errors
are not mistaken for it. The columnar copy's marks are in
tests/columnar/test_copy_odd.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from personatag import accounts
from personatag.buckets import LocalBucket
from personatag.config import Settings
from personatag.contacts import (
    add_events,
    recent_activity,
    search_contacts,
    set_contact,
    show_contact,
)
from personatag.criteria.parse import parse
from personatag.criteria.to_flink import compile_flink
from personatag.definitions.personas import add_persona
from personatag.domain import utcnow
from personatag.engines.flink.snapshot import export_snapshot
from personatag.engines.local.stream.processor import StreamProcessor
from personatag.store import Store, open_store
from personatag.store.text import REPLACEMENT, is_lenient, leniently
from personatag.web import create_app
from tests.helpers import add_contacts, population
from tests.stream.test_processor import SETTINGS, members, ongoing_criterion
from tests.web.conftest import API, PASSWORD

BAD = "CAST(x'ff45' AS TEXT)"  # 0xFF never starts a UTF-8 sequence


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", create=True)
    add_contacts(store, population(20))
    with store.write() as conn:
        conn.execute(
            store.tables.publications.insert(),
            [{"id": f"p{i}", "title": f"Report {i}", "sector": "Energy"} for i in range(3)],
        )
    yield store
    store.dispose()


def write_behind(store: Store, sql: str) -> None:
    """An UPDATE by another program: no change-feed row, no validation."""
    with store.write() as conn:
        conn.execute(text(sql))


@pytest.mark.parametrize("set_based", [False, True])
def test_the_stream_goes_on_past_text_that_is_not_utf8(lite: Store, set_based: bool) -> None:
    add_persona(lite, "emea", name="EMEA", category="region")
    add_persona(lite, "energy", name="Energy", category="sector")
    add_persona(lite, "a-titles", name="A titles", category="title")
    ongoing_criterion(lite, "emea", "emea", 'region = "EMEA"', exit_policy="remove")
    ongoing_criterion(
        lite, "energy", "energy", 'count(read where sector = "Energy", 30d) >= 1', "remove"
    )
    # (seniority: a change of it evaluates the title again)
    title = 'job_title ilike "a%" and seniority >= 0'
    ongoing_criterion(lite, "a", "a-titles", title, exit_policy="remove")
    settings = (
        SETTINGS.model_copy(update={"stream_set_based_contacts": 1}) if set_based else SETTINGS
    )
    p = StreamProcessor(lite, settings)
    p.catch_up()
    before = members(lite, "emea")
    write_behind(lite, f"UPDATE contacts SET job_title = {BAD} WHERE id = 'c0001'")
    # A cut multibyte character (the store's case folding reads it too).
    write_behind(lite, "UPDATE contacts SET job_title = CAST(x'41f0a9' AS TEXT) WHERE id = 'c0004'")
    write_behind(lite, f"UPDATE contacts SET region = {BAD} WHERE id = 'c0002'")
    write_behind(lite, f"UPDATE publications SET title = {BAD} WHERE id = 'p1'")
    # c0001's change is read with its other fields; c0002's region is now
    # bytes the store compares as bytes: not "EMEA", as the stream finds.
    set_contact(lite, "c0001", {"region": "EMEA"})
    set_contact(lite, "c0002", {"seniority": "3"})
    set_contact(lite, "c0004", {"seniority": "3"})
    add_events(lite, "c0003", reads=[("p1", utcnow())])
    done = p.catch_up()
    assert done.changes == 4 and done.errors == 0
    assert members(lite, "emea") == (before | {"c0001"}) - {"c0002"}
    assert "c0003" in members(lite, "energy")
    assert "c0004" in members(lite, "a-titles")
    with lite.read() as conn:
        assert conn.scalar(select(func.count()).select_from(lite.tables.stream_errors)) == 0
    for crit in p.criteria().criteria:  # the same as the store's own answer
        drift = p.reconcile(crit, repair=False)
        assert (drift["missing"], drift["extra"]) == (0, 0), crit.label


def test_a_contact_page_and_search_show_the_bytes_as_replacement(lite: Store) -> None:
    write_behind(lite, f"UPDATE contacts SET region = {BAD}, last_name = 'Q' WHERE id = 'c0004'")
    write_behind(lite, f"UPDATE publications SET title = {BAD} WHERE id = 'p0'")
    add_events(lite, "c0004", reads=[("p0", utcnow())])
    shown = show_contact(lite, "c0004")
    assert shown["attributes"]["region"] == REPLACEMENT + "E"
    assert recent_activity(lite, "c0004")["reads"][0]["title"] == REPLACEMENT + "E"
    found = search_contacts(lite, "q")["items"]
    assert [(i["id"], i["region"]) for i in found] == [("c0004", REPLACEMENT + "E")]
    # The connection went back to the pool reading text strictly again.
    with lite.read() as conn, pytest.raises(OperationalError, match="decode to UTF-8"):
        conn.scalar(text("SELECT region FROM contacts WHERE id = 'c0004'"))


def test_the_api_answers_a_contact_holding_such_text(lite: Store, tmp_path: Path) -> None:
    write_behind(lite, f"UPDATE contacts SET firm = {BAD} WHERE id = 'c0005'")
    accounts.create_user(lite, "vic", PASSWORD, "viewer", actor="test")
    token, _ = accounts.create_token(lite, "vic", "tests", actor="test")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    app = create_app(Settings(data_dir=tmp_path / "data", store_url=url), lite)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        got = client.get(f"{API}/contacts/c0005")
        assert got.status_code == 200, got.text
        assert got.json()["attributes"]["firm"] == REPLACEMENT + "E"


def test_leniently_reads_again_only_for_undecodable_text(lite: Store) -> None:
    write_behind(lite, f"UPDATE contacts SET region = {BAD} WHERE id = 'c0006'")
    calls: list[bool] = []

    @leniently
    def regions(conn, store: Store) -> list[str]:  # type: ignore[no-untyped-def]
        calls.append(is_lenient(conn))
        return list(conn.scalars(select(store.tables.contacts.c.region).order_by("pk")))

    with lite.read() as conn:
        got = regions(conn, lite)
        assert not is_lenient(conn)
    assert calls == [False, True] and REPLACEMENT + "E" in got

    @leniently
    def broken(conn, store: Store) -> None:  # type: ignore[no-untyped-def]
        calls.append(True)
        conn.execute(text("SELECT no_such_column FROM contacts"))

    calls.clear()
    with lite.read() as conn, pytest.raises(DBAPIError, match="no_such_column"):
        broken(conn, lite)
    assert calls == [True]  # not read again


def test_a_flink_snapshot_carries_such_text_as_replacement(lite: Store, tmp_path: Path) -> None:
    write_behind(lite, f"UPDATE contacts SET region = {BAD} WHERE id = 'c0007'")
    # a cut multibyte character in a field the snapshot folds (ilike)
    write_behind(lite, "UPDATE contacts SET firm = CAST(x'45e282' AS TEXT) WHERE id = 'c0008'")
    staging = LocalBucket("staging", tmp_path / "staging")
    with lite.read() as conn:
        catalog = lite.catalog(conn)
    expr = parse('region = "EMEA" or firm ilike "e%"')
    query = compile_flink(expr, catalog=catalog, persona_pks={}, as_of=utcnow())
    snap = export_snapshot(lite, staging, query, catalog=catalog, persona_pks={})
    rows = [
        json.loads(line)
        for key in staging.list(snap.key)
        if key.rsplit("/", 1)[-1].startswith("part-")
        for line in staging.get(key).decode().splitlines()
    ]
    assert len(rows) == 20 and REPLACEMENT + "E" in [r.get("region") for r in rows]


def test_lenient_reads_nest_and_end_strict(lite: Store) -> None:
    write_behind(lite, f"UPDATE contacts SET region = {BAD} WHERE id = 'c0008'")
    query = text("SELECT region FROM contacts WHERE id = 'c0008'")
    with lite.read(lenient=True) as conn:
        with lite.backend.lenient_text(conn):
            assert is_lenient(conn)
        assert is_lenient(conn)  # still the outer one's
        assert conn.scalar(query) == REPLACEMENT + "E"
    with lite.read() as conn:
        assert not is_lenient(conn)
        with pytest.raises(OperationalError, match="decode to UTF-8"):
            conn.scalar(query)
