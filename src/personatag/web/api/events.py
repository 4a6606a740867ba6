"""/membership-log (viewer): the log as JSON lines; /webhooks (admin): register,
list, disable, remove webhooks and handle their dead letters (docs/events.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, StrictBool

from personatag.membership_events import webhooks as wh
from personatag.membership_events.delivery import redeliver
from personatag.membership_events.export import export_lines
from personatag.membership_events.http import DeliveryError
from personatag.web.api.deps import SettingsDep, StoreDep
from personatag.web.auth import CurrentUser, role
from personatag.web.errors import ApiError
from personatag.web.schemas import ErrorResponse, Input, Name

router = APIRouter(tags=["events"])

NDJSON = "application/x-ndjson"
Seq = Annotated[int, Query(ge=0, le=2**63 - 1)]
WebhookId = Annotated[int, Path(ge=1, le=2**63 - 1)]
DeadLetterId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class WebhookCreate(Input):
    url: Annotated[
        str,
        Field(
            min_length=1,
            max_length=wh.MAX_URL,
            json_schema_extra={"pattern": r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^#\s]*)?$"},
        ),
    ]
    personas: Annotated[list[Name] | None, Field(min_length=1, max_length=1000)] = None
    from_start: StrictBool = False


class WebhookPublic(BaseModel):
    id: int
    url: str
    personas: list[str] | None
    enabled: bool
    cursor_seq: int
    cursor_part: int | None
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    dead_letters: int
    created_at: datetime
    created_by: str | None


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="signs every delivery; shown only in this answer")


class WebhookList(BaseModel):
    webhooks: list[WebhookPublic]


class DeadLetterPublic(BaseModel):
    id: int
    webhook: int
    first_seq: int
    last_seq: int
    events: int
    attempts: int
    last_error: str | None
    failed_at: datetime
    redelivered_at: datetime | None
    delivery_id: str | None


class DeadLetterList(BaseModel):
    dead_letters: list[DeadLetterPublic]


@router.get(
    "/membership-log",
    response_class=StreamingResponse,
    **role("viewer", errors=(404,), responses={200: {"content": {NDJSON: {}}}}),
)
def membership_log(
    store: StoreDep,
    persona: Annotated[str | None, Query(max_length=100)] = None,
    since: Annotated[Seq, Query(description="exclusive: the last seq seen")] = 0,
    until: Annotated[int | None, Query(ge=0, le=2**63 - 1, description="inclusive")] = None,
    limit: Annotated[
        int | None, Query(ge=1, le=10_000_000, description="log entries (a bulk entry is one)")
    ] = None,
) -> StreamingResponse:
    """Membership changes as JSON lines, one per contact, in seq order; resume
    with `since` = the last seq received."""
    lines = export_lines(store, persona=persona, since=since, until=until, limit=limit)
    return StreamingResponse((line.encode() for line in lines), media_type=NDJSON)


@router.get("/webhooks", response_model=WebhookList, **role("admin"))
def webhooks_list(store: StoreDep) -> dict[str, Any]:
    """Every webhook with its cursor, retry state and dead letters (never the secret)."""
    return {"webhooks": [h.to_json() for h in wh.list_webhooks(store)]}


@router.post(
    "/webhooks", status_code=201, response_model=WebhookCreated, **role("admin", errors=(404,))
)
def webhook_create(body: WebhookCreate, store: StoreDep, who: CurrentUser) -> dict[str, Any]:
    """Register a webhook; the answer holds its signing secret, shown only this once."""
    hook, secret = wh.add_webhook(
        store,
        body.url,
        personas=body.personas,
        from_start=body.from_start,
        actor=who.user.username,
        source="api",
    )
    return hook.to_json() | {"secret": secret}


@router.get("/webhooks/dead-letters", response_model=DeadLetterList, **role("admin", errors=(404,)))
def dead_letters_list(
    store: StoreDep,
    webhook: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> dict[str, Any]:
    """Batches given up on (of one webhook, or all), oldest first."""
    return {"dead_letters": [d.to_json() for d in wh.list_dead_letters(store, webhook)]}


@router.post(
    "/webhooks/dead-letters/{dead_letter_id:int}/redeliver",
    response_model=DeadLetterPublic,
    **role(
        "admin",
        responses={502: {"model": ErrorResponse, "description": "the receiver refused it"}},
    ),
)
def dead_letter_redeliver(
    dead_letter_id: DeadLetterId, store: StoreDep, settings: SettingsDep, who: CurrentUser
) -> dict[str, Any]:
    """Send a dead letter again, once, now; 502 with the reason if it fails."""
    try:
        return redeliver(store, settings, dead_letter_id, actor=who.user.username, source="api")
    except DeliveryError as exc:
        raise ApiError(502, "delivery_failed", str(exc)) from None


@router.delete("/webhooks/{webhook_id:int}", status_code=204, **role("admin"))
def webhook_delete(webhook_id: WebhookId, store: StoreDep, who: CurrentUser) -> Response:
    """Delete a webhook and its dead letters."""
    wh.remove_webhook(store, webhook_id, actor=who.user.username, source="api")
    return Response(status_code=204)


@router.post("/webhooks/{webhook_id:int}/disable", response_model=WebhookPublic, **role("admin"))
def webhook_disable(webhook_id: WebhookId, store: StoreDep, who: CurrentUser) -> dict[str, Any]:
    """Stop delivering (the cursor is kept; idempotent)."""
    return wh.set_enabled(store, webhook_id, False, actor=who.user.username, source="api").to_json()


@router.post("/webhooks/{webhook_id:int}/enable", response_model=WebhookPublic, **role("admin"))
def webhook_enable(webhook_id: WebhookId, store: StoreDep, who: CurrentUser) -> dict[str, Any]:
    """Deliver again from the cursor, at once (idempotent)."""
    return wh.set_enabled(store, webhook_id, True, actor=who.user.username, source="api").to_json()
