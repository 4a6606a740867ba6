"""AST -> a Flink SQL condition over a snapshot of the contacts it needs.

Flink evaluates the criterion over a snapshot file, not over the store, so the
compiler also says which columns the snapshot must carry:

- contact fields, typed for Flink (timestamps as BIGINT microseconds, lists
  as ARRAY<STRING>);
- for `ilike`, the field folded by the store with the same fold as every other
  engine (Flink's LOWER folds İ to two characters; domain.fold_case does not);
- for each `count(...)`, the contact's number of matching events in the
  window, aggregated by the store (0 when none);
- for each `persona(...)`, whether the contact holds it.

String matching becomes Java regular expressions with every literal character
written as \\x{HEX}, so no character of a pattern is ever special; Flink's
REGEXP finds a match anywhere, hence the \\A ... \\z anchors and (?s) so that
`%` and `_` cross line breaks as they do in SQL LIKE. Values are literals
(Flink SQL has no bound parameters): strings are quoted by doubling `'`,
numbers are written exactly, timestamps as integer microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from personatag.criteria.ast import (
    And,
    Between,
    Compare,
    Contains,
    Count,
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
    Value,
    Within,
)
from personatag.criteria.ast import (
    Boolean as BoolValue,
)
from personatag.criteria.check import check
from personatag.domain import Catalog, FieldType, fold_case
from personatag.store.types import to_micros

FLINK_TYPES: Mapping[FieldType, str] = {
    FieldType.STRING: "STRING",
    FieldType.INT: "BIGINT",
    FieldType.FLOAT: "DOUBLE",
    FieldType.BOOL: "BOOLEAN",
    FieldType.TIMESTAMP: "BIGINT",
    FieldType.LIST: "ARRAY<STRING>",
}
_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


@dataclass(frozen=True)
class SnapshotColumn:
    """One column of the snapshot: what the store writes, what Flink reads.

    kind "field": the contact column `column` (field type `field_type`);
    "folded": fold_case of the string column `column`;
    "count": the number of events `count` describes, in the window ending at as_of;
    "persona": whether the contact holds persona `persona`.
    """

    name: str
    kind: str
    flink_type: str
    column: str | None = None
    field_type: FieldType | None = None
    count: Count | None = None
    persona: str | None = None


@dataclass(frozen=True)
class FlinkQuery:
    """`SELECT pk FROM snapshot WHERE {where}` over a snapshot with `columns` (pk first)."""

    where: str
    columns: tuple[SnapshotColumn, ...]
    as_of: datetime

    @property
    def schema(self) -> list[tuple[str, str]]:
        """(name, Flink type) of every snapshot column, the pk first."""
        return [("pk", "BIGINT"), *((c.name, c.flink_type) for c in self.columns)]


def compile_flink(
    node: Node, *, catalog: Catalog, persona_pks: Mapping[str, int], as_of: datetime
) -> FlinkQuery:
    """The Flink SQL condition for `node` and the snapshot columns it reads.

    Raises CriteriaError if the criterion does not check against `catalog`
    (with `persona_pks` as the personas that exist).
    """
    if as_of.tzinfo is None:
        raise ValueError("as_of must be a timezone-aware datetime")
    check(node, replace(catalog, personas=frozenset(persona_pks)))
    compiler = _FlinkCompiler(catalog, as_of)
    where = compiler.node(node)
    return FlinkQuery(where=where, columns=tuple(compiler.columns.values()), as_of=as_of)


def quote_string(value: str) -> str:
    """A Flink SQL string literal (no backslash escapes in Flink SQL strings)."""
    return "'" + value.replace("'", "''") + "'"


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _regex_literal(text: str) -> str:
    # Letters and digits of ASCII stand for themselves; everything else is
    # written by code point, so nothing in user text is a regex operator.
    return "".join(ch if ch.isascii() and ch.isalnum() else f"\\x{{{ord(ch):X}}}" for ch in text)


def like_to_regex(pattern: str) -> str:
    """LIKE pattern -> anchored Java regex (% any run, _ one character, no escape).

    Each middle piece between %s sits in an atomic lazy group: it takes its
    leftmost place and is never retried, so matching stays linear in the text
    (a plain `.*a.*a.*b` backtracks exponentially). Leftmost is always right
    because every piece has a fixed length.
    """
    pieces = [
        "".join("." if ch == "_" else _regex_literal(ch) for ch in piece)
        for piece in pattern.split("%")
    ]
    if len(pieces) == 1:
        return f"(?s)\\A{pieces[0]}\\z"
    middle = "".join(f"(?>.*?{p})" for p in pieces[1:-1] if p)
    return f"(?s)\\A{pieces[0]}{middle}.*{pieces[-1]}\\z"


def _number(value: int | float) -> str:
    if isinstance(value, bool):  # pragma: no cover - the checker types values
        raise TypeError("a boolean is not a number")
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ValueError(f"{value!r} has no Flink SQL literal")
    text = repr(value)
    # 1.5 alone is a DECIMAL literal in Flink SQL; 1.5E0 is a DOUBLE, like the column.
    return text.upper() if "e" in text else f"{text}E0"


def literal(value: Value, as_double: bool = False) -> str:
    match value:
        case String(s):
            return quote_string(s)
        case BoolValue(b):
            return "TRUE" if b else "FALSE"
        case Number(n):
            return _number(float(n) if as_double else n)
        case Timestamp(t):
            return str(to_micros(t))
    raise TypeError(f"not a value: {value!r}")  # pragma: no cover


@dataclass
class _FlinkCompiler:
    catalog: Catalog
    as_of: datetime
    columns: dict[str, SnapshotColumn] = field(default_factory=dict)

    def _add(self, column: SnapshotColumn) -> str:
        self.columns.setdefault(column.name, column)
        return quote_identifier(column.name)

    def field(self, name: str) -> str:
        column = self.catalog.column_for(name)
        ft = self.catalog.contact_fields[name]
        return self._add(
            SnapshotColumn(column, "field", FLINK_TYPES[ft], column=column, field_type=ft)
        )

    def numeric(self, name: str, values: tuple[Value, ...]) -> tuple[str, bool]:
        """The column, as DOUBLE when an integer field meets a fractional value.

        Flink coerces a mixed literal list to the column's type (7.25 becomes
        7 for a BIGINT), where the stores compare numerically.
        """
        col = self.field(name)
        fractional = any(isinstance(v, Number) and isinstance(v.value, float) for v in values)
        if fractional and self.catalog.contact_fields[name] is FieldType.INT:
            return f"CAST({col} AS DOUBLE)", True
        return col, fractional

    def folded(self, name: str) -> str:
        column = self.catalog.column_for(name)
        return self._add(SnapshotColumn(f"_f_{column}", "folded", "STRING", column=column))

    def window(self, days: int) -> tuple[int, int]:
        return to_micros(self.as_of - timedelta(days=days)), to_micros(self.as_of)

    def node(self, node: Node) -> str:
        match node:
            case And(args):
                return "(" + " AND ".join(self.node(a) for a in args) + ")"
            case Or(args):
                return "(" + " OR ".join(self.node(a) for a in args) + ")"
            case Not(arg):
                return f"(NOT {self.node(arg)})"
            case Compare(f, op, value):
                col, as_double = self.numeric(f.name, (value,))
                return f"({col} {_OPS[op]} {literal(value, as_double)})"
            case Between(f, low, high):
                col, as_double = self.numeric(f.name, (low, high))
                return f"({col} BETWEEN {literal(low, as_double)} AND {literal(high, as_double)})"
            case In(f, values, negated):
                col, as_double = self.numeric(f.name, values)
                options = ", ".join(literal(v, as_double) for v in values)
                return f"({col} {'NOT IN' if negated else 'IN'} ({options}))"
            case Contains(f, op, values):
                col = self.field(f.name)
                tests = [f"ARRAY_CONTAINS({col}, {literal(v)})" for v in values]
                joiner = " AND " if op == "contains_all" else " OR "
                return "(" + joiner.join(tests) + ")"
            case StringMatch(f, op, pattern):
                return self.string_match(f.name, op, pattern.value)
            case IsNull(f, negated):
                return f"({self.field(f.name)} IS {'NOT ' if negated else ''}NULL)"
            case Within(f, days):
                col = self.field(f.name)
                lo, hi = self.window(days)
                return f"({col} > {lo} AND {col} <= {hi})"
            case Count():
                return self.count(node)
            case Persona(key):
                index = sum(1 for c in self.columns.values() if c.kind == "persona")
                existing = next(
                    (c for c in self.columns.values() if c.kind == "persona" and c.persona == key),
                    None,
                )
                name = existing.name if existing else f"_p{index}"
                col = self._add(SnapshotColumn(name, "persona", "BOOLEAN", persona=key))
                return f"({col} = TRUE)"
        raise TypeError(f"not a criteria node: {node!r}")  # pragma: no cover

    def string_match(self, name: str, op: str, text: str) -> str:
        if op == "ilike":
            return f"REGEXP({self.folded(name)}, {quote_string(like_to_regex(fold_case(text)))})"
        col = self.field(name)
        if op == "like":
            regex = like_to_regex(text)
        elif op == "starts_with":
            regex = f"(?s)\\A{_regex_literal(text)}"
        else:
            regex = f"(?s){_regex_literal(text)}\\z"
        return f"REGEXP({col}, {quote_string(regex)})"

    def count(self, node: Count) -> str:
        existing = next(
            (c for c in self.columns.values() if c.kind == "count" and c.count == node), None
        )
        index = sum(1 for c in self.columns.values() if c.kind == "count")
        name = existing.name if existing else f"_n{index}"
        col = self._add(SnapshotColumn(name, "count", "BIGINT", count=node))
        return f"({col} {_OPS[node.op]} {node.value})"
