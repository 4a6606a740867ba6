"""Random criteria x the criteria tests' population: the numpy plan over a
Frame == SQLite == PostgreSQL == the Python evaluator, each criterion negated
too, so all four agree on TRUE, on FALSE and therefore on UNKNOWN.

The SQLite frame keeps its events in two segments (sorted with superseded rows,
then unsorted) and its persona sets as bitmaps; the PostgreSQL frame in one
unsorted segment with sorted arrays.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from personatag.criteria import parse, to_text
from personatag.criteria.ast import Node, Not
from personatag.engines.columnar.compile import compile_columnar
from personatag.engines.columnar.frame import Frame
from personatag.store import Store, open_store
from tests.columnar.frames import frame_from_store
from tests.conftest import drop_pg, new_pg_url
from tests.criteria.support import (
    AS_OF,
    CATALOG,
    criteria,
    load,
    population,
    python_ids,
    sql_ids,
)

POPULATION = population()
INPUTS = POPULATION.inputs()

DIFFERENTIAL = settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def stores(
    tmp_path_factory: pytest.TempPathFactory, pg_template: str
) -> Iterator[dict[str, tuple[Store, Frame]]]:
    sqlite_url = f"sqlite:///{tmp_path_factory.mktemp('columnar') / 'diff.db'}"
    pg_url = new_pg_url(pg_template)
    opened = {
        "sqlite": open_store(sqlite_url, create=True),
        "postgresql": open_store(pg_url),
    }
    try:
        for store in opened.values():
            load(store, POPULATION)
        yield {
            "sqlite": (opened["sqlite"], frame_from_store(opened["sqlite"], CATALOG, split=True)),
            "postgresql": (
                opened["postgresql"],
                frame_from_store(opened["postgresql"], CATALOG, bitmaps=False),
            ),
        }
    finally:
        for store in opened.values():
            store.dispose()
        drop_pg(pg_url)


def numpy_ids(frame: Frame, node: Node) -> set[str]:
    mask = compile_columnar(node, CATALOG)(frame, AS_OF)
    assert mask.dtype == np.bool_ and mask.shape == (frame.contacts.n,)
    ids = frame.contacts.columns["id"]
    return {str(s) for s in ids.dictionary[ids.values[mask]]}


def assert_agree(stores: dict[str, tuple[Store, Frame]], node: Node, sql: bool = True) -> None:
    for candidate in (node, Not(node)):
        expected = python_ids(candidate, INPUTS)
        for name, (store, frame) in stores.items():
            got = numpy_ids(frame, candidate)
            assert got == expected, (
                f"numpy over the {name} frame disagrees with Python on: {to_text(candidate)}\n"
                f"only in numpy: {sorted(got - expected)}\n"
                f"only in Python: {sorted(expected - got)}"
            )
            if sql:
                assert sql_ids(store, candidate) == expected, f"{name}: {to_text(candidate)}"


def test_frames_hold_the_population(stores: dict[str, tuple[Store, Frame]]) -> None:
    for _, frame in stores.values():
        assert numpy_ids(frame, parse("id is not null")) == set(INPUTS)
        assert sum(len(s.row) for s in frame.reads) >= len(POPULATION.reads)


@DIFFERENTIAL
@given(node=criteria())
def test_numpy_agrees_with_sql_and_python(
    stores: dict[str, tuple[Store, Frame]], node: Node
) -> None:
    assert_agree(stores, node)


# Hand-picked criteria, one or more per node kind and edge; each must select
# someone (negated or not), so the agreement is not vacuous.
FIXED = [
    'region = "EMEA"',
    'region != "emea"',
    'region < "a"',
    'job_title >= "É"',
    "seniority >= 3",
    "seniority < 2.5",
    "seniority = 3.0",
    "seniority != 2.5",
    "seniority > -1.5",
    "score <= 3",
    "score = 7.25",
    "vip = true",
    "vip != false or vip is null",
    "seniority between 2 and 4.5",
    'region between "A" and "a"',
    'created_at between date("2026-06-01") and date("2026-06-30T12:00:00Z")',
    'country in ("EMEA", "ß", "İ")',
    'country not in ("EMEA", "a")',
    "seniority in (1, 2.5, 3)",
    "seniority not in (1, 3)",
    "vip in (true)",
    'renewal_at in (date("2026-06-30T12:00:00Z"))',
    'interests contains "rates"',
    'interests contains_any ("fx", "nothing")',
    'interests contains_all ("rates", "fx")',
    'tags contains_all ("macro", "Macro")',
    'tags contains "a%"',
    'tags contains_any ("é")',
    'job_title ilike "%İ%"',
    'job_title ilike "%σ%"',
    'job_title ilike "kel%"',
    'job_title ilike "%SS%"',
    'desk ilike "%ß%"',
    'region like "a_b"',
    'region like "%\\\\%"',
    'desk like "%"',
    'desk starts_with "a%"',
    'desk ends_with ""',
    'first_name starts_with "É"',
    "email is null",
    "tags is not null",
    "last_login_at within 30d",
    "renewal_at within 90d",
    "renewal_at within 1d",
    "count(read, 30d) = 0",
    "count(read, 90d) >= 3",
    "count(read, 1d) > 0",
    "count(read where sector is null, 90d) >= 1",
    'count(read where region = "EMEA" or sector ilike "%a%", 365d) <= 2',
    "count(read where not (title is null), 7d) != 1",
    "count(login, 7d) > 1",
    "count(login, 30d) < 2",
    'persona("cio")',
    'persona("cio") and not persona("emea-macro")',
    'persona("cio") or persona("rates-trader")',
    'not persona("cio") or persona("nobody")',
    'not (persona("cio") or not persona("emea-macro"))',
    'persona("cio") and seniority > 2',
    'persona("nobody") or not (region = "EMEA")',
    'created_at < date("2026-06-23T12:00:00Z")',
    'not (region = "EMEA" and seniority >= 3)',
    'region = "EMEA" or seniority is null or not (score > 1)',
]


@pytest.mark.parametrize("criterion", FIXED)
def test_fixed_criteria_agree(stores: dict[str, tuple[Store, Frame]], criterion: str) -> None:
    node = parse(criterion)
    assert_agree(stores, node)
    assert python_ids(node, INPUTS) or python_ids(Not(node), INPUTS)
