"""Contacts: search (by id, name, email, firm) and one contact's page."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from personatag.errors import NotFoundError, PersonatagError
from personatag.web.auth import Principal
from personatag.web.pages.common import ctx, declare, not_found, page_user, render

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 20
# Shown read-only (as times): the store keeps them, people do not type them.
_READ_ONLY = ("id", "created_at", "updated_at", "last_login_at")


@router.get("/contacts", **declare("viewer"))
def contacts_page(
    request: Request,
    id: str | None = None,
    q: str | None = None,
    offset: int = 0,
    ranker: str = "ours",
) -> HTMLResponse:
    """The search page; `?id=` shows that contact (the page's old address)."""
    who = page_user(request, "viewer")
    if id is not None and id.strip():
        return _contact(request, who, id.strip(), ranker)
    return _search(request, who, (q or "").strip(), offset)


@router.get("/contacts/{contact_id}", **declare("viewer"))
def contact_page(request: Request, contact_id: str, ranker: str = "ours") -> HTMLResponse:
    who = page_user(request, "viewer")
    return _contact(request, who, contact_id, ranker)


def _search(request: Request, who: Principal, q: str, offset: int) -> HTMLResponse:
    from personatag.contacts import search_contacts

    result, error = None, None
    if q:
        try:
            result = search_contacts(ctx(request).store, q, limit=PAGE_SIZE, offset=offset)
        except PersonatagError as exc:
            error = str(exc)
    return render(
        request,
        "contacts.html",
        who,
        200 if error is None else 422,
        title="Contacts",
        q=q,
        result=result,
        error=error,
    )


def _field_text(value: Any) -> str:
    """A value as the edit form shows it: read back like a CSV cell."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _contact(request: Request, who: Principal, contact_id: str, ranker: str) -> HTMLResponse:
    from personatag.contacts import recent_activity, show_contact
    from personatag.definitions.personas import list_personas
    from personatag.domain import STANDARD_CONTACT_FIELDS
    from personatag.recommend.baselines import BASELINE_KEYS, RANKER_KEYS
    from personatag.recommend.service import feed_for

    store = ctx(request).store
    try:
        contact = show_contact(store, contact_id)
        activity = recent_activity(store, contact_id)
    except NotFoundError:
        return not_found(
            request,
            who,
            f"There is no contact {contact_id!r}. Search for one on the Contacts page.",
        )
    types = {**STANDARD_CONTACT_FIELDS, **dict(store.custom_attributes())}
    fields = [
        {"name": name, "type": ft.value, "value": _field_text(contact["attributes"].get(name))}
        for name, ft in types.items()
        if name not in _READ_ONLY
    ]
    chosen = ranker if ranker in RANKER_KEYS else "ours"
    feed, feed_error = None, None
    try:
        feed = feed_for(store, contact_id, 10, None, ctx(request).settings, ranker=chosen)
    except PersonatagError as exc:
        feed_error = str(exc)
    with store.read() as conn:
        personas = [p for p, _ in list_personas(conn, store)]
    attrs = contact["attributes"]
    name = " ".join(str(attrs[k]) for k in ("first_name", "last_name") if attrs.get(k))
    return render(
        request,
        "contact.html",
        who,
        title=name or contact_id,
        contact=contact,
        contact_id=contact_id,
        display_name=name,
        fields=fields,
        activity=activity,
        personas=personas,
        feed=feed,
        feed_error=feed_error,
        rankers=[("ours", "ours (served)")]
        + [(key, label) for key, (label, _) in BASELINE_KEYS.items()],
        ranker=chosen,
    )
