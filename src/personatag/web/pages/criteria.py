"""The Criteria pages: the list (with filters) and one criterion's page (its text,
versions, diff, edit, run, pause/resume/retire and a new version's progress).

The builder keeps `/criteria/new` (pages/builder.py, whose router comes first)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from personatag.web.pages.common import ctx, declare, not_found, page_user, render

router = APIRouter(include_in_schema=False)

STATES = ("active", "building", "backfilling", "paused", "retired")
MODES = ("adhoc", "ongoing")


@router.get("/criteria", **declare("viewer"))
def criteria_page(
    request: Request, persona: str = "", mode: str = "", state: str = "", q: str = ""
) -> HTMLResponse:
    from personatag.definitions.criteria import STATUS_BUILDING, list_criteria
    from personatag.definitions.personas import list_personas
    from personatag.tagging import versions as vs

    who = page_user(request, "viewer")
    store = ctx(request).store
    with store.read() as conn:
        criteria = list_criteria(conn, store)
        personas = [p.key for p, _ in list_personas(conn, store)]
    changed = vs.last_changes(store)
    rows: list[dict[str, Any]] = []
    for c in criteria:
        st = c.status
        if st == STATUS_BUILDING:
            st = vs.history(store, c.name)[-1]["state"]
        rows.append(
            {
                "name": c.name,
                "persona": c.persona_key,
                "mode": c.mode.value,
                "exit": c.exit_policy.value,
                "action": c.action.value,
                "version": c.version,
                "state": st,
                "expr": c.expr,
                "changed": max(c.created_at, changed.get(c.name, c.created_at)),
            }
        )
    needle = q.strip().lower()
    shown = [
        r
        for r in rows
        if (not persona or r["persona"] == persona)
        and (not mode or r["mode"] == mode)
        and (not state or r["state"] == state)
        and (not needle or needle in r["name"] or needle in r["expr"].lower())
    ]
    return render(
        request,
        "criteria.html",
        who,
        title="Criteria",
        rows=shown,
        total=len(rows),
        personas=personas,
        modes=MODES,
        states=STATES,
        chosen={"persona": persona, "mode": mode, "state": state, "q": q},
    )


@router.get("/criteria/{name}", **declare("viewer"))
def criterion_page(request: Request, name: str) -> HTMLResponse:
    from personatag.definitions.personas import list_personas
    from personatag.errors import NotFoundError
    from personatag.tagging import versions as vs

    who = page_user(request, "viewer")
    store = ctx(request).store
    try:
        versions = vs.history(store, name)
    except NotFoundError:
        return not_found(
            request,
            who,
            f"There is no criterion named “{name}”. The Criteria page lists them all; "
            "the builder makes new ones.",
        )
    with store.read() as conn:
        personas = [p.key for p, _ in list_personas(conn, store)]
    newest = versions[-1]
    c = newest["criterion"]
    current: dict[str, Any] = {
        "name": c.name,
        "version": c.version,
        "persona": c.persona_key,
        "expr": c.expr,
        "action": c.action.value,
        "mode": c.mode.value,
        "exit": c.exit_policy.value,
        "status": c.status,
        "state": newest["state"],
        "created_at": c.created_at,
        "created_by": c.created_by,
    }
    rows = [
        {
            "version": h["criterion"].version,
            "expr": h["criterion"].expr,
            "persona": h["criterion"].persona_key,
            "mode": h["criterion"].mode.value,
            "exit": h["criterion"].exit_policy.value,
            "action": h["criterion"].action.value,
            "state": h["state"],
            "created_at": h["criterion"].created_at,
            "created_by": h["criterion"].created_by,
            "events": h["events"],
        }
        for h in reversed(versions)
    ]
    return render(
        request,
        "criterion.html",
        who,
        title=f"Criterion {name}",
        c=current,
        versions=rows,
        personas=personas,
        can_edit=who.user.role != "viewer",
    )
