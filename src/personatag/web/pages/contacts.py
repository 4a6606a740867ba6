"""A contact's page."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from personatag.errors import PersonatagError
from personatag.web.pages.common import ctx, declare, page_user, render

router = APIRouter(include_in_schema=False)


@router.get("/contacts", **declare("viewer"))
def contact_page(request: Request, id: str | None = None, ranker: str = "ours") -> HTMLResponse:
    from personatag.contacts import show_contact
    from personatag.definitions.personas import list_personas

    who = page_user(request, "viewer")
    store = ctx(request).store
    contact, error = None, None
    feed, feed_error = None, None
    if id:
        try:
            contact = show_contact(store, id)
        except PersonatagError as exc:
            error = str(exc)
    from personatag.recommend.baselines import BASELINE_KEYS, RANKER_KEYS

    chosen = ranker if ranker in RANKER_KEYS else "ours"
    if contact is not None:
        from personatag.recommend.service import feed_for

        try:
            feed = feed_for(store, id or "", 10, None, ctx(request).settings, ranker=chosen)
        except PersonatagError as exc:
            feed_error = str(exc)
    with store.read() as conn:
        personas = [p for p, _ in list_personas(conn, store)]
    return render(
        request,
        "contact.html",
        who,
        title="Contacts",
        contact=contact,
        contact_id=id,
        error=error,
        personas=personas,
        feed=feed,
        feed_error=feed_error,
        rankers=[("ours", "ours (served)")]
        + [(key, name) for key, (name, _) in BASELINE_KEYS.items()],
        ranker=chosen,
    )
