"""/contacts: show one contact (viewer); pin and unpin (editor)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from personatag.audit_log import record_now
from personatag.domain import PinKind
from personatag.pipeline.contacts import show_contact
from personatag.pipeline.pins import pin, unpin
from personatag.web.api.deps import StoreDep
from personatag.web.auth import CurrentUser, role
from personatag.web.schemas import ContactView, PinCreate, PinResult

router = APIRouter(tags=["contacts"])


@router.get("/contacts/{contact_id}", response_model=ContactView, **role("viewer"))
def contact_show(contact_id: str, store: StoreDep) -> Any:
    """Attributes, personas with their sources (how, since, who), pins, recent history."""
    return show_contact(store, contact_id)


@router.post("/contacts/{contact_id}/pins", response_model=PinResult, **role("editor"))
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


@router.delete("/contacts/{contact_id}/pins/{persona}", response_model=PinResult, **role("editor"))
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
