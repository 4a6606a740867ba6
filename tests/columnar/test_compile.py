"""The columnar compiler without a store: random populations x random criteria
against the Python evaluator (dense and sparse pks, one or two event segments,
persona sets as bitmaps or arrays), fixed cases with known answers for each
node kind and edge, and the errors a caller can meet."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personatag.criteria import compile_python, parse, to_text
from personatag.criteria.ast import Node, Not, Persona
from personatag.criteria.errors import CriteriaError
from personatag.domain import Catalog, FieldType, fold_case
from personatag.engines.columnar import compile_events
from personatag.engines.columnar.compile import compile_columnar, evaluate, frame_catalog
from personatag.engines.columnar.compile_values import fold
from personatag.engines.columnar.frame import Events, Frame, Table
from tests.columnar.frames import frame_from_population
from tests.criteria.support import (
    AS_OF,
    CATALOG,
    STRINGS,
    Population,
    _boolean_tree,
    criteria,
    population,
)

US = timedelta(microseconds=1)
DAY = timedelta(days=1)


def numpy_ids(
    frame: Frame, node: Node, catalog: Catalog = CATALOG, as_of: datetime = AS_OF
) -> set[str]:
    mask = compile_columnar(node, catalog)(frame, as_of)
    ids = frame.contacts.columns["id"]
    return {str(s) for s in ids.dictionary[ids.values[mask]]}


def python_ids(pop: Population, node: Node, as_of: datetime = AS_OF) -> set[str]:
    fn = compile_python(node, CATALOG)
    return {cid for cid, inp in pop.inputs(as_of).items() if fn(inp) is True}


def assert_agree(pop: Population, frame: Frame, node: Node, as_of: datetime = AS_OF) -> None:
    for candidate in (node, Not(node)):
        got = numpy_ids(frame, candidate, as_of=as_of)
        expected = python_ids(pop, candidate, as_of)
        assert got == expected, (
            f"numpy disagrees with Python on: {to_text(candidate)}\n"
            f"only in numpy: {sorted(got - expected)}\nonly in Python: {sorted(expected - got)}"
        )


@settings(
    max_examples=600,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(0, 40),
    spacing=st.sampled_from([1, 7]),
    split=st.booleans(),
    bitmaps=st.booleans(),
    # a day earlier, events 1, 7, 30, 91 days old sit on the window edges
    as_of=st.sampled_from([AS_OF, AS_OF - DAY, AS_OF + DAY / 2]),
    node=criteria(),
)
def test_random_populations_agree_with_python(
    seed: int, size: int, spacing: int, split: bool, bitmaps: bool, as_of: datetime, node: Node
) -> None:
    pop = population(seed, size)
    frame = frame_from_population(pop, spacing=spacing, split=split, bitmaps=bitmaps)
    assert_agree(pop, frame, node, as_of)


# ---- fixed cases with known answers --------------------------------------------------------


def _edges() -> Population:
    contacts = [
        {"id": "a", "first_name": "Ä", "tags": ["x"], "seniority": 3, "score": 2.5, "vip": True},
        {"id": "b", "first_name": "ä", "tags": [], "seniority": None, "score": None, "vip": False},
        {"id": "c", "first_name": "ß", "tags": None, "seniority": -2, "score": 3.0},
        {"id": "d", "first_name": "SS", "tags": ["x", "y", "x"], "seniority": 2**62},
        {"id": "e", "first_name": "İ", "tags": ["Y"], "seniority": 4},
        {"id": "f", "first_name": "i\u0307", "seniority": 2},
        {"id": "g", "first_name": None, "tags": ["y"]},
    ]
    # renewal_at on the edges of a 30-day window
    renewals = [AS_OF - 30 * DAY, AS_OF - 30 * DAY + US, AS_OF, AS_OF + US, None, None, None]
    for contact, at in zip(contacts, renewals, strict=True):
        contact["renewal_at"] = at
    publications = [
        {"pk": 1, "id": "p1", "sector": "Energy"},
        {"pk": 2, "id": "p2", "sector": "ÉNERGIE"},
        {"pk": 3, "id": "p3", "sector": None},
    ]
    edges = [AS_OF - 90 * DAY, AS_OF - 90 * DAY + US, AS_OF, AS_OF + US]
    reads = [(1, at, p) for at in edges for p in (1, 2, 3)] + [(2, AS_OF - DAY, 1)]
    logins = [(3, at) for at in edges] + [(3, AS_OF - 2 * DAY)]
    memberships = [(1, 1), (1, 2), (1, 5), (2, 2), (2, 3), (3, 5), (3, 7)]
    return Population(contacts, publications, reads, logins, memberships)


EDGES = _edges()
KNOWN = [
    ('first_name ilike "ä"', {"a", "b"}),
    ('first_name ilike "ss"', {"d"}),  # ß folds to itself, one character
    ('first_name ilike "ß"', {"c"}),
    ('first_name ilike "i%"', {"e", "f"}),  # İ folds to i, simple lowercase
    ('first_name like "_"', {"a", "b", "c", "e"}),
    ('first_name = "Ä"', {"a"}),
    ('first_name > "Z"', {"a", "b", "c", "e", "f"}),  # code-point order
    ('first_name not in ("Ä", "ß")', {"b", "d", "e", "f"}),
    ('first_name starts_with "i"', {"f"}),
    ('first_name ends_with "S"', {"d"}),
    ('tags contains "x"', {"a", "d"}),
    ('tags contains_all ("x", "y")', {"d"}),
    ('tags contains_any ("Y", "nothing")', {"e"}),
    ('not tags contains_any ("x")', {"b", "e", "g"}),  # NULL list stays UNKNOWN
    ("tags is null", {"c", "f"}),
    ("seniority > 2.5", {"a", "d", "e"}),
    ("seniority >= 4611686018427387904", {"d"}),
    ("seniority = 3.5", set()),
    ("seniority != 3.5", {"a", "c", "d", "e", "f"}),
    ("seniority between -2 and 2.9", {"c", "f"}),
    ("seniority in (2.0, 4.5)", {"f"}),
    ("score >= 2.5", {"a", "c"}),
    ("vip = false", {"b"}),
    ("not (vip = true)", {"b"}),
    ("renewal_at within 30d", {"b", "c"}),
    ('renewal_at >= date("2026-06-30T12:00:00Z")', {"c", "d"}),
    ("count(read, 90d) = 6", {"a"}),
    ("count(read, 90d) = 1", {"b"}),
    ("count(read, 90d) = 0", {"c", "d", "e", "f", "g"}),
    ('count(read where sector ilike "é%", 90d) = 2', {"a"}),
    ("count(read where sector is null, 90d) >= 1", {"a"}),
    ('count(read where not (sector = "Energy"), 90d) = 2', {"a"}),
    ("count(login, 90d) = 3", {"c"}),
    ("count(login, 1d) = 1", {"c"}),
    ('persona("cio")', {"a", "b", "e"}),
    ('persona("cio") and not persona("emea-macro")', {"a", "e"}),
    ('persona("emea-macro") or persona("rates-trader")', {"b", "c", "e", "g"}),
    ('not (persona("cio") or persona("emea-macro"))', {"d", "f", "g"}),
    ('persona("nobody") or not persona("cio") and persona("rates-trader")', {"g"}),
    ('persona("cio") and seniority >= 3', {"a", "e"}),
    ('persona("unheard-of")', set()),
]


@pytest.mark.parametrize(("spacing", "split", "bitmaps"), [(1, False, True), (5, True, False)])
@pytest.mark.parametrize(("criterion", "expected"), KNOWN)
def test_known_answers(
    criterion: str, expected: set[str], spacing: int, split: bool, bitmaps: bool
) -> None:
    frame = frame_from_population(EDGES, spacing=spacing, split=split, bitmaps=bitmaps)
    node = parse(criterion)
    assert numpy_ids(frame, node) == expected
    assert_agree(EDGES, frame, node)


# ---- plans, frames and errors ---------------------------------------------------------------


def test_a_plan_serves_many_frames_and_as_of_times() -> None:
    plan = compile_columnar(parse('first_name ilike "ä" and renewal_at within 1d'), CATALOG)
    frame = frame_from_population(EDGES)
    ids = frame.contacts.columns["id"]
    assert set(ids.dictionary[ids.values[plan(frame, AS_OF)]]) == set()
    assert set(ids.dictionary[ids.values[plan(frame, AS_OF - 30 * DAY + US)]]) == {"a", "b"}
    # another frame, another dictionary: the per-dictionary results are not reused
    other = Population(
        [{"id": "z", "first_name": "Ä", "renewal_at": AS_OF}], EDGES.publications, [], [], []
    )
    other_frame = frame_from_population(other)
    assert plan(other_frame, AS_OF).tolist() == [True]
    assert plan(frame, AS_OF).sum() == 0


def test_the_mask_is_the_callers_own() -> None:
    frame = frame_from_population(EDGES)
    mask = evaluate(parse("tags is null"), frame, AS_OF, CATALOG)
    nulls = frame.contacts.columns["tags"].nulls.copy()
    mask[:] = ~mask
    assert np.array_equal(frame.contacts.columns["tags"].nulls, nulls)


def test_evaluate_checks_against_the_frames_own_fields() -> None:
    frame = frame_from_population(EDGES)
    assert frame_catalog(frame).contact_fields["tags"] == FieldType.LIST
    assert evaluate(parse("seniority > 3"), frame, AS_OF).sum() == 2
    with pytest.raises(CriteriaError, match="regoin"):
        evaluate(parse('regoin = "EMEA"'), frame, AS_OF)
    with pytest.raises(CriteriaError, match="type mismatch"):
        evaluate(parse('seniority = "x"'), frame, AS_OF)


def test_a_field_missing_from_the_frame_is_named() -> None:
    frame = frame_from_population(EDGES)
    columns = {k: v for k, v in frame.contacts.columns.items() if k != "desk"}
    thin = Frame(Table(frame.contacts.pk, columns), frame.publications, personas=frame.personas)
    with pytest.raises(CriteriaError, match="field 'desk' is not in the columnar copy's contacts"):
        compile_columnar(parse('desk = "a"'), CATALOG)(thin, AS_OF)


def test_personas_need_persona_sets_and_as_of_a_time_zone() -> None:
    frame = frame_from_population(EDGES)
    bare = Frame(frame.contacts, frame.publications)
    with pytest.raises(CriteriaError, match='persona\\("cio"\\)'):
        evaluate(parse('persona("cio")'), bare, AS_OF, CATALOG)
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(parse("seniority > 1"), frame, AS_OF.replace(tzinfo=None), CATALOG)


def test_window_scans_agree_in_small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compile_events, "CHUNK", 3)
    counts = [(c, e) for c, e in KNOWN if c.startswith("count(")]
    for split in (False, True):
        frame = frame_from_population(EDGES, split=split)
        for criterion, expected in counts:
            assert numpy_ids(frame, parse(criterion)) == expected, criterion
        pop = population(7, 40)
        frame = frame_from_population(pop, split=split)
        for criterion, _ in counts:
            assert_agree(pop, frame, parse(criterion))


def test_a_read_segment_without_publications_cannot_be_filtered() -> None:
    frame = frame_from_population(EDGES)
    reads = tuple(Events(s.row, s.at, None, s.live, s.sorted) for s in frame.reads)
    bare = Frame(frame.contacts, frame.publications, reads, frame.logins, frame.personas)
    assert numpy_ids(bare, parse("count(read, 90d) = 6")) == {"a"}
    with pytest.raises(ValueError, match="no publication rows"):
        numpy_ids(bare, parse("count(read where sector is null, 90d) >= 1"))


@given(st.text(max_size=8) | st.sampled_from(STRINGS) | st.text("AZaz@._-ÄßİΣ", max_size=8))
def test_fold_is_fold_case(value: str) -> None:
    assert fold(value) == fold_case(value)


PERSONA_TREES = _boolean_tree(
    st.sampled_from(sorted(CATALOG.personas)).map(Persona)
    | st.sampled_from(["seniority > 2", "tags is null"]).map(parse),
    8,
)


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**32),
    spacing=st.sampled_from([1, 7]),
    bitmaps=st.booleans(),
    node=PERSONA_TREES,
)
def test_persona_algebra_agrees_with_python(
    seed: int, spacing: int, bitmaps: bool, node: Node
) -> None:
    pop = population(seed, 30)
    frame = frame_from_population(pop, spacing=spacing, bitmaps=bitmaps)
    assert_agree(pop, frame, node)


def test_a_column_of_another_type_is_named() -> None:
    frame = frame_from_population(EDGES)
    columns = dict(frame.contacts.columns)
    columns["desk"] = columns["seniority"]
    odd = Frame(Table(frame.contacts.pk, columns), frame.publications, personas=frame.personas)
    with pytest.raises(CriteriaError, match="field 'desk' is int in the columnar copy's contacts"):
        compile_columnar(parse('desk = "a"'), CATALOG)(odd, AS_OF)
