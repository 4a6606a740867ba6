"""Hand-checked three-valued logic on a tiny population, in Python and in each store."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from personatag.criteria import EvalInput, compile_python, compile_sql, parse
from personatag.criteria.ast import Node, Not
from personatag.criteria.to_python import Truth, like_matcher
from personatag.store import Store

from .support import AS_OF, CATALOG, PERSONAS, Population, load

T, F, U = True, False, None


def contact(cid: str, **fields: object) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(CATALOG.contact_fields)
    row.update(fields, id=cid)
    return row


# c1 has values, c2 has NULLs everywhere, c3 has "other" values and an empty list.
TINY = Population(
    contacts=[
        contact(
            "c1",
            region="EMEA",
            seniority=5,
            interests=["rates"],
            vip=True,
            last_login_at=AS_OF - timedelta(days=10),
        ),
        contact("c2"),
        contact(
            "c3",
            region="APAC",
            seniority=1,
            interests=[],
            vip=False,
            last_login_at=AS_OF - timedelta(days=100),
        ),
    ],
    publications=[
        {
            "pk": 1,
            "id": "p1",
            "sector": "Banks",
            "title": None,
            "region": None,
            "asset_class": None,
            "series": None,
            "published_at": None,
        }
    ],
    reads=[(1, AS_OF - timedelta(days=1), 1)],
    logins=[(3, AS_OF - timedelta(hours=1))],
    memberships=[(PERSONAS["cio"], 1)],
)

# criterion -> truth for (c1, c2, c3)
TRUTH: list[tuple[str, tuple[Truth, Truth, Truth]]] = [
    ('region = "EMEA"', (T, U, F)),
    ('not region = "EMEA"', (F, U, T)),
    ('region != "EMEA"', (F, U, T)),
    ('region = "EMEA" or seniority > 3', (T, U, F)),
    ('region = "EMEA" or region is null', (T, T, F)),
    ('not (region = "EMEA" or region is null)', (F, F, T)),
    ('region = "EMEA" and seniority is null', (F, U, F)),
    ('region = "APAC" or seniority is null', (F, T, T)),
    ('region = "EMEA" or not region = "EMEA"', (T, U, T)),
    ('not not region = "EMEA"', (T, U, F)),
    ('region in ("EMEA", "x")', (T, U, F)),
    ('region not in ("EMEA")', (F, U, T)),
    ("seniority between 1 and 5", (T, U, T)),
    ("not seniority between 2 and 4", (T, U, T)),
    ('region like "E%"', (T, U, F)),
    ('region ilike "e%"', (T, U, F)),
    ('region starts_with "AP"', (F, U, T)),
    ('interests contains "rates"', (T, U, F)),
    ('not interests contains "rates"', (F, U, T)),
    ('interests contains_any ("x", "rates")', (T, U, F)),
    ('interests contains_all ("rates", "fx")', (F, U, F)),
    ("vip = true", (T, U, F)),
    ("vip != true", (F, U, T)),
    ("last_login_at within 30d", (T, U, F)),
    ("not last_login_at within 30d", (F, U, T)),
    ("region is null", (F, T, F)),
    ("not region is not null", (F, T, F)),
    ("count(read, 30d) >= 1", (T, F, F)),
    ("not count(read, 30d) >= 1", (F, T, T)),
    ('count(read where sector = "Banks", 30d) = 1', (T, F, F)),
    ('count(read where region = "EMEA", 30d) = 0', (T, T, T)),
    ("count(login, 1d) = 1", (F, F, T)),
    ('persona("cio")', (T, F, F)),
    ('not persona("cio") and region is null', (F, T, F)),
]


def python_truths(node: Node) -> tuple[Truth, ...]:
    fn = compile_python(node, CATALOG)
    return tuple(fn(inp) for inp in TINY.inputs().values())


@pytest.mark.parametrize(("criterion", "expected"), TRUTH, ids=[t[0] for t in TRUTH])
def test_python_three_valued(criterion: str, expected: tuple[Truth, ...]) -> None:
    assert python_truths(parse(criterion)) == expected


def test_stores_three_valued(store: Store) -> None:
    """Each store gives TRUE / FALSE / UNKNOWN exactly as the table says."""
    load(store, TINY)
    t = store.tables

    def matching(node: Node) -> set[str]:
        expr = compile_sql(
            node,
            tables=t,
            catalog=CATALOG,
            persona_pks=PERSONAS,
            as_of=AS_OF,
            dialect=store.dialect,
        )
        with store.read() as conn:
            return set(conn.scalars(select(t.contacts.c.id).where(expr)))

    for criterion, expected in TRUTH:
        node = parse(criterion)
        true, false = matching(node), matching(Not(node))
        got = tuple(T if c in true else F if c in false else U for c in ("c1", "c2", "c3"))
        assert got == expected, f"{store.dialect}: {criterion}"


def test_like_patterns() -> None:
    assert like_matcher("a_c")("abc")
    assert not like_matcher("a_c")("ac")
    assert like_matcher("%")("")
    assert like_matcher("a.c")("a.c") and not like_matcher("a.c")("abc")
    # no escape character: a backslash is literal and % stays a wildcard
    assert like_matcher("100\\%")("100\\x")
    assert not like_matcher("100\\%")("100%")
    assert like_matcher("%\n%")("a\nb")


def test_ilike_folds_non_ascii_and_like_does_not() -> None:
    row = EvalInput(contact={"job_title": "DIRECTEUR GÉNÉRAL"}, as_of=AS_OF)
    assert compile_python(parse('job_title ilike "%général%"'), CATALOG)(row) is True
    assert compile_python(parse('job_title like "%général%"'), CATALOG)(row) is False
    assert compile_python(parse('job_title like "%GÉNÉRAL"'), CATALOG)(row) is True


def test_window_edges() -> None:
    """as_of - N days < t <= as_of: exactly N days ago is out, as_of itself is in."""
    fn = compile_python(parse("last_login_at within 30d"), CATALOG)

    def at(delta: timedelta) -> Truth:
        return fn(EvalInput(contact={"last_login_at": AS_OF - delta}, as_of=AS_OF))

    assert at(timedelta(days=30)) is False
    assert at(timedelta(days=30) - timedelta(microseconds=1)) is True
    assert at(timedelta(0)) is True
    assert at(-timedelta(microseconds=1)) is False
    reads = compile_python(parse("count(read, 30d) = 1"), CATALOG)
    edge = EvalInput(contact={}, reads=[({}, AS_OF - timedelta(days=30))], as_of=AS_OF)
    assert reads(edge) is False


def test_evaluator_defaults() -> None:
    fn = compile_python(parse('region = "EMEA" or count(login, 7d) = 0'), CATALOG)
    assert fn(EvalInput(contact={})) is True
    assert fn(EvalInput(contact={}, logins=[AS_OF], as_of=AS_OF)) is None
