"""/contacts: search contacts and show one (viewer); update one, add its events,
pin and unpin (editor)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from personatag.audit_log import record_now
from personatag.contacts import (
    SEARCH_MAX_LIMIT,
    SEARCH_MAX_OFFSET,
    add_events,
    search_contacts,
    set_contact,
    show_contact,
)
from personatag.domain import PinKind, utcnow
from personatag.errors import InputError
from personatag.memberships.pins import pin, unpin
from personatag.web.api.deps import StoreDep
from personatag.web.auth import CurrentUser, role
from personatag.web.schemas import (
    ContactEvents,
    ContactEventsAdded,
    ContactSearch,
    ContactUpdate,
    ContactUpdated,
    ContactView,
    PinCreate,
    PinResult,
)

router = APIRouter(tags=["contacts"])


@router.get("/contacts", response_model=ContactSearch, **role("viewer"))
def contact_search(
    store: StoreDep,
    q: Annotated[
        str,
        Query(
            min_length=1,
            max_length=200,
            pattern=r"\S",
            description="a contact id (exact, any case), or the start of a name, email or firm",
        ),
    ],
    limit: Annotated[int, Query(ge=1, le=SEARCH_MAX_LIMIT)] = 20,
    offset: Annotated[int, Query(ge=0, le=SEARCH_MAX_OFFSET)] = 0,
) -> Any:
    """Find contacts: id matches first, then names, emails and firms by prefix."""
    return search_contacts(store, q, limit=limit, offset=offset)


@router.get("/contacts/{contact_id}", response_model=ContactView, **role("viewer"))
def contact_show(contact_id: str, store: StoreDep) -> Any:
    """Attributes, personas with their sources (how, since, who), pins, recent history."""
    return show_contact(store, contact_id)


@router.post(
    "/contacts/{contact_id}/pins", response_model=PinResult, **role("editor", errors=(409,))
)
def contact_pin(contact_id: str, body: PinCreate, store: StoreDep, who: CurrentUser) -> Any:
    """Pin the contact in or out of a persona; rules never override a pin."""
    actor = who.user.username
    result = pin(
        store, body.persona, contact_id, PinKind(body.kind), actor=actor, reason=body.reason
    )
    record_now(
        store,
        actor=actor,
        action="pin",
        target=contact_id,
        detail={"persona": body.persona, "kind": body.kind, "reason": body.reason},
        source="api",
    )
    return result


@router.delete(
    "/contacts/{contact_id}/pins/{persona}",
    response_model=PinResult,
    **role("editor", errors=(409,)),
)
def contact_unpin(contact_id: str, persona: str, store: StoreDep, who: CurrentUser) -> Any:
    """Remove the pin; rules decide again from the next run."""
    result = unpin(store, persona, contact_id, actor=who.user.username)
    record_now(
        store,
        actor=who.user.username,
        action="unpin",
        target=contact_id,
        detail={"persona": persona},
        source="api",
    )
    return result


@router.patch("/contacts/{contact_id}", response_model=ContactUpdated, **role("editor"))
def contact_update(contact_id: str, body: ContactUpdate, store: StoreDep, who: CurrentUser) -> Any:
    """Set fields of one contact (ongoing criteria follow within about a second)."""
    return set_contact(
        store, contact_id, body.fields, actor=who.user.username, source="api", create=body.create
    )


@router.post("/contacts/{contact_id}/events", response_model=ContactEventsAdded, **role("editor"))
def contact_events(contact_id: str, body: ContactEvents, store: StoreDep, who: CurrentUser) -> Any:
    """Record reads and logins of one contact (known ones are ignored)."""
    if not body.reads and not body.logins:
        raise InputError("nothing to add: give reads and/or logins")
    now = utcnow()
    result = add_events(
        store,
        contact_id,
        reads=[(r.publication, r.at or now) for r in body.reads],
        logins=[at or now for at in body.logins],
    )
    record_now(
        store,
        actor=who.user.username,
        action="contact.events",
        target=contact_id,
        detail=result,
        source="api",
    )
    return result
