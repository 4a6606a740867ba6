"""The reading feed: one contact's feed, by the served ranking or a baseline
(viewer); persona content rules (list: viewer; add, remove: editor); offline
evaluations against the baselines (list, get: viewer; start, cancel: editor). See
docs/feed.md."""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.concurrency import run_in_threadpool

from personatag.definitions.personas import get_persona
from personatag.errors import InputError
from personatag.recommend.baselines import RANKER_KEYS
from personatag.recommend.rules import add_rule, list_rules, remove_rule
from personatag.recommend.runs import MAX_CONTACTS as MAX_EVAL_CONTACTS
from personatag.recommend.runs import MAX_REPORTS as MAX_EVAL_REPORTS
from personatag.recommend.runs import RunParams, cancel_run, get_run, list_runs, start_run
from personatag.recommend.service import MAX_K, check_feed_as_of, feed_for
from personatag.web.api.deps import SettingsDep, StoreDep
from personatag.web.auth import CurrentUser, role
from personatag.web.errors import ApiError
from personatag.web.schemas import Time

router = APIRouter(tags=["feed"])


class FeedItemRule(BaseModel):
    id: int
    persona: str
    kind: str = Field(description="boost (weight), filter (passed) or pin")
    expr: str | None
    weight: float | None


class FeedItem(BaseModel):
    id: str
    title: str | None
    score: float
    reason: str
    series: str | None
    sector: str | None
    published_at: str | None
    rules: list[FeedItemRule] = Field(
        default_factory=list,
        description="the feed rules of the contact's personas that moved it (served ranking)",
    )


class FeedView(BaseModel):
    contact: str
    as_of: str = Field(description="the time the feed is for (the serving model's when not given)")
    items: list[FeedItem]
    ranker: str | None = Field(
        None, description="the baseline asked for (absent for the served ranking)"
    )


class FeedRuleCreate(BaseModel):
    """One rule: boost (expr, weight), filter (expr), pin (publication, expires_at) or cap (cap)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["boost", "filter", "pin", "cap"]
    expr: str | None = Field(None, max_length=10_000, description="over publication fields")
    weight: float | None = Field(None, description="boost only; negative demotes")
    publication: str | None = Field(None, max_length=1000, description="pin only: its id")
    expires_at: Time | None = Field(None, description="pin only; none: until removed")
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


@router.get(
    "/contacts/{contact_id}/feed",
    response_model=FeedView,
    response_model_exclude_unset=True,  # "ranker" only when a baseline was asked for
    **role("viewer"),
)
async def contact_feed(
    contact_id: str,
    store: StoreDep,
    settings: SettingsDep,
    k: Annotated[int, Query(ge=1, le=MAX_K, description="how many reports")] = 10,
    as_of: Annotated[
        Time | None, Query(description="ISO-8601; default now (must not be in the future)")
    ] = None,
    ranker: Annotated[
        str,
        Query(
            json_schema_extra={"enum": list(RANKER_KEYS)},
            description="`ours` (default) or a baseline to compare with: `b0` editions, `b1` "
            "popular, `b2` persona popular, `b3` your coverage, `b4` item-kNN (no content rules)",
        ),
    ] = "ours",
) -> Any:
    """Unread reports published before as_of, best first, each with a short reason."""
    if ranker not in RANKER_KEYS:
        raise ApiError(
            422,
            "validation_error",
            f"ranker: unknown ranker {ranker!r}: use one of {', '.join(RANKER_KEYS)}",
            field="ranker",
        )
    if as_of is not None and as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    try:
        as_of = check_feed_as_of(as_of)
    except InputError as exc:
        raise ApiError(422, "validation_error", f"as_of: {exc}", field="as_of") from None
    return await run_in_threadpool(feed_for, store, contact_id, k, as_of, settings, ranker)


@router.get("/personas/{key}/feed-rules", response_model=FeedRuleList, **role("viewer"))
def feed_rules_list(key: str, store: StoreDep) -> Any:
    """The persona's content rules, oldest first (expired pins included)."""
    return {"rules": [r.to_json() for r in list_rules(store, key)]}


@router.post(
    "/personas/{key}/feed-rules",
    response_model=FeedRulePublic,
    status_code=201,
    **role("editor", errors=(409,)),
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


RuleId = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.delete(
    "/personas/{key}/feed-rules/{rule_id:int}", response_model=FeedRulePublic, **role("editor")
)
def feed_rules_remove(key: str, rule_id: RuleId, store: StoreDep, who: CurrentUser) -> Any:
    """Delete one of the persona's rules; feeds follow on the next request."""
    with store.read() as conn:
        get_persona(conn, store, key)
    return remove_rule(store, rule_id, persona=key, actor=who.user.username, source="api").to_json()


class FeedEvaluationCreate(BaseModel):
    """An offline evaluation of the feed against baselines B0-B4 (see docs/feed.md)."""

    model_config = ConfigDict(extra="forbid")
    contacts: StrictInt = Field(20_000, ge=1, le=MAX_EVAL_CONTACTS, description="to generate")
    reports: StrictInt | None = Field(
        None, ge=1, le=MAX_EVAL_REPORTS, description="over the year; none: the generator's"
    )
    weeks: StrictInt = Field(8, ge=1, le=26, description="weekly splits (test weeks)")
    persona_share: float = Field(
        0.5, ge=0.0, le=1.0, description="how much of a reader's interests personas explain"
    )
    seed: StrictInt = Field(0, ge=0)
    samples: StrictInt = Field(1000, ge=10, le=10_000, description="bootstrap resamples")


class FeedEvaluation(BaseModel):
    id: str
    status: Literal["running", "succeeded", "failed", "cancelled"]
    params: dict[str, Any]
    created_by: str | None
    started_at: str
    finished_at: str | None
    summary: dict[str, Any] | None = Field(
        None, description="what `personatag evaluate-feed --json` prints, once succeeded"
    )
    error: str | None


class FeedEvaluationList(BaseModel):
    evaluations: list[FeedEvaluation]


@router.post(
    "/feed/evaluations",
    response_model=FeedEvaluation,
    status_code=202,
    **role("editor", errors=(409,)),
)
def feed_evaluation_start(
    body: FeedEvaluationCreate, settings: SettingsDep, who: CurrentUser
) -> Any:
    """Start an evaluation in its own process (409 while another runs); poll its URL."""
    params = RunParams(**body.model_dump())
    return start_run(settings, params, who.user.username)


@router.get("/feed/evaluations", response_model=FeedEvaluationList, **role("viewer"))
def feed_evaluation_list(settings: SettingsDep) -> Any:
    """Every evaluation started here, newest first."""
    return {"evaluations": list_runs(settings)}


@router.get("/feed/evaluations/{run_id}", response_model=FeedEvaluation, **role("viewer"))
def feed_evaluation_get(run_id: str, settings: SettingsDep) -> Any:
    """One evaluation: its status, and once it succeeded the results (HR@10 etc.)."""
    return get_run(settings, run_id)


@router.post(
    "/feed/evaluations/{run_id}/cancel",
    response_model=FeedEvaluation,
    **role("editor", errors=(409,)),
)
def feed_evaluation_cancel(run_id: str, settings: SettingsDep, who: CurrentUser) -> Any:
    """Stop a running evaluation (409 if it is not running)."""
    return cancel_run(settings, run_id, who.user.username)
