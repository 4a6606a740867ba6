"""The stream's array path against its per-pair path, on the criteria tests'
population (NULLs, non-ASCII and case-folding strings, list fields, events on
and either side of every window's edges, some stamped after as_of): for random
criteria, and each negated, the same pairs evaluated, the same matches, the
same next re-check per pair and the same errors.

The end-to-end stream tests (test_differential, test_processor) run with both
paths; this one pits the two against each other directly, pair for pair.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personatag.criteria import parse, to_json
from personatag.criteria.ast import Node, Not
from personatag.criteria.to_python import EvalInput
from personatag.engines.local.stream import arrays
from personatag.engines.local.stream import evaluate as ev_
from personatag.engines.local.stream import ongoing as og
from personatag.engines.local.stream.inputs import Publications
from tests.criteria.support import AS_OF, CATALOG, PERSONAS, criteria, population

POPULATION = population()


def _inputs(as_of: Any) -> tuple[dict[int, EvalInput], Publications]:
    """Contact pk -> its input, whose reads hold the Publications' own dicts
    (as the stream's loaded inputs do)."""
    pubs = Publications()
    pubs.by_pk = {
        p["pk"]: {k: v for k, v in p.items() if k != "pk"} for p in POPULATION.publications
    }
    pubs.version = 1
    keys = {pk: key for key, pk in PERSONAS.items()}
    out = {}
    for pk, contact in enumerate(POPULATION.contacts, start=1):
        out[pk] = EvalInput(
            contact=contact,
            reads=[(pubs.by_pk[p], at) for c, at, p in POPULATION.reads if c == pk],
            logins=[at for c, at in POPULATION.logins if c == pk],
            personas=frozenset(keys[p] for p, c in POPULATION.memberships if c == pk),
            as_of=as_of,
        )
    return out, pubs


INPUTS, PUBS = _inputs(AS_OF)


def _crit(pk: int, node: Node) -> og.Ongoing:
    return og.build(pk, f"c{pk}", 1, pk, f"p{pk}", "remove", og.ACTIVE, to_json(node), CATALOG)


def _both(
    crits: list[og.Ongoing], inputs: dict[int, EvalInput], pubs: Publications
) -> tuple[ev_.Evaluated, ev_.Evaluated]:
    index = og.Index(crits, catalog=CATALOG)
    # every other contact, so the frame's rows are not the contact pks
    work = {cpk: {c.pk for c in crits} for cpk in sorted(inputs) if cpk % 2 or cpk % 3 == 0}
    fresh = {
        k: EvalInput(i.contact, i.reads, i.logins, i.personas, i.as_of) for k, i in inputs.items()
    }
    by_pairs = ev_.evaluate_batch(work, fresh, index)
    fresh = {
        k: EvalInput(i.contact, i.reads, i.logins, i.personas, i.as_of) for k, i in inputs.items()
    }
    plans = arrays.Plans()
    as_arrays = arrays.evaluate_batch(work, fresh, index, plans, CATALOG, pubs)
    as_arrays.arrays = plans.answered  # type: ignore[attr-defined]
    return by_pairs, as_arrays


def _assert_same(a: ev_.Evaluated, b: ev_.Evaluated) -> None:
    # In the same order too: the applier decides in it, and which of two
    # criteria feeding one persona the log credits with an enter follows it.
    assert a.evaluated == b.evaluated
    assert a.matched == b.matched
    assert list(a.due.items()) == list(b.due.items())
    assert a.errors == b.errors


@pytest.fixture(autouse=True)
def _every_criterion_as_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    # The population is small: without this, few criteria would reach the arrays.
    monkeypatch.setattr(arrays, "MIN_PAIRS", 1)


@settings(
    max_examples=1000,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(node=criteria())
def test_arrays_answer_as_the_pairs_do(node: Node) -> None:
    crits = [_crit(1, node), _crit(2, Not(node))]
    by_pairs, as_arrays = _both(crits, INPUTS, PUBS)
    _assert_same(by_pairs, as_arrays)
    if not crits[0].personas:
        assert as_arrays.arrays == 2  # type: ignore[attr-defined]


FIXED = [
    'count(read where sector = "Energy", 30d) >= 1',
    "count(read, 7d) < 2",
    "count(login, 90d) = 0",
    "not count(read, 30d) >= 1",
    "last_login_at within 30d and seniority >= 3",
    "not (renewal_at within 7d) or count(login, 1d) >= 1",
    'job_title ilike "%ß%" or tags contains "macro"',
    'region in ("EMEA", "AMER") and not vip = true',
]


@pytest.mark.parametrize("text", FIXED)
@pytest.mark.parametrize("days_later", [0, 0.5, 31])
def test_windows_and_their_recheck_times(text: str, days_later: float) -> None:
    inputs, pubs = _inputs(AS_OF + timedelta(days=days_later))
    node = parse(text)
    by_pairs, as_arrays = _both([_crit(1, node), _crit(2, Not(node))], inputs, pubs)
    _assert_same(by_pairs, as_arrays)
    assert by_pairs.evaluated  # the work was not empty
    assert as_arrays.arrays == 2  # type: ignore[attr-defined]
    if days_later < 1 and ("within" in text or "count" in text):
        assert any(at is not None for at in as_arrays.due.values())


def _one_stored(field: str, value: Any) -> dict[int, EvalInput]:
    """The inputs, with contact pk 3's `field` holding `value`."""
    inputs = dict(INPUTS)
    odd = inputs[3]
    inputs[3] = EvalInput(
        {**odd.contact, field: value}, odd.reads, odd.logins, odd.personas, odd.as_of
    )
    return inputs


# SQLite keeps what a raw SQL write gives it: values numpy would convert
# silently (2.5 to 2, "3" to 3, 2 to True) and the Python evaluator compares as
# they are, or fails on.
ODD = [
    ("seniority", 2.5, "seniority = 2"),
    ("seniority", "3", "seniority >= 3"),
    ("vip", 2, "vip = true"),
    ("score", "1.5", "score > 1"),
    ("score", 2**60 + 1, "score > 1"),
    ("tags", "rates", 'tags contains "rates"'),
    ("desk", 7, 'desk = "7"'),
    ("renewal_at", datetime(2026, 6, 1), "renewal_at within 90d"),
    ("renewal_at", "2026-06-01", "renewal_at within 90d"),
    # a window's edge past year 9999: the per-pair path reports an error
    ("renewal_at", datetime(9999, 12, 31, tzinfo=UTC), "renewal_at within 30d or seniority >= 0"),
]


@pytest.mark.parametrize(("field", "value", "text"), ODD)
def test_a_value_its_column_cannot_hold_falls_back_to_pairs(
    field: str, value: Any, text: str
) -> None:
    inputs = _one_stored(field, value)
    node = parse(text)
    by_pairs, as_arrays = _both([_crit(1, node), _crit(2, Not(node))], inputs, PUBS)
    _assert_same(by_pairs, as_arrays)
    assert as_arrays.arrays == 0  # type: ignore[attr-defined]


def test_persona_criteria_and_few_pairs_stay_pair_by_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arrays, "MIN_PAIRS", 10_000)
    node = parse('persona("cio") or seniority >= 3')
    by_pairs, as_arrays = _both([_crit(1, node), _crit(2, parse("seniority >= 3"))], INPUTS, PUBS)
    _assert_same(by_pairs, as_arrays)
    assert as_arrays.arrays == 0  # type: ignore[attr-defined]


# Whole numbers no float64 holds, against a float field (Python compares exactly).
BIG = [
    "score >= 9007199254740993",
    "score > 9007199254740992",
    "score = 9007199254740993",
    "score != 9007199254740993",
    "score < 9007199254740993",
    "score <= -9007199254740993",
    "score in (9007199254740993, 1)",
    "score between 9007199254740993 and 9007199254740995",
]


@pytest.mark.parametrize("text", BIG)
@pytest.mark.parametrize("stored", [2.0**53, 2.0**53 + 2, -(2.0**53), 1.0])
def test_a_float_field_against_a_whole_number_beyond_2_53(text: str, stored: float) -> None:
    inputs = _one_stored("score", stored)
    node = parse(text)
    by_pairs, as_arrays = _both([_crit(1, node), _crit(2, Not(node))], inputs, PUBS)
    _assert_same(by_pairs, as_arrays)
    assert as_arrays.arrays == 2  # type: ignore[attr-defined]


def test_a_publication_value_a_skipped_count_would_hide_falls_back() -> None:
    # count(...) >= 0 is TRUE without counting; the per-pair path still runs
    # the where on each read, and fails on a value of the wrong type.
    inputs, pubs = _inputs(AS_OF)
    first = next(iter(pubs.by_pk.values()))
    first["sector"] = 42
    node = parse('count(read where sector starts_with "En", 30d) >= 0')
    by_pairs, as_arrays = _both([_crit(1, node)], inputs, pubs)
    _assert_same(by_pairs, as_arrays)
    assert as_arrays.arrays == 0  # type: ignore[attr-defined]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(nodes=st.lists(criteria(max_leaves=4), min_size=1, max_size=12))
def test_the_criteria_a_read_touches_are_those_whose_counts_take_it(nodes: list[Node]) -> None:
    """Index.touched_by_reads tests a publication once per distinct `where`
    of the criteria's read counts; the answer is that of testing every
    criterion's own counts (duplicates of each criterion share their tests)."""
    crits = [_crit(pk, node) for pk, node in enumerate(nodes + nodes, start=1)]
    index = og.Index(crits, catalog=CATALOG)
    for ppk in [*PUBS.by_pk, 10_000]:  # and a pk that names no publication
        pub = PUBS.by_pk.get(ppk)
        expected = {
            c.pk
            for c in crits
            if og.EVENT_READ in c.events
            and (pub is None or any(test(pub) for test in c.read_filters))
        }
        assert index.touched_by_reads([ppk], PUBS.by_pk, PUBS.version) == expected
