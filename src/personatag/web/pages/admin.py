"""Admin pages: the audit log and users."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from personatag import accounts, audit_log
from personatag.web.pages.common import ctx, declare, page_user, render

router = APIRouter(include_in_schema=False)


@router.get("/audit", **declare("admin"))
def audit_page(
    request: Request, actor: str | None = None, action: str | None = None
) -> HTMLResponse:
    who = page_user(request, "admin")
    events = audit_log.list_events(
        ctx(request).store, actor=actor or None, action=action or None, limit=200
    )
    return render(
        request, "audit.html", who, title="Audit log", events=events, actor=actor, action=action
    )


@router.get("/admin/users", **declare("admin"))
def users_page(request: Request) -> HTMLResponse:
    who = page_user(request, "admin")
    store = ctx(request).store
    return render(
        request,
        "users.html",
        who,
        title="Users",
        users=accounts.list_users(store),
        tokens=accounts.list_tokens(store),
    )
