"""A request's items, checked against the store before anything is recorded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection

from personatag.criteria import Node, compile_criterion, from_json
from personatag.definitions.criteria import Criterion, get_criterion
from personatag.definitions.personas import Persona, get_persona, persona_pks
from personatag.domain import Action, Catalog
from personatag.errors import InputError
from personatag.store import Store


@dataclass(frozen=True)
class Item:
    """One persona and action, and what to match (exactly one of the three)."""

    persona: str | None
    action: Action
    criterion: str | None = None
    expr: str | None = None
    contact_ids: Sequence[tuple[int, str]] | None = None  # (line, id)


@dataclass(frozen=True)
class Resolved:
    """An item checked against the store: its persona, criterion and AST exist."""

    item: Item
    persona: Persona
    criterion: Criterion | None
    ast: Node | None


@dataclass(frozen=True)
class Plan:
    items: tuple[Resolved, ...]
    catalog: Catalog
    persona_pks: dict[str, int]


def resolve(store: Store, items: Sequence[Item]) -> Plan:
    """Check every item against the store; raise InputError naming the first problem."""
    out = []
    with store.read() as conn:
        catalog = store.catalog(conn)
        for item in items:
            out.append(_resolve_one(conn, store, catalog, item))
        pks = persona_pks(conn, store)
    return Plan(tuple(out), catalog, pks)


def _resolve_one(conn: Connection, store: Store, catalog: Catalog, item: Item) -> Resolved:
    given = [x is not None for x in (item.expr, item.criterion, item.contact_ids)]
    if sum(given) != 1:
        raise InputError("give exactly one of a criterion, an expression or contacts")
    criterion = None
    ast = None
    if item.criterion is not None:
        criterion = get_criterion(conn, store, item.criterion)
        if item.persona and item.persona != criterion.persona_key:
            raise InputError(
                f"criterion {criterion.label} is for persona {criterion.persona_key!r}, "
                f"not {item.persona!r}"
            )
        if criterion.action is not item.action:
            raise InputError(
                f"criterion {criterion.label} has action {criterion.action.value!r}, not "
                f"{item.action.value!r}: run it with `personatag {criterion.action.value}`"
            )
        persona_key = criterion.persona_key
        ast = from_json(criterion.ast)
        compile_criterion(criterion.expr, catalog)  # still valid against today's schema?
    elif item.persona is None:
        raise InputError("a persona is required")
    else:
        persona_key = item.persona
        if item.expr is not None:
            ast = compile_criterion(item.expr, catalog).ast
    persona = get_persona(conn, store, persona_key, active=True)
    return Resolved(item, persona, criterion, ast)
