"""The reading feed: one contact's feed (viewer); persona content rules (list:
viewer; add, remove: editor). See docs/feed.md."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from personatag.errors import InputError
from personatag.feed.rules import add_rule, list_rules, remove_rule
from personatag.feed.service import MAX_K, check_feed_as_of, feed_for
from personatag.store.personas import get_persona
from personatag.web.api.deps import SettingsDep, StoreDep
from personatag.web.auth import CurrentUser, role
from personatag.web.errors import ApiError

router = APIRouter(tags=["feed"])


class FeedItem(BaseModel):
    id: str
    title: str | None
    score: float
    reason: str
    series: str | None
    sector: str | None
    published_at: str | None


class FeedView(BaseModel):
    contact: str
    as_of: str = Field(description="the time the feed is for (the serving model's when not given)")
    items: list[FeedItem]


class FeedRuleCreate(BaseModel):
    """One rule: boost (expr, weight), filter (expr), pin (publication, expires_at) or cap (cap)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["boost", "filter", "pin", "cap"]
    expr: str | None = Field(None, max_length=10_000, description="over publication fields")
    weight: float | None = Field(None, description="boost only; negative demotes")
    publication: str | None = Field(None, max_length=1000, description="pin only: its id")
    expires_at: datetime | None = Field(None, description="pin only; none: until removed")
    cap: int | None = Field(None, ge=1, le=1000, description="cap only: reports per series")


class FeedRulePublic(BaseModel):
    id: int
    persona: str
    kind: str
    expr: str | None
    weight: float | None
    publication: str | None
    expires_at: str | None
    cap: int | None
    created_at: str
    created_by: str | None


class FeedRuleList(BaseModel):
    rules: list[FeedRulePublic]


@router.get("/contacts/{contact_id}/feed", response_model=FeedView, **role("viewer"))
async def contact_feed(
    contact_id: str,
    store: StoreDep,
    settings: SettingsDep,
    k: Annotated[int, Query(ge=1, le=MAX_K, description="how many reports")] = 10,
    as_of: Annotated[
        datetime | None, Query(description="ISO-8601; default now (must not be in the future)")
    ] = None,
) -> Any:
    """Unread reports published before as_of, best first, each with a short reason."""
    if as_of is not None and as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    try:
        as_of = check_feed_as_of(as_of)
    except InputError as exc:
        raise ApiError(422, "validation_error", f"as_of: {exc}", field="as_of") from None
    return await run_in_threadpool(feed_for, store, contact_id, k, as_of, settings)


@router.get("/personas/{key}/feed-rules", response_model=FeedRuleList, **role("viewer"))
def feed_rules_list(key: str, store: StoreDep) -> Any:
    """The persona's content rules, oldest first (expired pins included)."""
    return {"rules": [r.to_json() for r in list_rules(store, key)]}


@router.post(
    "/personas/{key}/feed-rules", response_model=FeedRulePublic, status_code=201, **role("editor")
)
def feed_rules_add(key: str, body: FeedRuleCreate, store: StoreDep, who: CurrentUser) -> Any:
    """Add a rule; the expression is checked (422 with line and col); applies on the next feed."""
    with store.read() as conn:
        get_persona(conn, store, key)  # an unknown persona is a 404 before the body is judged
    expires_at = body.expires_at
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    rule = add_rule(
        store,
        key,
        body.kind,
        expr=body.expr,
        weight=body.weight,
        publication=body.publication,
        expires_at=expires_at,
        cap=body.cap,
        actor=who.user.username,
        source="api",
    )
    return rule.to_json()


@router.delete(
    "/personas/{key}/feed-rules/{rule_id}", response_model=FeedRulePublic, **role("editor")
)
def feed_rules_remove(key: str, rule_id: int, store: StoreDep, who: CurrentUser) -> Any:
    """Delete one of the persona's rules; feeds follow on the next request."""
    with store.read() as conn:
        get_persona(conn, store, key)
    return remove_rule(store, rule_id, persona=key, actor=who.user.username, source="api").to_json()
