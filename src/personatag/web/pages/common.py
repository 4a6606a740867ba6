"""What every workbench page shares: the templates (with the filters that
render times, ids and personas the same way everywhere), the role check and
the render call.

A page declares its role like an API route (`x-role`, read by the route-walk
test). Without a session it answers 401 with the login form; below its role,
403 with the reason.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from personatag import accounts
from personatag.web.auth import Principal, principal_of
from personatag.web.errors import ApiError

HERE = Path(__file__).resolve().parent.parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


def _parse(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def when(value: Any, ago: bool = False) -> Markup:
    """A time as `<time>`: the UTC minute as text (what a reader without
    JavaScript sees), localised by the page's script, with the full UTC value
    on hover; `ago` shows "3 min ago" instead."""
    moment = _parse(value)
    if moment is None:
        return Markup('<span class="muted">{}</span>').format(value or "-")
    iso = moment.isoformat().replace("+00:00", "Z")
    text = moment.strftime("%Y-%m-%d %H:%M UTC")
    if ago:
        return Markup('<time datetime="{}" data-ago>{}</time>').format(iso, text)
    return Markup('<time datetime="{}">{}</time>').format(iso, text)


def short_id(value: Any, keep: int = 8) -> Markup:
    """An id cut to `keep` characters, the whole id on hover, copied on click."""
    text = str(value)
    shown = text if len(text) <= keep + 1 else text[:keep] + "…"
    return Markup(
        '<button type="button" class="id" data-copy="{0}" title="{0} (click to copy)">{1}</button>'
    ).format(text, shown)


def chip(key: Any) -> Markup:
    """A persona as a chip linking to its page."""
    return Markup('<a class="chip" href="/personas/{0}">{0}</a>').format(str(key))


def number(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


templates.env.filters.update(when=when, short_id=short_id, chip=chip, number=number)


class Denied(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def declare(name: str) -> dict[str, Any]:
    return {"openapi_extra": {"x-role": name}, "response_class": HTMLResponse}


def ctx(request: Request) -> Any:
    return request.app.state.ctx


def render(
    request: Request,
    name: str,
    principal: Principal | None,
    status_code: int = 200,
    **values: Any,
) -> HTMLResponse:
    values.setdefault("title", name.split(".")[0].capitalize())
    return templates.TemplateResponse(
        request,
        name,
        {
            "user": principal.user if principal else None,
            "csrf": principal.csrf_token if principal else "",
            "page": name.split(".")[0],
            **values,
        },
        status_code=status_code,
    )


def page_user(request: Request, needed: str) -> Principal:
    try:
        principal = principal_of(request, ctx(request).store)
    except ApiError as exc:
        message = exc.message if exc.status == 401 else None
        raise Denied(render(request, "login.html", None, 401, message=message)) from None
    if principal is None:
        raise Denied(render(request, "login.html", None, 401))
    if not accounts.role_at_least(principal.user.role, needed):
        message = f"This page needs the {needed} role; you are {principal.user.role}."
        raise Denied(render(request, "forbidden.html", principal, 403, message=message))
    return principal


def not_found(request: Request, principal: Principal, message: str) -> HTMLResponse:
    """The 404 page: says what was not found and where to go instead."""
    return render(request, "not_found.html", principal, 404, title="Not found", message=message)
