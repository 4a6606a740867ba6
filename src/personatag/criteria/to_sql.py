"""AST -> a boolean SQLAlchemy Core expression over the contacts table.

SQL's own three-valued logic does most of the work; the few constructs that
would otherwise turn UNKNOWN into FALSE (list predicates on SQLite) say so.
Values are always typed bound parameters; column names come only from the
catalog and the table descriptions. Dialect differences live in the class-level
tables of the store's backends (store/backends/), looked up by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Float,
    FromClause,
    Integer,
    Text,
    and_,
    bindparam,
    exists,
    func,
    not_,
    or_,
    select,
)
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.types import TypeEngine

from personatag.criteria.ast import (
    COMPARATORS,
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
from personatag.criteria.errors import CriteriaError
from personatag.domain import Catalog, fold_case
from personatag.store.backends import Backend, backend_names, get_backend
from personatag.store.schema import Tables
from personatag.store.types import UTCTimestamp

Col = ColumnElement[Any]
Cond = ColumnElement[bool]


def _bind(name: str, value: Any, type_: TypeEngine[Any]) -> BindParameter[Any]:
    return bindparam(name, value, type_=type_, unique=True)


def _value_bind(name: str, value: Value) -> BindParameter[Any]:
    match value:
        case String(s):
            return _bind(name, s, Text())
        case BoolValue(b):
            return _bind(name, b, Boolean(create_constraint=False))
        case Number(n):
            return _bind(name, n, BigInteger() if isinstance(n, int) else Float())
        case Timestamp(t):
            return _bind(name, t, UTCTimestamp())
    raise TypeError(f"not a value: {value!r}")  # pragma: no cover


# ---- compiler -------------------------------------------------------------------


def compile_sql(
    node: Node,
    *,
    tables: Tables,
    catalog: Catalog,
    persona_pks: Mapping[str, int],
    as_of: datetime,
    dialect: str,
) -> Cond:
    """A boolean expression over `tables.contacts`, TRUE exactly for matching contacts.

    Use it as `select(tables.contacts.c.pk).where(expr)`. `as_of` (UTC-aware)
    anchors `within` and `count` windows; `persona_pks` maps persona keys to pks.
    Raises CriteriaError if the criterion does not check against `catalog` or
    names a persona missing from `persona_pks`.
    """
    if dialect not in backend_names():
        raise ValueError(
            f"unknown SQL dialect {dialect!r}: expected one of {', '.join(backend_names())}"
        )
    if as_of.tzinfo is None:
        raise ValueError("as_of must be a timezone-aware datetime")
    check(node, replace(catalog, personas=frozenset(persona_pks)))
    compiler = _SqlCompiler(get_backend(dialect), tables, catalog, persona_pks, as_of)
    return compiler.node(node, compiler.contacts)


@dataclass(frozen=True)
class _Scope:
    table: FromClause
    label: str
    column_for: Callable[[str], str]


class _SqlCompiler:
    def __init__(
        self,
        dialect: Backend,
        tables: Tables,
        catalog: Catalog,
        persona_pks: Mapping[str, int],
        as_of: datetime,
    ) -> None:
        self.d = dialect
        self.tables = tables
        self.persona_pks = persona_pks
        self.as_of = as_of
        self.contacts = _Scope(tables.contacts, "contacts", catalog.column_for)

    def column(self, scope: _Scope, name: str) -> Col:
        column = scope.column_for(name)
        if column not in scope.table.c:
            raise CriteriaError(
                f"field '{name}' has no column '{column}' in table '{scope.label}'"
                " (is the store schema up to date?)"
            )
        return scope.table.c[column]

    def window(self, days: int) -> tuple[BindParameter[Any], BindParameter[Any]]:
        lo = self.as_of - timedelta(days=days)
        return _bind("lo", lo, UTCTimestamp()), _bind("hi", self.as_of, UTCTimestamp())

    def ordered(self, col: Col, value: Value) -> Col:
        if isinstance(value, String) and self.d.ORDER_COLLATION is not None:
            return col.collate(self.d.ORDER_COLLATION)
        return col

    def like(self, col: Col, pattern: BindParameter[Any]) -> Cond:
        if self.d.LIKE_ESCAPE is None:
            return col.like(pattern)
        return col.like(pattern, escape=self.d.LIKE_ESCAPE)

    def node(self, node: Node, scope: _Scope) -> Cond:
        match node:
            case And(args):
                return and_(*(self.node(a, scope) for a in args))
            case Or(args):
                return or_(*(self.node(a, scope) for a in args))
            case Not(arg):
                return not_(self.node(arg, scope))
            case Compare(f, op, value):
                col = self.column(scope, f.name)
                if op not in ("=", "!="):
                    col = self.ordered(col, value)
                result: Cond = COMPARATORS[op](col, _value_bind(f.name, value))
                return result
            case Between(f, low, high):
                col = self.ordered(self.column(scope, f.name), low)
                return col.between(_value_bind(f.name, low), _value_bind(f.name, high))
            case In(f, values, negated):
                col = self.column(scope, f.name)
                binds = [_value_bind(f.name, v) for v in values]
                return col.not_in(binds) if negated else col.in_(binds)
            case Contains(f, op, values):
                col = self.column(scope, f.name)
                strings = [v.value for v in values if isinstance(v, String)]
                return self.d.LIST_OPS[op](col, strings, f.name)
            case StringMatch(f, op, pattern):
                return self.string_match(self.column(scope, f.name), f.name, op, pattern.value)
            case IsNull(f, negated):
                col = self.column(scope, f.name)
                return col.is_not(None) if negated else col.is_(None)
            case Within(f, days):
                col = self.column(scope, f.name)
                lo, hi = self.window(days)
                return and_(col > lo, col <= hi)
            case Count():
                return self.count(node)
            case Persona(key):
                m = self.tables.membership_rows
                pk = _bind("persona_pk", self.persona_pks[key], BigInteger())
                members = select(m.c.contact_pk).where(m.c.persona_pk == pk)
                return self.tables.contacts.c.pk.in_(members)
        raise TypeError(f"not a criteria node: {node!r}")  # pragma: no cover

    def string_match(self, col: Col, name: str, op: str, text: str) -> Cond:
        if op == "like":
            return self.like(col, _bind(name, text, Text()))
        if op == "ilike":
            folded = _bind(name, fold_case(text), Text())
            return self.like(self.d.fold(col), folded)
        # starts_with / ends_with compare a slice: wildcards in `text` stay literal.
        # An empty affix takes the prefix form: SQLite's substr(x, -0) is all of x.
        cut = self.d.SLICES["suffix" if op == "ends_with" and text else "prefix"]
        length = _bind(f"{name}_len", len(text), Integer())
        result: Cond = cut(col, length) == _bind(name, text, Text())
        return result

    def count(self, node: Count) -> Cond:
        lo, hi = self.window(node.days)
        if node.event == "read":
            r = self.tables.reads.alias("r")
            who, at = r.c.contact_pk, r.c.read_at
            events = select(who)
            if node.where is not None:
                p = self.tables.publications.alias("p")
                events = events.select_from(r.join(p, p.c.pk == r.c.publication_pk))
                events = events.where(self.node(node.where, _Scope(p, "publications", str)))
        else:
            lg = self.tables.logins.alias("l")
            who, at = lg.c.contact_pk, lg.c.login_at
            events = select(who)
        events = events.where(at > lo, at <= hi).group_by(who)
        test: Cond = COMPARATORS[node.op](func.count(), _bind("k", node.value, BigInteger()))
        pk = self.tables.contacts.c.pk
        if COMPARATORS[node.op](0, node.value):
            # Contacts with no events in the window match too: exclude the others.
            # NOT EXISTS over the grouped set, not NOT IN: PostgreSQL plans it as
            # a hash anti-join; NOT IN degrades to a per-row scan past work_mem.
            excluded = events.having(not_(test)).subquery("excluded")
            return ~exists().where(excluded.c[0] == pk)
        return pk.in_(events.having(test))


def event_counts(
    node: Count,
    *,
    tables: Tables,
    catalog: Catalog,
    as_of: datetime,
    dialect: str,
) -> Any:
    """SELECT contact_pk, n: each contact's number of events `node` counts in its
    window ending at `as_of` (contacts without such events are absent).

    The same events `compile_sql` counts; engines that evaluate criteria
    outside the store (Flink) get these numbers in their snapshot.
    """
    compiler = _SqlCompiler(get_backend(dialect), tables, catalog, {}, as_of)
    lo, hi = compiler.window(node.days)
    if node.event == "read":
        r = tables.reads.alias("r")
        who, at = r.c.contact_pk, r.c.read_at
        events = select(who.label("contact_pk"), func.count().label("n"))
        if node.where is not None:
            p = tables.publications.alias("p")
            events = events.select_from(r.join(p, p.c.pk == r.c.publication_pk))
            events = events.where(compiler.node(node.where, _Scope(p, "publications", str)))
    else:
        lg = tables.logins.alias("l")
        who, at = lg.c.contact_pk, lg.c.login_at
        events = select(who.label("contact_pk"), func.count().label("n"))
    return events.where(at > lo, at <= hi).group_by(who)
