"""A LIST value another program wrote that is not a JSON array (`hello`,
`"Credit"`, `null`, `{}`, JSON cut short): every criterion reading it is
UNKNOWN for that contact, as NULL is, in the stream (per contact and
set-based), in the store's own SQL (previews, tags, reconciliation) and in
the columnar copy, so they agree; a page shows the text as stored. SQLite
only: PostgreSQL's arrays rule it out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from personatag.buckets import LocalBucket
from personatag.config import Settings
from personatag.contacts import set_contact, show_contact
from personatag.criteria import compile_python, parse
from personatag.criteria.to_flink import compile_flink
from personatag.criteria.to_python import EvalInput
from personatag.definitions.personas import add_persona
from personatag.domain import Action, utcnow
from personatag.engines.flink.snapshot import export_snapshot
from personatag.engines.local.stream.processor import StreamProcessor
from personatag.store import Store, open_store
from personatag.store.types import NotAList
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from personatag.tagging.preview import preview
from tests.helpers import add_contacts, population
from tests.stream.test_processor import SETTINGS, members, ongoing_criterion

ODD = {
    "c0001": "'hello'",
    "c0002": "'\"Credit\"'",
    "c0005": "'null'",
    "c0006": "'[\"Credit\"'",  # a member of credit, its list then cut short
    "c0007": "'{\"a\": 1}'",
}


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", create=True)
    add_contacts(store, population(12))
    yield store
    store.dispose()


@pytest.mark.parametrize("mode", ["per contact", "set-based", "set-based with personas"])
def test_a_list_that_is_not_json_is_unknown_to_the_stream_as_to_the_store(
    lite: Store, mode: str
) -> None:
    """Set-based, the store's statement once failed for every contact at once
    (json_each: malformed JSON); per contact the criterion failed for those
    holding such a list. Now both answer UNKNOWN, and so does a full
    evaluation in the store: nothing drifts."""
    add_persona(lite, "credit", name="Credit", category="interest")
    add_persona(lite, "emea", name="EMEA", category="region")
    ongoing_criterion(
        lite, "credit", "credit", 'interests contains "Credit" and seniority >= 0', "remove"
    )
    ongoing_criterion(lite, "emea", "emea", 'region = "EMEA" or seniority = 99', "remove")
    if mode == "set-based with personas":
        add_persona(lite, "both", name="Both", category="combined")
        ongoing_criterion(lite, "both", "both", 'persona("credit") and persona("emea")')
    settings = SETTINGS
    if mode != "per contact":
        settings = SETTINGS.model_copy(update={"stream_set_based_contacts": 1})
    p = StreamProcessor(lite, settings)
    p.catch_up()
    assert "c0006" in members(lite, "credit")  # [Energy, Credit]: i % 3 == 0
    for cid, value in ODD.items():
        with lite.write() as conn:
            conn.execute(text(f"UPDATE contacts SET interests = {value} WHERE id = '{cid}'"))
    for cid in [*ODD, "c0003"]:
        set_contact(lite, cid, {"seniority": "99"})
    done = p.catch_up()
    assert done.changes == 6 and done.errors == 0
    assert members(lite, "emea") >= {*ODD, "c0003"}  # the other criterion answered
    credit = members(lite, "credit")
    assert "c0003" in credit and not credit & set(ODD)  # c0006 left: unknown
    with lite.read() as conn:
        assert conn.scalar(select(func.count()).select_from(lite.tables.stream_errors)) == 0
    for crit in p.criteria().criteria:  # the same as the store's own answer
        drift = p.reconcile(crit, repair=False)
        assert (drift["missing"], drift["extra"]) == (0, 0), crit.label
    shown = show_contact(lite, "c0001")["attributes"]["interests"]
    assert shown == "hello" and isinstance(shown, NotAList)


@pytest.mark.parametrize(
    "expr",
    [
        'interests contains "Credit"',
        'not (interests contains "Credit")',
        'interests contains_any ("Credit", "Energy")',
        'not (interests contains_all ("Credit", "Energy"))',
        "interests is null",
        'interests is not null and not (interests contains "Macro")',
    ],
)
@pytest.mark.parametrize("engine", ["local", "columnar"])
def test_a_preview_answers_around_a_list_that_is_not_json(
    lite: Store, tmp_path: Path, expr: str, engine: str
) -> None:
    """The store's SQL and the columnar copy (which leaves such a field to the
    store) answer as the Python evaluator does, instead of failing the whole
    preview with the store's "malformed JSON"."""
    for cid, value in ODD.items():
        with lite.write() as conn:
            conn.execute(text(f"UPDATE contacts SET interests = {value} WHERE id = '{cid}'"))
    settings = Settings(data_dir=tmp_path / "data")
    got = preview(lite, expr, settings=settings, engine=engine, sample_size=100)
    want = python_ids(lite, expr)
    assert set(got["sample"]) == want and got["count"] == len(want)


def python_ids(store: Store, expr: str) -> set[str]:
    """The contacts the Python evaluator (the stream's) matches."""
    with store.read() as conn:
        rows = {r.id: dict(r._mapping) for r in conn.execute(select(store.tables.contacts))}
    fn = compile_python(parse(expr), store.catalog())
    return {cid for cid, row in rows.items() if fn(EvalInput(contact=row)) is True}


@pytest.mark.parametrize("engine", ["local", "columnar"])
def test_a_tag_answers_around_a_list_that_is_not_json(
    lite: Store, tmp_path: Path, engine: str
) -> None:
    add_persona(lite, "not-credit", name="Not credit", category="interest")
    for cid, value in ODD.items():
        with lite.write() as conn:
            conn.execute(text(f"UPDATE contacts SET interests = {value} WHERE id = '{cid}'"))
    expr = 'not (interests contains "Credit")'
    req = AdhocRequest(persona="not-credit", action=Action.TAG, expr=expr, engine=engine)
    run_adhoc(lite, req, Settings(data_dir=tmp_path / "data"))
    held = members(lite, "not-credit")
    assert held == python_ids(lite, expr) and "c0004" in held and not held & set(ODD)


def test_a_flink_snapshot_carries_a_list_that_is_not_json_as_null(
    lite: Store, tmp_path: Path
) -> None:
    """The snapshot's lines are built in the store (json_object): such a value
    failed the export (json(): malformed JSON), or reached the job as a
    string where it reads an array. Such a contact is marked odd (the job
    leaves it out and the store answers for it: tests/flink/test_equivalence),
    and an item that is not a string reaches the job as null (its JSON format
    read 1 as '1')."""
    for cid, value in {**ODD, "c0008": '\'[1, "Credit", ["x"]]\''}.items():
        with lite.write() as conn:
            conn.execute(text(f"UPDATE contacts SET interests = {value} WHERE id = '{cid}'"))
    staging = LocalBucket("staging", tmp_path / "staging")
    catalog = lite.catalog()
    query = compile_flink(
        parse('interests contains "Credit" or interests is null'),
        catalog=catalog,
        persona_pks={},
        as_of=utcnow(),
    )
    snap = export_snapshot(lite, staging, query, catalog=catalog, persona_pks={})
    rows = {
        row["pk"]: row
        for key in staging.list(snap.key)
        if key.rsplit("/", 1)[-1].startswith("part-")
        for line in staging.get(key).decode().splitlines()
        for row in [json.loads(line)]
    }
    assert len(rows) == 12  # by pk: c0000 is pk 1
    assert all(rows[int(cid[1:]) + 1].get("interests") is None for cid in ODD)
    assert rows[4]["interests"] == ["Energy", "Credit"]
    assert rows[9]["interests"] == [None, "Credit", None]
    assert {pk for pk, row in rows.items() if row["_odd"]} == {int(c[1:]) + 1 for c in ODD}
    assert snap.odd == len(ODD) and snap.where(query).endswith("AND _odd = FALSE")


def test_a_list_that_is_not_json_refuses_list_operations() -> None:
    odd = NotAList('"Credit"')
    with pytest.raises(TypeError, match="not a JSON array"):
        _ = "Credit" in odd
    with pytest.raises(TypeError, match="not a JSON array"):
        list(odd)
    assert str(odd) == '"Credit"' and odd.upper() == '"CREDIT"'


@pytest.mark.parametrize("evaluation", ["arrays", "pairs"])
def test_a_value_of_another_type_is_answered_by_the_store(lite: Store, evaluation: str) -> None:
    """`abc` in an INT field (another program wrote it) failed the stream's
    evaluator for every criterion reading it: an error per pair, the
    memberships left as they were, and a reconciliation then put back what
    the store answers (SQLite orders text above numbers: 'abc' >= 3). The
    store now answers such pairs in the step, so the stream and a full
    evaluation agree and nothing is an error."""
    add_persona(lite, "senior", name="Senior", category="seniority")
    add_persona(lite, "junior", name="Junior", category="seniority")
    ongoing_criterion(lite, "senior", "senior", 'seniority >= 3 or region = "nowhere"', "remove")
    ongoing_criterion(lite, "junior", "junior", "seniority < 2 and region is not null", "remove")
    settings = SETTINGS.model_copy(update={"stream_evaluation": evaluation})
    p = StreamProcessor(lite, settings)
    p.catch_up()
    before = members(lite, "senior")
    odd = {"c0001": "'abc'", "c0004": "'x'", "c0005": "2.5"}
    for cid, value in odd.items():
        with lite.write() as conn:
            conn.execute(text(f"UPDATE contacts SET seniority = {value} WHERE id = '{cid}'"))
        set_contact(lite, cid, {"region": "APAC"})
    done = p.catch_up()
    assert done.changes == 3 and done.errors == 0
    with lite.read() as conn:
        assert conn.scalar(select(func.count()).select_from(lite.tables.stream_errors)) == 0
    held = members(lite, "senior")
    assert {"c0001", "c0004"} <= held and held != before  # text sorts above numbers
    assert not {"c0001", "c0004"} & members(lite, "junior")
    for crit in p.criteria().criteria:  # the same as the store's own answer
        drift = p.reconcile(crit, repair=False)
        assert (drift["missing"], drift["extra"]) == (0, 0), crit.label
