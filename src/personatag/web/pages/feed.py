"""Feed rules and feed evaluations."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from personatag.web.pages.common import ctx, declare, page_user, render

router = APIRouter(include_in_schema=False)


@router.get("/feed-rules", **declare("viewer"))
def feed_rules_page(request: Request, persona: str | None = None) -> HTMLResponse:
    from personatag.definitions.personas import list_personas
    from personatag.recommend.rules import list_rules

    who = page_user(request, "viewer")
    store = ctx(request).store
    with store.read() as conn:
        personas = [p for p, _ in list_personas(conn, store)]
    chosen = persona or (personas[0].key if personas else None)
    rules = [r.to_json() for r in list_rules(store, chosen)] if chosen else []
    return render(
        request, "feed_rules.html", who, title="Feed rules", personas=personas, chosen=chosen,
        rules=rules,
    )  # fmt: skip


@router.get("/feed-evaluations", **declare("viewer"))
def feed_evaluations_page(request: Request, id: str | None = None) -> HTMLResponse:
    from personatag.recommend.runs import list_runs

    who = page_user(request, "viewer")
    runs = list_runs(ctx(request).settings)
    chosen = next((r for r in runs if r["id"] == id), None) if id else next(iter(runs), None)
    error = f"unknown feed evaluation {id!r}" if id and chosen is None else None
    return render(
        request, "feed_evaluations.html", who, title="Feed evaluations", runs=runs,
        chosen=chosen, error=error,
        running=any(r["status"] == "running" for r in runs),
    )  # fmt: skip
