"""Random criteria x a fixed random population: SQLite == PostgreSQL == Python.

Each criterion is also evaluated negated, so the three engines must agree on
TRUE, on FALSE, and therefore on UNKNOWN too. A second SQLite store holds
the same population with a few LIST values another program wrote that are
not JSON arrays, or hold items that are not strings (the Python evaluator
sees them as the store reads them: store.types.NotAList, NotAString).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import text
from sqlalchemy.dialects import sqlite

from personatag.criteria import parse, to_text
from personatag.criteria.ast import Node, Not
from personatag.criteria.to_python import EvalInput
from personatag.store import Store, open_store
from personatag.store.types import NotAList, NotAString, StringList

from ..conftest import drop_pg, new_pg_url
from .support import CATALOG, Population, criteria, load, population, python_ids, sql_ids

POPULATION = population()
INPUTS = POPULATION.inputs()

# contact pk -> (LIST field, its stored text): not a list, not JSON, cut short
ODD_LISTS = {
    7: ("interests", "hello"),
    19: ("tags", '"rates"'),
    31: ("interests", "{}"),
    44: ("tags", "null"),
    58: ("interests", '["rates"'),
    73: ("tags", "[1, 2"),
    # arrays holding items that are not strings: equal to no string
    88: ("interests", '[1, "rates"]'),
    95: ("tags", '[true, null, "fx", 1.5]'),
    101: ("interests", '["rates", ["fx"], {"a": "fx"}]'),
}


def _with_odd_lists(pop: Population) -> Population:
    """`pop` as the Python evaluator reads it from the store holding ODD_LISTS."""
    contacts = [dict(c) for c in pop.contacts]
    for pk, (name, stored) in ODD_LISTS.items():
        contacts[pk - 1][name] = StringList().process_result_value(stored, sqlite.dialect())
    return replace(pop, contacts=contacts)


ODD_INPUTS = _with_odd_lists(POPULATION).inputs()
EXPECTED: Mapping[str, Mapping[str, EvalInput]] = {"sqlite-odd-lists": ODD_INPUTS}

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
    odd_url = f"sqlite:///{tmp_path_factory.mktemp('criteria') / 'odd.db'}"
    opened = {
        "sqlite": open_store(sqlite_url, create=True),
        "postgresql": open_store(pg_url),
        "sqlite-odd-lists": open_store(odd_url, create=True),
    }
    try:
        for store in opened.values():
            load(store, POPULATION)
        with opened["sqlite-odd-lists"].write() as conn:
            for pk, (name, stored) in ODD_LISTS.items():
                column = CATALOG.column_for(name)
                conn.execute(
                    text(f"UPDATE contacts SET {column} = :v WHERE pk = :pk"),
                    {"v": stored, "pk": pk},
                )
        yield opened
    finally:
        for store in opened.values():
            store.dispose()
        drop_pg(pg_url)


def assert_agree(stores: dict[str, Store], node: Node) -> None:
    for candidate in (node, Not(node)):
        for name, store in stores.items():
            expected = python_ids(candidate, EXPECTED.get(name, INPUTS))
            got = sql_ids(store, candidate)
            assert got == expected, (
                f"{name} disagrees with Python on: {to_text(candidate)}\n"
                f"only in SQL: {sorted(got - expected)}\n"
                f"only in Python: {sorted(expected - got)}"
            )


def test_odd_lists_read_as_intended() -> None:
    odd = {pk: ODD_INPUTS[f"c{pk:03d}"].contact[name] for pk, (name, _) in ODD_LISTS.items()}
    assert isinstance(odd[7], NotAList) and isinstance(odd[58], NotAList)
    assert odd[88] == [NotAString(1), "rates"] and "1" not in odd[88]


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
    # items of ODD_LISTS that are not strings: no string equals them
    'interests contains "1"',
    'tags contains_any ("True", "None", "1.5")',
    'interests contains_all ("rates", "1")',
    # a nested array or object, spelled as SQLite's json_each gives its text
    'interests contains_any ("[\\"fx\\"]", "{\\"a\\":\\"fx\\"}")',
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
