"""The package façade and the compilers' argument checks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from personatag.criteria import (
    CompiledCriterion,
    CriteriaError,
    EvalInput,
    compile_criterion,
    compile_sql,
    parse,
)
from personatag.errors import InputError
from personatag.store import Store
from personatag.store.schema import build_tables

from .support import AS_OF, CATALOG, CUSTOM, PERSONAS

TABLES = build_tables(sorted(CUSTOM.items()))
ROWS: list[dict[str, Any]] = [
    {"id": "a", "job_title": "Chief Investment Officer", "region": "EMEA"},
    {"id": "b", "job_title": "CHIEF INVESTMENT OFFICER", "region": "APAC"},
    {"id": "c", "job_title": None, "region": "UK"},
]


def test_compile_criterion_from_text() -> None:
    c = compile_criterion('(region = "EMEA")  and seniority>=3', CATALOG)
    assert isinstance(c, CompiledCriterion)
    assert c.text == 'region = "EMEA" and seniority >= 3'
    assert c.json["version"] == 1
    assert c.references.contact_fields == {"region", "seniority"}
    assert compile_criterion(c.json, CATALOG).ast == c.ast
    fn = c.python()
    assert fn(EvalInput(contact={"region": "EMEA", "seniority": 4}, as_of=AS_OF)) is True
    assert fn(EvalInput(contact={"region": "EMEA"}, as_of=AS_OF)) is None


def test_compile_criterion_reports_errors() -> None:
    with pytest.raises(CriteriaError) as info:
        compile_criterion('regoin = "EMEA"', CATALOG)
    assert str(info.value) == "line 1, col 1: unknown field 'regoin' (did you mean 'region'?)"
    assert isinstance(info.value, InputError)
    with pytest.raises(CriteriaError, match=r"^\$\.version: "):
        compile_criterion({"version": 7, "expr": {}}, CATALOG)


def test_compile_sql_arguments() -> None:
    node = parse('persona("cio")')
    kwargs = {"tables": TABLES, "catalog": CATALOG, "as_of": AS_OF}
    with pytest.raises(ValueError, match="unknown SQL dialect 'oracle'"):
        compile_sql(node, persona_pks=PERSONAS, dialect="oracle", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone-aware"):
        compile_sql(
            node,
            tables=TABLES,
            catalog=CATALOG,
            persona_pks=PERSONAS,
            as_of=datetime(2026, 1, 1),
            dialect="sqlite",
        )
    with pytest.raises(CriteriaError, match="unknown persona 'cio'"):
        compile_sql(node, persona_pks={}, dialect="sqlite", **kwargs)  # type: ignore[arg-type]


def test_compile_sql_needs_the_column() -> None:
    bare = build_tables()  # a store that has not declared the custom attributes
    with pytest.raises(CriteriaError, match="field 'desk' has no column 'cx_desk'"):
        compile_sql(
            parse('desk = "rates"'),
            tables=bare,
            catalog=CATALOG,
            persona_pks=PERSONAS,
            as_of=AS_OF,
            dialect="postgresql",
        )


def test_compiled_sql_runs_on_the_store(store: Store) -> None:
    t = store.tables
    with store.write() as conn:
        conn.execute(t.contacts.insert(), ROWS)
    c = compile_criterion(
        'job_title ilike "%chief INVESTMENT%" and region in ("EMEA", "UK")', CATALOG
    )
    expr = c.sql(tables=t, persona_pks={}, as_of=AS_OF, dialect=store.dialect)
    with store.read() as conn:
        assert set(conn.scalars(select(t.contacts.c.id).where(expr))) == {"a"}
