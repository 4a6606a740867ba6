"""flink == local: the same criteria select the same contacts on a real Flink cluster.

The population is the differential tests' (NULLs everywhere, tricky strings:
İ, ß, Σ/σ/ς, %, _, backslashes; events on the window edges), loaded into
SQLite and PostgreSQL, and into a third SQLite store that also holds values
another program wrote (lists that are not arrays, items that are not
strings, values of another type: the snapshot marks those contacts, the job
leaves them out and the store answers for them). Every golden criterion,
the hand-picked ones, and a batch of Hypothesis-generated criteria are
evaluated, each also negated, by the store (compile_sql, the local engine's
evaluation) and by FlinkEngine on the cluster `make test` starts
(PERSONATAG_TEST_FLINK_URL). All queries of a store go to Flink as one job
so the test takes one job's time, not hundreds.
Then whole requests (`tag --engine flink` vs `--engine local`) are compared
membership change by membership change.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import select, text

from personatag.buckets import open_buckets
from personatag.config import Settings
from personatag.criteria import compile_sql, parse, to_text
from personatag.criteria.ast import Node, Not
from personatag.engines.base import MatchSpec
from personatag.engines.flink.batch import FlinkEngine
from personatag.engines.flink.deploy import deploy
from personatag.store import Store, open_store

from ..conftest import drop_pg, new_pg_url
from ..criteria.support import AS_OF, CATALOG, PERSONAS, criteria, load, population
from ..criteria.test_differential import FIXED, ODD_LISTS
from .engine_support import flink_settings

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).parent.parent / "criteria" / "golden" / "compile.txt"
POPULATION = population()
GENERATED = 120

# contact pk -> (field, a value of another type another program stored): the
# job's JSON format would fail on some ('abc' as BIGINT) and truncate others
# (2.5 as 2); the snapshot marks such contacts and the store answers for them.
ODD_SCALARS = {
    3: ("seniority", "abc"),
    12: ("seniority", 2.5),
    27: ("last_login_at", "yesterday"),
    36: ("score", "high"),
    48: ("vip", 7),
    61: ("desk", 42),
    77: ("renewal_at", 1.5),
}


def golden_criteria() -> list[str]:
    """The criterion line of every case in the golden file."""
    lines = GOLDEN.read_text().splitlines()
    return [lines[i + 1] for i, line in enumerate(lines) if line.startswith("=== ")]


def generated_criteria() -> list[Node]:
    """GENERATED distinct criteria Hypothesis explores (collected, evaluated later in
    one Flink job: a job per example would take an hour)."""
    found: dict[str, Node] = {}

    @settings(
        max_examples=GENERATED * 3,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(criteria(max_leaves=5))
    def collect(node: Node) -> None:
        if len(found) < GENERATED:
            found.setdefault(to_text(node), node)

    collect()
    return list(found.values())


@pytest.fixture(scope="module")
def cases() -> list[Node]:
    nodes = [parse(text) for text in golden_criteria() + FIXED] + generated_criteria()
    return [variant for node in nodes for variant in (node, Not(node))]


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "sqlite-odd-values"])
def setup(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pg_template: str,
) -> Iterator[tuple[Store, Settings]]:
    cfg = flink_settings(tmp_path_factory.mktemp("flink-eq"))
    if request.param == "postgresql":
        url = new_pg_url(pg_template)
        store = open_store(url)
    else:
        url = f"sqlite:///{cfg.data_dir / 'store.db'}"
        store = open_store(url, create=True)
    try:
        load(store, POPULATION)
        if request.param == "sqlite-odd-values":
            # Values another program wrote: LIST values that are not arrays,
            # or arrays whose items are not strings (the differential tests'
            # ODD_LISTS), and values of another type (ODD_SCALARS).
            with store.write() as conn:
                for pk, (name, stored) in {**ODD_LISTS, **ODD_SCALARS}.items():
                    column = CATALOG.column_for(name)
                    conn.execute(
                        text(f"UPDATE contacts SET {column} = :v WHERE pk = :pk"),
                        {"v": stored, "pk": pk},
                    )
        deploy(open_buckets(cfg), properties={"flink.parallelism": 1}, actor="test")
        yield store, cfg
    finally:
        store.dispose()
        if request.param == "postgresql":
            drop_pg(url)


def store_ids(store: Store, node: Node) -> set[str]:
    t = store.tables
    expr = compile_sql(
        node, tables=t, catalog=CATALOG, persona_pks=PERSONAS, as_of=AS_OF, dialect=store.dialect
    )
    with store.read() as conn:
        return set(conn.scalars(select(t.contacts.c.id).where(expr)))


def test_flink_selects_what_the_store_selects(
    setup: tuple[Store, Settings], cases: list[Node]
) -> None:
    store, cfg = setup
    engine = FlinkEngine(store, cfg)
    specs = [
        MatchSpec(ast=node, as_of=AS_OF, catalog=CATALOG, persona_pks=PERSONAS) for node in cases
    ]
    results = engine.match_many(specs)
    t = store.tables
    with store.read() as conn:
        ids = dict(conn.execute(select(t.contacts.c.pk, t.contacts.c.id)).all())
    disagreements = []
    for node, pks in zip(cases, results, strict=True):
        got = {ids[int(pk)] for pk in pks}
        expected = store_ids(store, node)
        if got != expected:
            disagreements.append(
                f"{to_text(node)}\n  only flink: {sorted(got - expected)}"
                f"\n  only store: {sorted(expected - got)}"
            )
    assert not disagreements, f"{len(disagreements)} of {len(cases)} differ:\n" + "\n".join(
        disagreements[:20]
    )
    # Not vacuous: most criteria select someone, and their negations others.
    assert sum(1 for r in results if len(r)) > len(cases) // 3
