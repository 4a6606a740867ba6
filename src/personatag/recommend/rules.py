"""Persona content rules for the feed: boosts, filters, pins with an expiry, caps.

Editors manage them per persona (CLI, API, workbench); every change is
audit-logged in the same transaction. Boost and filter expressions are written
in the criteria language over a publication's fields (`sector = "Energy" and
region = "EMEA"`, `published_at within 7d`) and checked when added, so a bad
one is refused with its line and column. `rules_for_model` turns the stored
rules into the `Rules` the feed model takes; it is read on every feed request,
so a change applies on the next one.

| kind | stored | meaning |
|---|---|---|
| `boost` | expr, weight | publications matching expr score `weight` more for holders |
| `filter` | expr | holders never get a publication that does not match expr |
| `pin` | publication, expires_at | shown first to holders until it expires (never: NULL) |
| `cap` | cap | at most N items of one series in a holder's feed (one per persona) |
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select

from personatag.audit_log import record
from personatag.criteria import CriteriaError, EvalInput, Evaluator, compile_criterion
from personatag.criteria.ast import Count, Node
from personatag.criteria.to_python import compile_python
from personatag.definitions.personas import get_persona
from personatag.domain import PUBLICATION_FIELDS, Catalog, utcnow
from personatag.errors import ConflictError, InputError, NotFoundError
from personatag.store.db import Store
from personatag.times import iso

if TYPE_CHECKING:
    from personatag.recommend.model import Rules

KINDS = ("boost", "filter", "pin", "cap")
MAX_WEIGHT = 1000.0
MAX_EXPR_CHARS = 10_000
# Expressions name publication fields only: the "contact" of the evaluator is
# the publication, and no persona is known.
PUBLICATION_CATALOG = Catalog(contact_fields=PUBLICATION_FIELDS, personas=frozenset())

Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True)
class FeedRule:
    """One stored rule; `publication` is the pinned publication's external id."""

    id: int
    persona: str
    kind: str
    expr: str | None
    weight: float | None
    publication: str | None
    expires_at: datetime | None
    cap: int | None
    created_at: datetime
    created_by: str | None

    def expired(self, at: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= at

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "persona": self.persona,
            "kind": self.kind,
            "expr": self.expr,
            "weight": self.weight,
            "publication": self.publication,
            "expires_at": iso(self.expires_at),
            "cap": self.cap,
            "created_at": iso(self.created_at),
            "created_by": self.created_by,
        }


def _counts(node: Node) -> list[Count]:
    """The count(...) nodes of a tree (a publication has no reads to count)."""
    found: list[Count] = []

    def walk(value: Any) -> None:
        if isinstance(value, Count):
            found.append(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(node)
    return found


@functools.lru_cache(maxsize=1024)
def compile_rule_expr(expr: str) -> Evaluator:
    """Check `expr` against the publication fields and compile it (cached by text).

    Raises CriteriaError (an InputError) with line and column.
    """
    if not expr.strip():
        raise CriteriaError('the expression is empty: e.g. sector = "Energy"', line=1, col=1)
    if len(expr) > MAX_EXPR_CHARS:
        raise InputError(f"the expression is longer than {MAX_EXPR_CHARS:,} characters")
    criterion = compile_criterion(expr, PUBLICATION_CATALOG)
    counts = _counts(criterion.ast)
    if counts:
        pos = counts[0].pos
        raise CriteriaError(
            "count(...) cannot be used in a feed rule: it describes one publication",
            line=pos.line if pos else 1,
            col=pos.col if pos else 1,
        )
    return compile_python(criterion.ast, PUBLICATION_CATALOG)


def validate_expr(expr: str) -> str:
    """`expr` in canonical text, or CriteriaError with line and column."""
    compile_rule_expr(expr)
    return compile_criterion(expr, PUBLICATION_CATALOG).text


@functools.lru_cache(maxsize=4096)
def predicate(expr: str, as_of: datetime) -> Predicate:
    """publication fields -> whether `expr` is TRUE for it (UNKNOWN counts as false);
    windows such as `published_at within 7d` look back from `as_of`.

    The same (expr, as_of) gives the same function object: the model caches
    each predicate's mask over the catalogue by identity, so a feed request
    re-reading unchanged rules costs no re-evaluation."""
    evaluate = compile_rule_expr(expr)

    def test(publication: Mapping[str, Any]) -> bool:
        return evaluate(EvalInput(contact=publication, as_of=as_of)) is True

    return test


def _publication_pk(conn: Connection, store: Store, publication_id: str) -> int:
    p = store.tables.publications
    pk = conn.scalar(select(p.c.pk).where(p.c.id == publication_id))
    if pk is None:
        raise InputError(f"unknown publication {publication_id!r}: pin one that was imported")
    return int(pk)


def _checked(
    kind: str,
    expr: str | None,
    weight: float | None,
    publication: str | None,
    expires_at: datetime | None,
    cap: int | None,
) -> dict[str, Any]:
    """The columns of a new rule of `kind`, or an InputError naming what is wrong."""
    if kind not in KINDS:
        raise InputError(f"unknown rule kind {kind!r}: use one of {', '.join(KINDS)}")
    given = {
        "expr": expr is not None,
        "weight": weight is not None,
        "publication": publication is not None,
        "expires_at": expires_at is not None,
        "cap": cap is not None,
    }
    allowed = {
        "boost": {"expr", "weight"},
        "filter": {"expr"},
        "pin": {"publication", "expires_at"},
        "cap": {"cap"},
    }[kind]
    extra = sorted(k for k, v in given.items() if v and k not in allowed)
    if extra:
        raise InputError(f"a {kind} rule takes no {', '.join(extra)}")
    if kind in ("boost", "filter"):
        if expr is None:
            raise InputError(f"a {kind} rule needs an expression over publication fields")
        expr = validate_expr(expr)
    if kind == "boost":
        if weight is None:
            raise InputError("a boost rule needs a weight, e.g. 1.5 (negative demotes)")
        if not math.isfinite(weight) or abs(weight) > MAX_WEIGHT or weight == 0:
            raise InputError(
                f"weight must be a non-zero number from -{MAX_WEIGHT:g} to {MAX_WEIGHT:g}"
            )
    if kind == "pin":
        if not publication:
            raise InputError("a pin rule needs a publication id")
        if expires_at is not None and expires_at <= utcnow():
            raise InputError(f"expires_at {iso(expires_at)} is in the past")
    if kind == "cap" and (cap is None or cap < 1):
        raise InputError("a cap rule needs a number of items per series of at least 1")
    return {"expr": expr, "weight": weight, "expires_at": expires_at, "cap": cap}


def add_rule(
    store: Store,
    persona: str,
    kind: str,
    *,
    expr: str | None = None,
    weight: float | None = None,
    publication: str | None = None,
    expires_at: datetime | None = None,
    cap: int | None = None,
    actor: str | None = None,
    source: str = "cli",
) -> FeedRule:
    """Store a rule for `persona` (active) after checking it; audit-logged.

    Raises InputError (CriteriaError with a position for a bad expression),
    NotFoundError for an unknown persona, ConflictError for an archived persona
    or a second cap.
    """
    values = _checked(kind, expr, weight, publication, expires_at, cap)
    t = store.tables
    with store.write() as conn:
        found = get_persona(conn, store, persona, active=True)
        if publication is not None:
            values["publication_pk"] = _publication_pk(conn, store, publication)
        if kind == "cap":
            existing = conn.scalar(
                select(t.feed_rules.c.pk).where(
                    t.feed_rules.c.persona_pk == found.pk, t.feed_rules.c.kind == "cap"
                )
            )
            if existing is not None:
                raise ConflictError(
                    f"persona {persona!r} already has a cap (rule {existing}): remove it first"
                )
        pk = conn.execute(
            t.feed_rules.insert()
            .values(persona_pk=found.pk, kind=kind, created_at=utcnow(), created_by=actor, **values)
            .returning(t.feed_rules.c.pk)
        ).scalar_one()
        rule = _rules(conn, store, rule_pk=int(pk))[0]
        record(
            conn,
            store,
            actor=actor,
            action="feed_rule.add",
            target=persona,
            detail=rule.to_json(),
            source=source,
        )
    return rule


def _rules(
    conn: Connection, store: Store, *, persona_pk: int | None = None, rule_pk: int | None = None
) -> list[FeedRule]:
    t = store.tables
    r, p, pub = t.feed_rules, t.personas, t.publications
    query = (
        select(r, p.c.key.label("persona_key"), pub.c.id.label("publication_id"))
        .join(p, p.c.pk == r.c.persona_pk)
        .outerjoin(pub, pub.c.pk == r.c.publication_pk)
        .order_by(p.c.key, r.c.pk)
    )
    if persona_pk is not None:
        query = query.where(r.c.persona_pk == persona_pk)
    if rule_pk is not None:
        query = query.where(r.c.pk == rule_pk)
    return [
        FeedRule(
            id=int(row.pk),
            persona=row.persona_key,
            kind=row.kind,
            expr=row.expr,
            weight=row.weight,
            publication=row.publication_id,
            expires_at=row.expires_at,
            cap=None if row.cap is None else int(row.cap),
            created_at=row.created_at,
            created_by=row.created_by,
        )
        for row in conn.execute(query)
    ]


def list_rules(store: Store, persona: str | None = None) -> list[FeedRule]:
    """Rules of `persona` (every persona's when None), by persona then id; expired
    pins included (`FeedRule.expired` tells)."""
    with store.read() as conn:
        persona_pk = None if persona is None else get_persona(conn, store, persona).pk
        return _rules(conn, store, persona_pk=persona_pk)


def remove_rule(
    store: Store,
    rule_id: int,
    *,
    persona: str | None = None,
    actor: str | None = None,
    source: str = "cli",
) -> FeedRule:
    """Delete rule `rule_id` (of `persona`, when given); audit-logged. NotFoundError
    when there is no such rule (or it belongs to another persona)."""
    t = store.tables
    with store.write() as conn:
        found = _rules(conn, store, rule_pk=rule_id)
        if not found or (persona is not None and found[0].persona != persona):
            of = f" of persona {persona!r}" if persona is not None else ""
            raise NotFoundError(f"no feed rule {rule_id}{of}: see `personatag feed-rule list`")
        conn.execute(t.feed_rules.delete().where(t.feed_rules.c.pk == rule_id))
        record(
            conn,
            store,
            actor=actor,
            action="feed_rule.remove",
            target=found[0].persona,
            detail=found[0].to_json(),
            source=source,
        )
    return found[0]


def rules_for_model(
    store: Store,
    as_of: datetime,
    conn: Connection | None = None,
    *,
    pins_at: datetime | None = None,
) -> dict[str, Rules]:
    """persona key -> the `Rules` of every active persona that has rules, as of
    `as_of` (windows look back from it). Pins expired at `pins_at` (default
    as_of) are left out: a server's model may be older than the request."""
    from personatag.recommend.model import Rules

    if conn is None:
        with store.read() as c:
            return rules_for_model(store, as_of, c, pins_at=pins_at)
    pins_at = as_of if pins_at is None else pins_at
    t = store.tables
    r, p = t.feed_rules, t.personas
    rows = conn.execute(
        select(r, p.c.key, p.c.name)
        .join(p, p.c.pk == r.c.persona_pk)
        .where(p.c.archived_at.is_(None))
        .order_by(r.c.pk)
    ).all()
    parts: dict[str, dict[str, Any]] = {}
    for row in rows:
        part = parts.setdefault(
            row.key,
            {"name": row.name, "boosts": [], "filters": [], "pins": [], "cap": None},
        )
        if row.kind == "boost":
            part["boosts"].append((predicate(row.expr, as_of), float(row.weight)))
        elif row.kind == "filter":
            part["filters"].append(predicate(row.expr, as_of))
        elif row.kind == "pin":
            if row.expires_at is None or row.expires_at > pins_at:
                part["pins"].append((int(row.publication_pk), row.expires_at))
        elif row.kind == "cap":
            cap = int(row.cap)
            part["cap"] = cap if part["cap"] is None else min(part["cap"], cap)
    return {
        key: Rules(
            persona_key=key,
            persona_name=part["name"],
            boosts=tuple(part["boosts"]),
            filters=tuple(part["filters"]),
            pins=tuple(part["pins"]),
            cap_per_series=part["cap"],
        )
        for key, part in parts.items()
    }
