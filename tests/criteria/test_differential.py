"""Random criteria x a fixed random population: SQLite == PostgreSQL == Python.

Each criterion is also evaluated negated, so the three engines must agree on
TRUE, on FALSE, and therefore on UNKNOWN too.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from personatag.criteria import parse, to_text
from personatag.criteria.ast import Node, Not
from personatag.store import Store, open_store

from ..conftest import drop_pg, new_pg_url
from .support import Population, criteria, load, population, python_ids, sql_ids

POPULATION = population()
INPUTS = POPULATION.inputs()

DIFFERENTIAL = settings(
    max_examples=800,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def stores(
    tmp_path_factory: pytest.TempPathFactory, pg_template: str
) -> Iterator[dict[str, Store]]:
    sqlite_url = f"sqlite:///{tmp_path_factory.mktemp('criteria') / 'diff.db'}"
    pg_url = new_pg_url(pg_template)
    opened = {
        "sqlite": open_store(sqlite_url, create=True),
        "postgresql": open_store(pg_url),
    }
    try:
        for store in opened.values():
            load(store, POPULATION)
        yield opened
    finally:
        for store in opened.values():
            store.dispose()
        drop_pg(pg_url)


def assert_agree(stores: dict[str, Store], node: Node) -> None:
    for candidate in (node, Not(node)):
        expected = python_ids(candidate, INPUTS)
        for name, store in stores.items():
            got = sql_ids(store, candidate)
            assert got == expected, (
                f"{name} disagrees with Python on: {to_text(candidate)}\n"
                f"only in SQL: {sorted(got - expected)}\n"
                f"only in Python: {sorted(expected - got)}"
            )


def test_population_is_loaded(stores: dict[str, Store]) -> None:
    for store in stores.values():
        assert sql_ids(store, parse("id is not null")) == set(INPUTS)


@DIFFERENTIAL
@given(node=criteria())
def test_sql_engines_and_python_agree(stores: dict[str, Store], node: Node) -> None:
    assert_agree(stores, node)


# Hand-picked criteria that random search could miss; each must also select
# someone, so the agreement is not vacuous.
FIXED = [
    'job_title ilike "%İ%"',
    'job_title ilike "%σ%"',
    'job_title ilike "kel%"',
    'region like "a_b"',
    'region like "%\\\\%"',
    'desk starts_with "a%"',
    'desk ends_with ""',
    'interests contains_all ("rates", "fx")',
    'tags contains "a%"',
    "last_login_at within 30d",
    "count(read, 30d) = 0",
    "count(read where sector is null, 90d) >= 1",
    "count(login, 7d) > 1",
    'persona("cio") and not persona("emea-macro")',
    "seniority between 2 and 4.5",
    "score >= 3",
    "vip = true or vip is null",
    'country not in ("EMEA", "a")',
    'created_at < date("2026-06-23T12:00:00Z")',
]


@pytest.mark.parametrize("criterion", FIXED)
def test_fixed_criteria_agree(stores: dict[str, Store], criterion: str) -> None:
    node = parse(criterion)
    assert_agree(stores, node)
    assert python_ids(node, INPUTS) or python_ids(Not(node), INPUTS)


def test_population_is_reproducible() -> None:
    again: Population = population()
    assert again == POPULATION
