"""Shared pieces for the criteria tests: a catalog, Hypothesis strategies for
well-typed criteria, and a seeded population that loads into a real store."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st
from sqlalchemy import insert, select, text

from personatag.criteria import compile_python, compile_sql
from personatag.criteria.ast import (
    COMPARE_OPS,
    And,
    Between,
    Boolean,
    Compare,
    Contains,
    Count,
    Field,
    In,
    IsNull,
    Node,
    Not,
    Number,
    Or,
    Persona,
    String,
    StringMatch,
    Timestamp,
    Within,
)
from personatag.criteria.to_python import EvalInput
from personatag.domain import STANDARD_CONTACT_FIELDS, Catalog, FieldType
from personatag.store import Store
from tests.memberships.guard import outside_writes

AS_OF = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)

CUSTOM: dict[str, FieldType] = {
    "score": FieldType.FLOAT,
    "vip": FieldType.BOOL,
    "tags": FieldType.LIST,
    "renewal_at": FieldType.TIMESTAMP,
    "desk": FieldType.STRING,
}
PERSONAS = {"cio": 1, "emea-macro": 2, "rates-trader": 3, "nobody": 4}
CATALOG = Catalog(
    contact_fields={**STANDARD_CONTACT_FIELDS, **CUSTOM}, personas=frozenset(PERSONAS)
)

# Strings that stress case folding, wildcards, escapes and code-point order.
ALPHABET = 'aAbzé ÉßẞİiIıΣσςΩω%_\\"Z0'
STRINGS = [
    "",
    "a",
    "A",
    "ab",
    "Ab",
    "é",
    "É",
    "ß",
    "ẞ",
    "İ",
    "i",
    "ı",
    "Σσ",
    "a%b",
    "a_b",
    "x\\y",
    'q"t',
    "EMEA",
    "emea",
    "APAC",
    "Americas",
    "CIO",
    "Chief Investment Officer",
    "Head of Rates",
    "Ünïcode",
    "\u212aelvin",  # the Kelvin sign lower-cases to an ASCII k
    "zz",
]
TAGS = ["rates", "fx", "credit", "Macro", "macro", "é", "a%"]
INTS = list(range(-2, 8))
FLOATS = [-1.5, 0.0, 0.5, 2.5, 3.0, 7.25]
DAY_OFFSETS = [-400, -91, -90, -89.5, -30, -29.999, -7, -1, -0.5, 0, 0.25, 3]
WINDOWS = [1, 7, 30, 90, 365]
CONTACT_TIMESTAMPS = [AS_OF + timedelta(days=d) for d in DAY_OFFSETS]


def strings() -> st.SearchStrategy[str]:
    return st.sampled_from(STRINGS) | st.text(ALPHABET, max_size=4)


def field_types(catalog_fields: dict[str, FieldType], *types: FieldType) -> list[str]:
    return sorted(n for n, t in catalog_fields.items() if t in types)


# ---- criteria strategies -----------------------------------------------------------


def _values(ft: FieldType) -> st.SearchStrategy[Any]:
    if ft == FieldType.STRING:
        return strings().map(String)
    if ft in (FieldType.INT, FieldType.FLOAT):
        return st.sampled_from(INTS + FLOATS).map(Number)
    if ft == FieldType.BOOL:
        return st.booleans().map(Boolean)
    return st.sampled_from(CONTACT_TIMESTAMPS).map(Timestamp)


def _predicates(fields: dict[str, FieldType]) -> st.SearchStrategy[Node]:
    options: list[st.SearchStrategy[Node]] = []
    for name, ft in sorted(fields.items()):
        f = Field(name)
        options.append(st.booleans().map(lambda neg, f=f: IsNull(f, neg)))
        if ft == FieldType.LIST:
            tag = st.sampled_from(TAGS) | strings()
            options.append(tag.map(lambda v, f=f: Contains(f, "contains", (String(v),))))
            for op in ("contains_any", "contains_all"):
                options.append(
                    st.lists(tag, min_size=1, max_size=3).map(
                        lambda vs, f=f, op=op: Contains(f, op, tuple(String(v) for v in vs))
                    )
                )
            continue
        values = _values(ft)
        ops = ["=", "!="] if ft == FieldType.BOOL else list(COMPARE_OPS)
        options.append(
            st.tuples(st.sampled_from(ops), values).map(lambda t, f=f: Compare(f, t[0], t[1]))
        )
        options.append(
            st.tuples(st.lists(values, min_size=1, max_size=3), st.booleans()).map(
                lambda t, f=f: In(f, tuple(t[0]), t[1])
            )
        )
        if ft != FieldType.BOOL:
            options.append(st.tuples(values, values).map(lambda t, f=f: Between(f, t[0], t[1])))
        if ft == FieldType.STRING:
            pattern = st.text(ALPHABET + "%%__", max_size=5) | strings()
            options.append(
                st.tuples(
                    st.sampled_from(["starts_with", "ends_with", "like", "ilike"]), pattern
                ).map(lambda t, f=f: StringMatch(f, t[0], String(t[1])))
            )
        if ft == FieldType.TIMESTAMP:
            options.append(st.sampled_from(WINDOWS).map(lambda d, f=f: Within(f, d)))
    return st.one_of(options)


def _boolean_tree(leaves: st.SearchStrategy[Node], max_leaves: int) -> st.SearchStrategy[Node]:
    def extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
        many = st.lists(children, min_size=2, max_size=3).map(tuple)
        return st.one_of(
            many.map(And),
            many.map(Or),
            children.map(Not),
        )

    return st.recursive(leaves, extend, max_leaves=max_leaves)


def _counts(catalog: Catalog) -> st.SearchStrategy[Node]:
    where = st.none() | _boolean_tree(_predicates(dict(catalog.publication_fields)), 3)
    reads = st.builds(
        Count,
        st.just("read"),
        where,
        st.sampled_from(WINDOWS),
        st.sampled_from(COMPARE_OPS),
        st.integers(0, 4),
    )
    logins = st.builds(
        Count,
        st.just("login"),
        st.none(),
        st.sampled_from(WINDOWS),
        st.sampled_from(COMPARE_OPS),
        st.integers(0, 4),
    )
    return reads | logins


def criteria(catalog: Catalog = CATALOG, max_leaves: int = 6) -> st.SearchStrategy[Node]:
    """Well-typed criteria over `catalog`: every predicate kind, nested and/or/not."""
    leaves = st.one_of(
        _predicates(dict(catalog.contact_fields)),
        _counts(catalog),
        st.sampled_from(sorted(catalog.personas)).map(Persona),
    )
    return _boolean_tree(leaves, max_leaves)


# ---- population ------------------------------------------------------------------------


@dataclass
class Population:
    contacts: list[dict[str, Any]]  # field name -> value (None for NULL)
    publications: list[dict[str, Any]]  # with "pk"
    reads: list[tuple[int, datetime, int]]  # contact pk, read_at, publication pk
    logins: list[tuple[int, datetime]]
    memberships: list[tuple[int, int]]  # persona pk, contact pk

    def inputs(self, as_of: datetime = AS_OF) -> dict[str, EvalInput]:
        """Contact id -> what the Python evaluator sees."""
        pubs = {p["pk"]: {k: v for k, v in p.items() if k != "pk"} for p in self.publications}
        keys = {pk: key for key, pk in PERSONAS.items()}
        out = {}
        for pk, contact in enumerate(self.contacts, start=1):
            out[contact["id"]] = EvalInput(
                contact=contact,
                reads=[(pubs[p], at) for c, at, p in self.reads if c == pk],
                logins=[at for c, at in self.logins if c == pk],
                personas=frozenset(keys[p] for p, c in self.memberships if c == pk),
                as_of=as_of,
            )
        return out


def _maybe(rng: random.Random, value: Any, null_rate: float = 0.3) -> Any:
    return None if rng.random() < null_rate else value


def _string(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return rng.choice(STRINGS)
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 4)))


def _value(rng: random.Random, ft: FieldType) -> Any:
    if ft == FieldType.STRING:
        return _string(rng)
    if ft == FieldType.INT:
        return rng.choice(INTS)
    if ft == FieldType.FLOAT:
        return rng.choice(FLOATS + [float(i) for i in INTS])
    if ft == FieldType.BOOL:
        return rng.random() < 0.5
    if ft == FieldType.TIMESTAMP:
        return rng.choice(CONTACT_TIMESTAMPS)
    return rng.sample(TAGS, rng.randint(0, 3))


def population(seed: int = 20260630, size: int = 120) -> Population:
    rng = random.Random(seed)
    contacts = []
    for i in range(1, size + 1):
        row: dict[str, Any] = {
            name: _maybe(rng, _value(rng, ft)) for name, ft in CATALOG.contact_fields.items()
        }
        row["id"] = f"c{i:03d}"
        contacts.append(row)
    publications = []
    for pk in range(1, 13):
        row = {
            name: _maybe(rng, _value(rng, ft), 0.2)
            for name, ft in CATALOG.publication_fields.items()
        }
        row["id"] = f"p{pk:02d}"
        row["pk"] = pk
        publications.append(row)
    reads: set[tuple[int, datetime, int]] = set()
    logins: set[tuple[int, datetime]] = set()
    for c in range(1, size + 1):
        for _ in range(rng.randint(0, 8)):
            reads.add((c, AS_OF - timedelta(days=rng.choice(EVENT_AGES)), rng.randint(1, 12)))
        for _ in range(rng.randint(0, 6)):
            logins.add((c, AS_OF - timedelta(days=rng.choice(EVENT_AGES))))
    memberships = [(ppk, c) for ppk in (1, 2, 3) for c in range(1, size + 1) if rng.random() < 0.3]
    return Population(contacts, publications, sorted(reads), sorted(logins), memberships)


# Event ages in days, including the window edges (exactly 30 days is outside 30d).
EVENT_AGES = [0, 0.5, 1, 6.999, 7, 29.999, 30, 30.001, 60, 89, 90, 91, 200, 364, 366, -1]

_DDL = {
    "sqlite": {
        FieldType.STRING: "TEXT",
        FieldType.FLOAT: "REAL",
        FieldType.BOOL: "BOOLEAN",
        FieldType.TIMESTAMP: "BIGINT",
        FieldType.LIST: "TEXT",
    },
    "postgresql": {
        FieldType.STRING: "TEXT",
        FieldType.FLOAT: "DOUBLE PRECISION",
        FieldType.BOOL: "BOOLEAN",
        FieldType.TIMESTAMP: "BIGINT",
        FieldType.LIST: "TEXT[]",
    },
}


def load(store: Store, pop: Population) -> None:
    """Declare the custom attributes and insert the population into `store`."""
    attrs = store.tables.attributes
    with store.write() as conn:
        for name, ft in CUSTOM.items():
            conn.execute(
                text(f"ALTER TABLE contacts ADD COLUMN cx_{name} {_DDL[store.dialect][ft]}")
            )
            conn.execute(insert(attrs).values(name=name, type=ft.value, created_at=AS_OF))
    store.refresh()
    t = store.tables
    with store.write() as conn:
        conn.execute(
            insert(t.contacts),
            [
                {CATALOG.column_for(k): v for k, v in c.items()} | {"pk": pk}
                for pk, c in enumerate(pop.contacts, start=1)
            ],
        )
        conn.execute(insert(t.publications), pop.publications)
        conn.execute(
            insert(t.reads),
            [{"contact_pk": c, "read_at": at, "publication_pk": p} for c, at, p in pop.reads],
        )
        conn.execute(insert(t.logins), [{"contact_pk": c, "login_at": at} for c, at in pop.logins])
        conn.execute(
            insert(t.personas),
            [
                {"pk": pk, "key": key, "name": key, "category": "test", "created_at": AS_OF}
                for key, pk in PERSONAS.items()
            ],
        )
        # Random memberships as fixture data for persona(...) (no rule made
        # them): the test's own write, past the one-writer guard on purpose.
        with outside_writes():
            conn.execute(
                insert(t.memberships),
                [
                    {"persona_pk": p, "contact_pk": c, "source": 0, "since": AS_OF}
                    for p, c in pop.memberships
                ],
            )


def sql_ids(store: Store, node: Node) -> set[str]:
    """The ids the SQL compiler matches on `store` at AS_OF."""
    t = store.tables
    expr = compile_sql(
        node, tables=t, catalog=CATALOG, persona_pks=PERSONAS, as_of=AS_OF, dialect=store.dialect
    )
    with store.read() as conn:
        return set(conn.scalars(select(t.contacts.c.id).where(expr)))


def python_ids(node: Node, inputs: Mapping[str, EvalInput]) -> set[str]:
    """The ids the Python evaluator matches among `inputs`."""
    fn = compile_python(node, CATALOG)
    return {cid for cid, inp in inputs.items() if fn(inp) is True}
