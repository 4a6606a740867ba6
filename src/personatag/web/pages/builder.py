"""The criterion builder."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from personatag.web.pages.common import ctx, declare, not_found, page_user, render

router = APIRouter(include_in_schema=False)


@router.get("/criteria/new", **declare("viewer"))
def builder_page(request: Request, expr: str = "", criterion: str = "") -> HTMLResponse:
    """The builder; with `criterion=NAME` it starts from that criterion's newest
    version, and saving adds a version."""
    from personatag.definitions.criteria import get_criterion
    from personatag.definitions.personas import list_personas
    from personatag.errors import NotFoundError

    who = page_user(request, "viewer")
    store = ctx(request).store
    editing = None
    with store.read() as conn:
        personas = [p for p, _ in list_personas(conn, store)]
        catalog = store.catalog(conn)
        if criterion:
            try:
                c = get_criterion(conn, store, criterion)
            except NotFoundError:
                return not_found(
                    request, who, f"There is no criterion named {criterion!r} to edit."
                )
            editing = {
                "name": c.name,
                "persona": c.persona_key,
                "action": c.action.value,
                "mode": c.mode.value,
                "exit_policy": c.exit_policy.value,
                "expr": c.expr,
                "version": c.version,
            }

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
        criterion=editing,
        confirm_threshold=ctx(request).settings.confirm_threshold,
    )
