"""Admin pages: users (roles, disable, password reset, tokens) and the audit log."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from personatag import accounts, audit_log
from personatag.web.pages.common import chip, ctx, declare, page_user, render

router = APIRouter(include_in_schema=False)

AUDIT_PAGE = 50
SESSION_ACTIONS = ("login", "login.*", "logout")
# What an event without detail did, in words.
SUMMARIES = {
    "user.password": "new password set; their web sessions ended",
    "user.enable": "can log in again",
    "persona.archive": "archived",
    "persona.restore": "restored",
    "logout": "logged out",
}
# Offered in the action filter; any other action can be typed (`user.*` takes a family).
AUDIT_ACTIONS = (
    "persona.*",
    "criterion.*",
    "feed_rule.*",
    "attribute.add",
    "pin",
    "unpin",
    "user.*",
    "token.*",
    "webhook.*",
    "contact.*",
    "request.submit",
    "job.cancel",
    "deploy",
    "login",
    "login.failed",
)


@dataclass
class AuditRow:
    """One audit event as the page shows it: the object as a link, the detail as
    readable pairs, and a before/after where the event has one."""

    event: dict[str, Any]
    target: Markup
    before: str | None = None
    after: str | None = None
    details: list[tuple[str, Markup]] = field(default_factory=list)


def _link(href: str, text: str) -> Markup:
    return Markup('<a href="{}">{}</a>').format(href, text)


def _target(action: str, target: str | None) -> Markup:
    if not target:
        return Markup('<span class="muted">-</span>')
    family = action.split(".")[0]
    if family in ("persona", "feed_rule"):
        return chip(target)
    if family == "criterion":
        name = target.split("@")[0]
        return _link(f"/criteria/{name}", target)
    if family in ("user", "token", "login", "logout"):
        return _link(f"/admin/users#user-{target}", target)
    if family in ("pin", "unpin", "contact"):
        return _link(f"/contacts?id={target}", target)
    if family == "job":
        return _link(f"/jobs/{target}", target)
    return Markup("<code>{}</code>").format(target)


def _value(key: str, value: Any) -> Markup:
    if value is None:
        return Markup('<span class="muted">none</span>')
    if key == "persona" and isinstance(value, str):
        return chip(value)
    if key == "personas" and isinstance(value, list):
        return Markup(" ").join(chip(v) for v in value)
    if key == "expr":
        return Markup('<code class="expr">{}</code>').format(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Markup("{}").format(f"{value:,}")
    if isinstance(value, dict | list):
        return Markup("<code>{}</code>").format(json.dumps(value, sort_keys=True))
    return Markup("{}").format(value)


def audit_row(event: dict[str, Any]) -> AuditRow:
    row = AuditRow(event, _target(event["action"], event["target"]))
    detail = dict(event["detail"] or {})
    if "from" in detail and "to" in detail:
        row.before, row.after = str(detail.pop("from")), str(detail.pop("to"))
    label = {"token_id": "token", "tokens_revoked": "tokens revoked", "first_admin": "first admin"}
    for key, value in detail.items():
        row.details.append((label.get(key, key.replace("_", " ")), _value(key, value)))
    if row.before is None and not row.details and event["action"] in SUMMARIES:
        row.details.append(("", Markup("{}").format(SUMMARIES[event["action"]])))
    return row


def _day(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


@router.get("/audit", **declare("admin"))
def audit_page(
    request: Request,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: str | None = None,
    until: str | None = None,
    before: str | None = None,
    logins: str | None = None,
) -> HTMLResponse:
    who = page_user(request, "admin")
    problems = []
    since_day, until_day, before_seq = _day(since), _day(until), _int(before)
    if since and since_day is None:
        problems.append(f"'from' {since!r} is not a date: use YYYY-MM-DD")
    if until and until_day is None:
        problems.append(f"'to' {until!r} is not a date: use YYYY-MM-DD")
    if before and before_seq is None:
        problems.append(f"'before' {before!r} is not an event number")
    events = audit_log.list_events(
        ctx(request).store,
        actor=(actor or "").strip() or None,
        action=(action or "").strip() or None,
        target=(target or "").strip() or None,
        since=None if since_day is None else datetime.combine(since_day, time(), UTC),
        until=None
        if until_day is None
        else datetime.combine(until_day + timedelta(days=1), time(), UTC),
        before_seq=before_seq,
        # Logins are many and change nothing: shown on request, or when asked for by name.
        exclude_actions=() if logins or (action or "").strip() else SESSION_ACTIONS,
        limit=AUDIT_PAGE + 1,
    )
    more = len(events) > AUDIT_PAGE
    events = events[:AUDIT_PAGE]
    filters = {
        "actor": actor or "",
        "action": action or "",
        "target": target or "",
        "since": since or "",
        "until": until or "",
        "logins": "on" if logins else "",
    }
    kept = {k: v for k, v in filters.items() if v}
    older = events[-1]["seq"] if more and events else None
    return render(
        request,
        "audit.html",
        who,
        title="Audit log",
        rows=[audit_row(e) for e in events],
        filters=filters,
        filtered=any(filters.values()),
        actions=AUDIT_ACTIONS,
        problems=problems,
        older_href=None if older is None else "/audit?" + urlencode(kept | {"before": older}),
        newest_href="/audit?" + urlencode(kept) if before_seq is not None else None,
    )


@router.get("/admin/users", **declare("admin"))
def users_page(request: Request) -> HTMLResponse:
    who = page_user(request, "admin")
    store = ctx(request).store
    users = accounts.list_users(store)
    return render(
        request,
        "users.html",
        who,
        title="Users",
        users=users,
        roles=accounts.ROLES,
        admins=sum(1 for u in users if u.role == "admin" and not u.disabled),
        tokens=accounts.list_tokens(store),
    )
