"""The criterion builder."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from personatag.web.pages.common import ctx, declare, page_user, render

router = APIRouter(include_in_schema=False)


@router.get("/criteria/new", **declare("viewer"))
def builder_page(request: Request, expr: str = "") -> HTMLResponse:
    from personatag.definitions.personas import list_personas

    who = page_user(request, "viewer")
    store = ctx(request).store
    with store.read() as conn:
        personas = [p for p, _ in list_personas(conn, store)]
        catalog = store.catalog(conn)

    def typed(fields: Any) -> list[dict[str, str]]:
        return [{"name": n, "type": t.value} for n, t in sorted(fields.items())]

    return render(
        request,
        "builder.html",
        who,
        title="Criterion builder",
        personas=personas,
        fields=typed(catalog.contact_fields),
        publication_fields=typed(catalog.publication_fields),
        expr=expr,
    )
