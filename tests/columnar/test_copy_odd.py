"""Values another program wrote into SQLite columns of another type (2.5 or
'high' in an INT column, a blob in a STRING one): the copy is still built and
caught up, marks those contacts' fields (frame.ODD), and a criterion reading
such a field is answered by the store, saying why; once the values are
corrected the copy answers again. PostgreSQL's column types rule such values
out, so these stores are SQLite."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from personatag.config import Settings
from personatag.contacts import set_contact
from personatag.definitions.attributes import add_attribute
from personatag.definitions.personas import add_persona
from personatag.domain import Action
from personatag.engines.columnar import copy
from personatag.engines.columnar.batch import current_frame, odd_fields
from personatag.engines.columnar.frame import ODD, Frame
from personatag.generate.run import generate
from personatag.store import Store, open_store
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from personatag.tagging.preview import preview
from tests.columnar.test_copy import persist_mode  # noqa: F401

END = datetime(2026, 6, 30, 12, tzinfo=UTC)

# (column, SQL value written behind personatag's back, a criterion reading it)
ODD_VALUES = [
    ("seniority", "2.5", "seniority > 2"),
    ("seniority", "'high'", "seniority >= 0"),
    ("last_login_at", "'yesterday'", "last_login_at within 30d"),
    ("region", "x'00ff'", 'region = "EMEA"'),
    ("interests", "'\"Credit\"'", 'interests contains "Credit"'),
    ("interests", "'{\"a\": 1}'", "interests is null"),
    ("interests", "CAST('[\"Credit\"]' AS BLOB)", 'interests contains "Credit"'),
    ("interests", "'[1, \"Credit\"]'", 'interests contains "1"'),
    ("interests", "'[null]'", 'interests contains "None"'),
    ("cx_score", "'n/a'", "score > 0.5"),
    ("cx_vip", "2", "vip = true"),
    ("cx_vip", "'yes'", "vip is null"),
    # text that is not UTF-8 (0xFF starts no UTF-8 sequence)
    ("region", "CAST(x'ff45' AS TEXT)", 'region = "EMEA"'),
    ("job_title", "CAST(x'43c3' AS TEXT)", 'job_title ilike "c%"'),
    ("interests", "CAST(x'5b22ff225d' AS TEXT)", 'interests contains "Credit"'),
    # a cut multibyte character (E2 82: two of the euro sign's three bytes),
    # which the store's own case folding must take too
    ("region", "CAST(x'45e282' AS TEXT)", 'region = "Nowhere"'),
    ("job_title", "CAST(x'41f0a9' AS TEXT)", 'job_title ilike "a%"'),
]


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", create=True)
    generate(store, contacts=300, seed=8, end=END)
    add_attribute(store, "score", "float")
    add_attribute(store, "vip", "bool")
    with store.write() as conn:
        conn.execute(text("UPDATE contacts SET cx_score = (pk % 10) / 10.0, cx_vip = pk % 2"))
    add_persona(store, "target", name="Target", category="test")
    yield store
    store.dispose()


def marked(frame: Frame) -> dict[str, list[int]]:
    """The copy's marked pks by field, as lists."""
    return {k: v.tolist() for k, v in odd_fields(frame).items()}


def settings_for(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


def write_behind(store: Store, pk: int, column: str, value: str) -> None:
    """An UPDATE by another program: no change-feed row, no validation."""
    with store.write() as conn:
        conn.execute(text(f"UPDATE contacts SET {column} = {value} WHERE pk = :pk"), {"pk": pk})


def answers(
    store: Store, s: Settings, expr: str, caplog: pytest.LogCaptureFixture
) -> tuple[dict, dict, str | None]:
    """The local engine's preview, the columnar engine's, and the warning it
    gave when the store answered it instead (None: the copy answered)."""
    local = preview(store, expr, engine="local", settings=s, as_of=END)  # type: ignore[arg-type]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="personatag.tagging.fallback"):
        col = preview(store, expr, engine="columnar", settings=s, as_of=END)  # type: ignore[arg-type]
    said = [r.getMessage() for r in caplog.records if r.name == "personatag.tagging.fallback"]
    return local, col, (said[0] if said else None)


@pytest.mark.parametrize(("column", "value", "expr"), ODD_VALUES)
def test_an_odd_value_at_build_is_answered_by_the_store(
    lite: Store,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    column: str,
    value: str,
    expr: str,
) -> None:
    write_behind(lite, 7, column, value)
    s = settings_for(tmp_path)
    local, col, warning = answers(lite, s, expr, caplog)
    assert col == local
    field = column.removeprefix("cx_")
    assert warning is not None and f"are in {field} (" in warning and "pk 7" in warning
    frame = current_frame(lite, s)
    assert marked(frame) == {field: [7]}
    # The copy was built once and stays: criteria on other fields use it.
    built = copy.read_manifest(copy.folder_of(s, lite))["base"]
    local, col, warning = answers(lite, s, 'firm_type = "Hedge Fund"', caplog)
    assert warning is None and col == local
    assert copy.read_manifest(copy.folder_of(s, lite))["base"] == built


def test_corrected_and_new_odd_values_follow_the_feed(
    lite: Store,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    persist_mode: str,  # noqa: F811
) -> None:
    s = settings_for(tmp_path)
    write_behind(lite, 3, "seniority", "2.5")
    write_behind(lite, 4, "seniority", "'x'")
    assert answers(lite, s, "seniority > 2", caplog)[2] is not None
    # Corrected through personatag: the patch re-reads the contact's marks.
    set_contact(lite, "c00000003", {"seniority": "3"})
    local, col, warning = answers(lite, s, "seniority > 2", caplog)
    assert warning is not None and "1 contact(s), pk 4" in warning and col == local
    # A change to another field of contact 4 re-reads its marks too, after
    # its seniority was corrected behind personatag's back.
    write_behind(lite, 4, "seniority", "5")
    set_contact(lite, "c00000004", {"region": "EMEA"})
    local, col, warning = answers(lite, s, "seniority > 2", caplog)
    assert warning is None and col == local
    # A contact changed through personatag and then, before the copy caught
    # up, behind its back: marked when the copy reads the change.
    set_contact(lite, "c00000005", {"seniority": "6"})
    write_behind(lite, 5, "seniority", "6.5")
    local, col, warning = answers(lite, s, "seniority > 6", caplog)
    assert warning is not None and "pk 5" in warning and col == local
    # A new process reads the marks from the files (delta or new base).
    copy._CACHE.pop(copy.folder_of(s, lite).resolve(), None)
    copy._FRAMES.pop(copy.folder_of(s, lite).resolve(), None)
    frame = current_frame(lite, s)
    assert marked(frame) == {"seniority": [5]}


def test_a_tag_of_an_odd_field_runs_on_the_store_and_says_so(lite: Store, tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    write_behind(lite, 9, "seniority", "7.5")
    req = AdhocRequest(
        persona="target", action=Action.TAG, expr="seniority > 7", as_of=END, engine="columnar"
    )
    out = run_adhoc(lite, req, s).as_json()
    with lite.read() as conn:
        held = set(
            conn.scalars(
                text(
                    "SELECT contact_pk FROM memberships m JOIN personas p ON p.pk = m.persona_pk "
                    "WHERE p.key = 'target'"
                )
            )
        )
        truth = set(conn.scalars(text("SELECT pk FROM contacts WHERE seniority > 7")))
    assert held == truth and 9 in held
    assert "seniority (INT)" in str(out), out


def test_no_odd_values_cost_nothing(lite: Store, tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    frame = current_frame(lite, s)
    col = frame.contacts.columns[ODD]
    assert col.dictionary is not None and len(col.dictionary) == 0
    assert bool(np.all(np.asarray(col.values) == -1))
    assert odd_fields(frame) == {}


def test_one_catch_up_marks_every_field_of_a_contact(
    lite: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = settings_for(tmp_path)
    answers(lite, s, "seniority > 6", caplog)  # the copy, built
    # Two changes naming different fields of one contact, each field then
    # written behind personatag's back, all before the copy catches up.
    set_contact(lite, "c00000005", {"seniority": "6"})
    set_contact(lite, "c00000005", {"region": "EMEA"})
    write_behind(lite, 5, "seniority", "6.5")
    write_behind(lite, 5, "region", "x'00ff'")
    frame = current_frame(lite, s)
    assert marked(frame) == {
        "region": [5],
        "seniority": [5],
    }
    for expr in ("region is null", "seniority > 6"):
        local, col, warning = answers(lite, s, expr, caplog)
        assert warning is not None and col == local


@pytest.mark.parametrize(
    ("column", "value", "expr"),
    [
        ("sector", "CAST(sector AS BLOB)", "count(read where sector is null, 3650d) >= 1"),
        ("sector", "CAST(x'ff45' AS TEXT)", 'count(read where sector = "Energy", 3650d) >= 1'),
        (
            "published_at",
            "'yesterday'",
            "count(read where not published_at within 100000d, 3650d) >= 1",
        ),
    ],
)
def test_a_publication_value_of_another_type_is_answered_by_the_store(
    lite: Store,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    column: str,
    value: str,
    expr: str,
) -> None:
    with lite.write() as conn:
        conn.execute(text(f"UPDATE publications SET {column} = {value} WHERE pk = 2"))
    s = settings_for(tmp_path)
    local, col, warning = answers(lite, s, expr, caplog)
    assert col == local
    assert warning is not None and f"{column} (" in warning and "1 publication(s), pk 2" in warning
    local, col, warning = answers(lite, s, 'count(read where region = "EMEA", 3650d) >= 1', caplog)
    assert warning is None and col == local


def test_a_list_item_that_is_not_a_string_is_marked_on_catch_up(
    lite: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = settings_for(tmp_path)
    answers(lite, s, 'interests contains "1"', caplog)  # the copy, built
    set_contact(lite, "c00000006", {"interests": "Credit;Rates"})
    write_behind(lite, 6, "interests", "'[1, \"Credit\"]'")
    local, col, warning = answers(lite, s, 'interests contains "1"', caplog)
    assert warning is not None and "interests (LIST): 1 contact(s), pk 6" in warning
    assert col == local


def test_text_that_is_not_utf8_is_marked_on_catch_up(
    lite: Store,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    persist_mode: str,  # noqa: F811
) -> None:
    """A field named by a change and read as a patch (region), and a whole
    row re-read (a contact marked before): both marked, both answered by
    the store; a correction through personatag clears the mark."""
    s = settings_for(tmp_path)
    write_behind(lite, 8, "seniority", "'x'")
    answers(lite, s, 'region = "EMEA"', caplog)  # the copy, built
    set_contact(lite, "c00000005", {"region": "EMEA"})
    write_behind(lite, 5, "region", "CAST(x'ff45' AS TEXT)")
    set_contact(lite, "c00000008", {"firm": "Acme"})
    write_behind(lite, 8, "firm", "CAST(x'41ff' AS TEXT)")
    frame = current_frame(lite, s)
    assert marked(frame) == {"region": [5], "seniority": [8], "firm": [8]}
    for expr in ('region = "EMEA"', 'firm ilike "a%"', "region is null"):
        local, col, warning = answers(lite, s, expr, caplog)
        assert warning is not None and col == local, expr
    set_contact(lite, "c00000005", {"region": "APAC"})
    local, col, warning = answers(lite, s, 'region = "APAC"', caplog)
    assert warning is None and col == local
