"""The Personas pages."""

from __future__ import annotations

import itertools
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from personatag.web.pages.common import ctx, declare, page_user, render

router = APIRouter(include_in_schema=False)


@router.get("/personas", **declare("viewer"))
def personas_page(request: Request) -> HTMLResponse:
    from personatag.definitions.criteria import list_criteria
    from personatag.definitions.personas import list_personas

    who = page_user(request, "viewer")
    store = ctx(request).store
    with store.read() as conn:
        personas = list_personas(conn, store)
        criteria = list_criteria(conn, store)
    feeding: dict[str, list[Any]] = {}
    for c in criteria:
        feeding.setdefault(c.persona_key, []).append(c)
    items = [
        {
            "key": p.key,
            "name": p.name,
            "category": p.category,
            "members": n,
            "criteria": [
                {"name": c.name, "version": c.version, "mode": c.mode.value, "expr": c.expr}
                for c in feeding.get(p.key, [])
            ],
        }
        for p, n in personas
    ]
    categories = [
        (cat, list(group)) for cat, group in itertools.groupby(items, key=lambda i: i["category"])
    ]
    return render(request, "personas.html", who, title="Personas", categories=categories)
