"""The Personas pages: the list (create, edit, archive, restore) and one page
per persona (size, criteria, members, pins, recent changes, size chart)."""

from __future__ import annotations

import itertools
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from personatag import accounts
from personatag.errors import NotFoundError
from personatag.web.pages.common import ctx, declare, not_found, page_user, render

router = APIRouter(include_in_schema=False)

MEMBERS_PER_PAGE = 25
RECENT_CHANGES = 20


def _criterion(c: Any) -> dict[str, Any]:
    return {
        "name": c.name,
        "version": c.version,
        "mode": c.mode.value,
        "exit": c.exit_policy.value,
        "action": c.action.value,
        "status": c.status,
        "expr": c.expr,
        "created_at": c.created_at,
        "created_by": c.created_by,
    }


def _persona(p: Any, members: int, criteria: list[Any]) -> dict[str, Any]:
    return {
        "key": p.key,
        "name": p.name,
        "category": p.category,
        "description": p.description,
        "members": members,
        "created_at": p.created_at,
        "created_by": p.created_by,
        "archived_at": p.archived_at,
        "criteria": [_criterion(c) for c in criteria],
    }


def _other_personas(conn: Any, store: Any, pk: int) -> list[dict[str, str]]:
    """The other active personas by key, for the overlap picker."""
    from sqlalchemy import select

    t = store.tables.personas
    query = (
        select(t.c.key, t.c.name)
        .where(t.c.pk != pk, t.c.archived_at.is_(None))
        .order_by(t.c.key)
        .limit(1000)
    )
    return [{"key": k, "name": n} for k, n in conn.execute(query)]


@router.get("/personas", **declare("viewer"))
def personas_page(request: Request) -> HTMLResponse:
    from personatag.definitions.criteria import list_criteria
    from personatag.definitions.personas import list_personas

    who = page_user(request, "viewer")
    store = ctx(request).store
    with store.read() as conn:
        personas = list_personas(conn, store, include_archived=True)
        criteria = list_criteria(conn, store)
    feeding: dict[str, list[Any]] = {}
    for c in criteria:
        feeding.setdefault(c.persona_key, []).append(c)
    items = [_persona(p, n, feeding.get(p.key, [])) for p, n in personas]
    active = [i for i in items if i["archived_at"] is None]
    archived = sorted(
        (i for i in items if i["archived_at"] is not None),
        key=lambda i: i["archived_at"],
        reverse=True,
    )
    categories = [
        (cat, list(group)) for cat, group in itertools.groupby(active, key=lambda i: i["category"])
    ]
    return render(
        request,
        "personas.html",
        who,
        title="Personas",
        categories=categories,
        archived=archived,
        total=len(active),
        total_members=sum(i["members"] for i in active),
        known_categories=sorted({i["category"] for i in items}),
        can_edit=accounts.role_at_least(who.user.role, "editor"),
    )


@router.get("/personas/{key}", **declare("viewer"))
def persona_page(
    request: Request, key: str, q: str | None = None, after: str | None = None
) -> HTMLResponse:
    from personatag.definitions.criteria import list_criteria
    from personatag.definitions.personas import get_persona, member_count
    from personatag.memberships import persona_view

    who = page_user(request, "viewer")
    store = ctx(request).store
    q = (q or "").strip()[: persona_view.MAX_QUERY_CHARS]
    try:
        with store.read() as conn:
            p = get_persona(conn, store, key)
            size = member_count(conn, store, p.pk)
            feeding = [c for c in list_criteria(conn, store) if c.persona_key == key]
            members, next_after = persona_view.members_page(
                conn, store, p.pk, q=q, after=after, limit=MEMBERS_PER_PAGE
            )
            since = persona_view.since_of(conn, store, p.pk, [m["id"] for m in members])
            pins_total, pins = persona_view.pins_of(conn, store, p.pk)
            changes = persona_view.recent_changes(conn, store, p.pk, limit=RECENT_CHANGES)
            others = _other_personas(conn, store, p.pk)
    except NotFoundError:
        message = f"There is no persona {key!r}. The Personas page lists them all, archived too."
        return not_found(request, who, message)
    for m in members:
        m["since"] = since.get(m["id"])
    return render(
        request,
        "persona.html",
        who,
        title=f"Persona {p.name}",
        persona=_persona(p, size, feeding),
        members=members,
        next_after=next_after,
        q=q,
        after=after,
        pins=pins,
        pins_total=pins_total,
        changes=changes,
        others=others,
        can_edit=accounts.role_at_least(who.user.role, "editor"),
    )
