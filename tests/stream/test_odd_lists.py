"""A LIST value another program wrote that is not a JSON array (`hello`,
`"Credit"`, `null`, `{}`): the stream goes on, reporting the criteria that
read it for that contact as failed (the store's own evaluation fails on
text that is not JSON too), and answers every other criterion; a page
shows the text as stored. SQLite only: PostgreSQL's arrays rule it out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text

from personatag.contacts import set_contact, show_contact
from personatag.definitions.personas import add_persona
from personatag.engines.local.stream.processor import StreamProcessor
from personatag.store import Store, open_store
from personatag.store.types import NotAList
from tests.helpers import add_contacts, population
from tests.stream.test_processor import SETTINGS, members, ongoing_criterion

ODD = {"c0001": "'hello'", "c0002": "'\"Credit\"'", "c0005": "'null'", "c0007": "'{\"a\": 1}'"}


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", create=True)
    add_contacts(store, population(12))
    yield store
    store.dispose()


@pytest.mark.parametrize("mode", ["per contact", "set-based", "set-based with personas"])
def test_the_stream_reports_a_list_that_is_not_json_and_goes_on(lite: Store, mode: str) -> None:
    """Set-based, the store's statement fails for every contact at once
    (json_each: malformed JSON): the changed contacts are then answered one
    by one, and only those holding such a list fail."""
    add_persona(lite, "credit", name="Credit", category="interest")
    add_persona(lite, "emea", name="EMEA", category="region")
    ongoing_criterion(lite, "credit", "credit", 'interests contains "Credit" and seniority >= 0')
    ongoing_criterion(lite, "emea", "emea", 'region = "EMEA" or seniority = 99', "remove")
    if mode == "set-based with personas":
        add_persona(lite, "both", name="Both", category="combined")
        ongoing_criterion(lite, "both", "both", 'persona("credit") and persona("emea")')
    settings = SETTINGS
    if mode != "per contact":
        settings = SETTINGS.model_copy(update={"stream_set_based_contacts": 1})
    p = StreamProcessor(lite, settings)
    p.catch_up()
    for cid, value in ODD.items():
        with lite.write() as conn:
            conn.execute(text(f"UPDATE contacts SET interests = {value} WHERE id = '{cid}'"))
    for cid in [*ODD, "c0003"]:
        set_contact(lite, cid, {"seniority": "99"})
    done = p.catch_up()
    assert done.changes == 5 and done.errors == len(ODD)
    assert members(lite, "emea") >= {*ODD, "c0003"}  # the other criterion answered
    assert "c0003" in members(lite, "credit")  # [Energy, Credit]: i % 3 == 0
    with lite.read() as conn:
        errors = conn.execute(select(lite.tables.stream_errors.c.error)).scalars().all()
    assert all("a stored list that is not a JSON array" in e for e in errors), errors
    shown = show_contact(lite, "c0001")["attributes"]["interests"]
    assert shown == "hello" and isinstance(shown, NotAList)


def test_a_list_that_is_not_json_refuses_list_operations() -> None:
    odd = NotAList('"Credit"')
    with pytest.raises(TypeError, match="not a JSON array"):
        _ = "Credit" in odd
    with pytest.raises(TypeError, match="not a JSON array"):
        list(odd)
    assert str(odd) == '"Credit"' and odd.upper() == '"CREDIT"'
