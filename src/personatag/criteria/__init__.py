"""The criteria language: text and versioned JSON views of one AST, a checker,
and compilers to SQL (SQLite, PostgreSQL) and to Python closures.

    criterion = compile_criterion('job_title ilike "%cio%" and region = "EMEA"', catalog)
    criterion.text, criterion.json, criterion.references
    expr = criterion.sql(tables=..., persona_pks=..., as_of=..., dialect="sqlite")
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement

from personatag.criteria.ast import JSON_VERSION, Node, from_json, to_json
from personatag.criteria.check import References, check, references
from personatag.criteria.errors import CriteriaError
from personatag.criteria.parse import parse
from personatag.criteria.text import to_text
from personatag.criteria.to_python import EvalInput, Evaluator, compile_python
from personatag.criteria.to_sql import compile_sql
from personatag.domain import Catalog
from personatag.store.schema import Tables

__all__ = [
    "JSON_VERSION",
    "CompiledCriterion",
    "CriteriaError",
    "EvalInput",
    "Evaluator",
    "Node",
    "References",
    "check",
    "compile_criterion",
    "compile_python",
    "compile_sql",
    "from_json",
    "parse",
    "references",
    "to_json",
    "to_text",
]


@dataclass(frozen=True)
class CompiledCriterion:
    """A checked criterion in all its forms."""

    ast: Node
    text: str  # canonical text
    json: dict[str, Any]  # the versioned JSON document
    references: References
    catalog: Catalog

    def sql(
        self, *, tables: Tables, persona_pks: Mapping[str, int], as_of: datetime, dialect: str
    ) -> ColumnElement[bool]:
        """See `compile_sql`."""
        return compile_sql(
            self.ast,
            tables=tables,
            catalog=self.catalog,
            persona_pks=persona_pks,
            as_of=as_of,
            dialect=dialect,
        )

    def python(self) -> Evaluator:
        """See `compile_python`."""
        return compile_python(self.ast, self.catalog)


def compile_criterion(source: str | Mapping[str, Any], catalog: Catalog) -> CompiledCriterion:
    """Parse (text) or read (a JSON document), then check against `catalog`.

    Raises CriteriaError with a position (text) or a JSON path (document).
    """
    node = parse(source) if isinstance(source, str) else from_json(source)
    check(node, catalog)
    return CompiledCriterion(
        ast=node,
        text=to_text(node),
        json=to_json(node),
        references=references(node),
        catalog=catalog,
    )
