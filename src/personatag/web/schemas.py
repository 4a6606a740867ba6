"""Request and response bodies of the API: Create / Update / Public models, kept
apart from the storage dataclasses so a column can change without changing the API."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    model_validator,
)

from personatag.criteria.limits import MAX_TEXT_CHARS
from personatag.domain import JobStatus
from personatag.jobs.views import JobPublic, RequestInfo
from personatag.schemas import KEY_PATTERN, REQUEST_ID_PATTERN

Name = Annotated[str, Field(min_length=1, max_length=100)]

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _iso_time(value: Any) -> Any:
    # pydantic would read a number (or a string of one) as Unix seconds: a
    # `until=5` meant as a sequence number would silently mean 1970.
    if isinstance(value, int | float) or (
        isinstance(value, str) and _NUMBER.fullmatch(value.strip())
    ):
        raise ValueError("use an ISO-8601 date-time such as 2026-01-31T09:00:00Z, not a number")
    return value


# Constraints the OpenAPI document states while the handlers keep their own,
# more helpful, messages for a value that breaks them.
JOB_STATUS_DOC: dict[str, Any] = {"enum": [s.value for s in JobStatus]}
REQUEST_ID_DOC: dict[str, Any] = {"pattern": REQUEST_ID_PATTERN}
KEY_DOC: dict[str, Any] = {"pattern": KEY_PATTERN}


# A date-time given as ISO-8601 text (no offset: UTC); numbers are refused.
Time = Annotated[datetime, BeforeValidator(_iso_time)]
MAX_EXPR_CHARS = MAX_TEXT_CHARS  # criterion text: the parser's own limit
Text = Annotated[str, Field(max_length=MAX_EXPR_CHARS)]


class Input(BaseModel):
    """A request body: unknown fields are errors (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid")


# -- errors ------------------------------------------------------------------


class ErrorDetail(BaseModel):
    status: int
    code: str
    message: str
    field: str | None = None
    line: int | None = None
    col: int | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# -- accounts ----------------------------------------------------------------

Role = Literal["viewer", "editor", "admin"]


class LoginRequest(Input):
    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=2048)


class UserPublic(BaseModel):
    username: str
    role: str
    created_at: datetime
    disabled: bool
    last_login_at: datetime | None = None


class PasswordReset(BaseModel):
    user: UserPublic
    password: str


class LoginResponse(BaseModel):
    csrf_token: str
    user: UserPublic


class Me(UserPublic):
    via: Literal["token", "session"]


class UserCreate(Input):
    username: str = Field(
        min_length=1, max_length=64, json_schema_extra={"pattern": "^[A-Za-z0-9._-]{1,64}$"}
    )
    password: str = Field(
        min_length=1,
        max_length=2048,
        description="12 to 1024 characters, at least two kinds of: lower-case, upper-case, "
        "digits, others",
        json_schema_extra={"minLength": 12, "maxLength": 1024},
    )
    role: Role = "viewer"


class RoleUpdate(Input):
    role: Role


class TokenCreate(Input):
    name: Name
    expires_days: StrictInt | None = Field(None, ge=1, le=3650)


class TokenPublic(BaseModel):
    id: int
    username: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked: bool


class TokenCreated(BaseModel):
    token: str = Field(description="shown once; only its hash is stored")
    info: TokenPublic


# -- personas and criteria ---------------------------------------------------


class PersonaCreate(Input):
    key: Name = Field(json_schema_extra=KEY_DOC)
    name: str = Field(min_length=1, max_length=200)
    category: str = Field(min_length=1, max_length=100)
    description: str | None = Field(None, max_length=2000)


class PersonaUpdate(Input):
    """Omitted fields are kept; `description: null` (or blank) clears it."""

    name: str | None = Field(None, min_length=1, max_length=200)
    category: str | None = Field(None, min_length=1, max_length=100)
    description: str | None = Field(None, max_length=2000)


class PersonaPublic(BaseModel):
    key: str
    name: str
    category: str
    description: str | None
    members: int
    created_at: datetime
    created_by: str | None
    archived_at: datetime | None


class CriterionPublic(BaseModel):
    name: str
    version: int
    persona: str
    expr: str
    action: str
    mode: str
    exit: str
    status: str
    created_at: datetime
    created_by: str | None


class PersonaDetail(PersonaPublic):
    criteria: list[CriterionPublic]


class SizeHistory(BaseModel):
    days: list[str] = Field(description="UTC days, oldest first (YYYY-MM-DD)")
    size: list[int] = Field(description="contacts holding the persona at the end of each day")
    entered: list[int] = Field(description="contacts that entered during each day")
    exited: list[int] = Field(description="contacts that exited during each day")


class PersonaSize(BaseModel):
    key: str
    name: str
    size: int = Field(description="contacts holding the persona now")


class PersonaPair(BaseModel):
    a: str
    b: str
    both: int = Field(description="contacts holding a and b")
    a_not_b: int = Field(description="contacts holding a but not b")
    b_not_a: int = Field(description="contacts holding b but not a")
    either: int = Field(description="contacts holding a or b")
    jaccard: float = Field(description="both / either (0 when both are empty)")


class PersonaStatsHistory(BaseModel):
    days: list[str] = Field(description="UTC days, oldest first (YYYY-MM-DD)")
    size: dict[str, list[int]] = Field(description="per key: the size at the end of each day")
    entered: dict[str, list[int]] = Field(description="per key: contacts that entered each day")
    exited: dict[str, list[int]] = Field(description="per key: contacts that exited each day")


class PersonaStats(BaseModel):
    personas: list[PersonaSize]
    all: int = Field(description="contacts holding every persona given")
    any: int = Field(description="contacts holding at least one of them")
    pairs: list[PersonaPair] = Field(description="every pair, in the order given")
    matrix: list[list[int]] = Field(
        description="pairwise intersection sizes in the order given; sizes on the diagonal"
    )
    history: PersonaStatsHistory | None = Field(description="with days > 0, else null")
    log_seq: int = Field(description="the membership-log seq the answer reflects")
    took_ms: float = Field(description="time spent on the figures after catching up")


class MembersPage(BaseModel):
    members: list[str]
    next_after: str | None = Field(description="pass as `after` for the next page; null: done")


class CriterionCreate(Input):
    name: Name = Field(json_schema_extra=KEY_DOC)
    persona: Name = Field(json_schema_extra=KEY_DOC)
    expr: Text
    action: Literal["tag", "untag"] = "tag"
    mode: Literal["adhoc", "ongoing"] = "adhoc"
    exit: Literal["keep", "remove"] = "keep"


class CriterionUpdate(Input):
    """A new version; omitted fields are kept from the newest version."""

    persona: Name | None = None
    expr: Text | None = None
    action: Literal["tag", "untag"] | None = None
    mode: Literal["adhoc", "ongoing"] | None = None
    exit: Literal["keep", "remove"] | None = None


class CriterionVersions(BaseModel):
    name: str
    versions: list[CriterionPublic]


class CriterionEvent(BaseModel):
    at: str
    action: str = Field(description="add, edit, pause, resume, retire, backfill, swap")
    actor: str | None
    source: str
    detail: dict[str, Any] | None


class CriterionVersion(CriterionPublic):
    state: str = Field(
        description="the status, except `backfilling` for a building version whose "
        "backfill the stream has started"
    )
    events: list[CriterionEvent]


class CriterionHistory(BaseModel):
    name: str
    versions: list[CriterionVersion] = Field(description="oldest first")


class DiffSide(BaseModel):
    version: int | None = Field(description="null for a draft")
    persona: str
    expr: str
    action: str
    mode: str
    exit: str


class DiffText(BaseModel):
    op: Literal["same", "del", "add"]
    text: str


class DiffPart(BaseModel):
    count: int
    sample: list[str] = Field(description="contact ids")


class DiffMembership(BaseModel):
    old_count: int = Field(description="contacts the older side matches now")
    new_count: int = Field(description="contacts the newer side matches now")
    gained: DiffPart = Field(description="matched by the newer side only")
    lost: DiffPart = Field(description="matched by the older side only")
    would_enter: int | None = Field(
        description="as the preview counts it; null where the action adds nobody (untag)"
    )
    would_exit: int | None = Field(
        description="as the preview counts it; null where the action cannot remove anyone "
        "(tag ad hoc, ongoing with exit keep)"
    )


class CriterionDiff(BaseModel):
    name: str
    old: DiffSide
    new: DiffSide
    text: list[DiffText] = Field(description="token by token: same, del (old only), add")
    membership: DiffMembership


class CriterionDraft(Input):
    """An unsaved version, compared with a stored one (`from`: default the newest).
    Omitted fields are taken from that version, as an edit would."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: StrictInt | None = Field(None, alias="from", ge=1)
    persona: Name | None = Field(None, json_schema_extra=KEY_DOC)
    expr: Text | None = None
    action: Literal["tag", "untag"] | None = None
    mode: Literal["adhoc", "ongoing"] | None = None
    exit: Literal["keep", "remove"] | None = None
    sample: StrictInt = Field(10, ge=0, le=100)


class CriterionProgress(BaseModel):
    name: str
    version: int = Field(description="the newest version")
    mode: str
    status: str
    state: str = Field(description="active, building, backfilling, paused, retired, superseded")
    since: datetime | str = Field(description="when it reached this state")
    building: bool = Field(description="on its way in: building or backfilling")
    swap: dict[str, Any] | None = Field(
        description="the newest version's swap: at, replaces, members, entered, exited"
    )
    ahead: list[str] = Field(description="versions the stream builds first (one at a time)")
    error: str | None = Field(description="the newest backfill error of this version")
    stream: dict[str, Any] | None = Field(
        description="while building: the stream's lag_changes, lag_seconds, updated_at"
    )


class ValidateRequest(Input):
    expr: Text


class CriteriaProblem(BaseModel):
    line: int | None
    col: int | None
    message: str


AST_DESCRIPTION = (
    'a criterion node in the JSON form: the "expr" of {"version": 1, "expr": ...} '
    "(see docs/criteria.md#json-form)"
)


class ValidateResponse(BaseModel):
    ok: bool
    expr: str | None = Field(None, description="the canonical text, when ok")
    ast: dict[str, Any] | None = Field(None, description=AST_DESCRIPTION + ", when ok")
    error: CriteriaProblem | None = None


class RenderRequest(Input):
    ast: dict[str, Any] = Field(description=AST_DESCRIPTION)


class AstProblem(BaseModel):
    path: str = Field(description="where in the request, e.g. $.ast.args[1].value")
    message: str


class RenderResponse(BaseModel):
    ok: bool
    expr: str | None = Field(None, description="the canonical text, when ok")
    ast: dict[str, Any] | None = Field(
        None, description="the node as the canonical text reads back, when ok"
    )
    error: AstProblem | None = None


class PreviewRequest(Input):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": ["expr"], "properties": {"expr": {"type": "string"}}},
                {"required": ["criterion"], "properties": {"criterion": {"type": "string"}}},
            ]
        },
    )
    persona: Name | None = None
    expr: Text | None = None
    criterion: Name | None = None
    as_of: str | None = Field(
        None,
        max_length=64,
        description="ISO-8601 (default: now)",
        json_schema_extra={"format": "date-time"},
    )
    sample: StrictInt = Field(10, ge=0, le=1000)
    action: Literal["tag", "untag"] | None = Field(
        None, description="what would be applied (default: the criterion's, else tag)"
    )
    mode: Literal["adhoc", "ongoing"] | None = Field(
        None, description="default: the criterion's, else adhoc"
    )
    exit: Literal["keep", "remove"] | None = Field(
        None,
        description="an ongoing criterion's exit policy (default: the criterion's, else keep)",
    )
    engine: Literal["columnar", "local"] | None = Field(
        None,
        description="columnar (numpy over the columnar copy) or local (SQL in the store); "
        "default: the server's batch_engine setting. Both give the same answer.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> PreviewRequest:
        if (self.expr is None) == (self.criterion is None):
            raise ValueError('give exactly one of "expr" or "criterion"')
        return self


class PreviewResponse(BaseModel):
    count: int
    sample: list[str]
    would_enter: int | None = Field(
        description="who would gain the persona; null for an untag (it adds nobody)"
    )
    would_exit: int | None = Field(
        description="who would lose the persona; null when the action removes nobody "
        "(a tag, unless ongoing with exit remove)"
    )
    count_ignoring_case: int | None = Field(
        None,
        description="when nothing matches: how many would match with string = and in "
        "ignoring case; else null",
    )
    hint: str | None = Field(None, description="a sentence on count_ignoring_case; else null")
    suggestion: str | None = Field(
        None, description="when count_ignoring_case > 0: the criterion with those compares as ilike"
    )


# -- requests and jobs -------------------------------------------------------


class Submitted(BaseModel):
    request_id: str
    key: str = Field(description="the request file's key in the requests bucket")
    summary: dict[str, Any] | None = Field(
        None, description="with ?wait=true: the summary.json that reports the request"
    )
    error: str | None = Field(
        None,
        description="with ?wait=true: the request finished but its result files could not "
        "be written (a dispatcher writes them later); why",
    )


class RequestView(BaseModel):
    request_id: str
    status: str = Field(description="the job's status, or `submitted` before a dispatcher ran it")
    job: JobPublic | None
    summary: dict[str, Any] | None
    error: str | None = Field(
        None,
        description="the request finished but its result files could not be written yet "
        "(a dispatcher keeps trying): why",
    )
    request: RequestInfo | None = Field(
        None, description="what it asked for, who submitted it and how (once a dispatcher ran it)"
    )


class StatusView(BaseModel):
    queued: int
    running: int
    recent: list[JobPublic]
    finished_recent: int = Field(description="finished jobs among the last 100")
    failure_rate: float | None = Field(description="failed / finished among the last 100 jobs")


# -- contacts ----------------------------------------------------------------


class PinCreate(Input):
    persona: Name
    kind: Literal["in", "out"]
    reason: str | None = Field(None, max_length=2000)


class PinResult(BaseModel):
    persona: str
    contact: str
    pin: str | None
    holds: bool


class ContactHit(BaseModel):
    id: str
    name: str
    email: str | None
    firm: str | None
    region: str | None
    matched: str = Field(description="what the query matched: id, name, email or firm")
    personas: list[str]


class ContactSearch(BaseModel):
    query: str = Field(description="the query, trimmed")
    items: list[ContactHit]
    limit: int
    offset: int
    next_offset: int | None = Field(description="the next page's offset; null on the last page")


class ContactView(BaseModel):
    id: str
    attributes: dict[str, Any]
    personas: list[dict[str, Any]] = Field(description="with sources (how, since, who)")
    pins: list[dict[str, Any]]
    log: list[dict[str, Any]] = Field(description="membership history, newest first")


# -- deploy and audit --------------------------------------------------------


class DeployRequest(Input):
    properties: dict[str, Any] = Field(default_factory=dict)
    rollback: StrictBool = Field(False, description="make the previous version active again")


class AuditEvents(BaseModel):
    events: list[dict[str, Any]]


# -- contact updates and the stream ---------------------------------------------


class ContactUpdate(Input):
    fields: dict[Name, Any] = Field(
        description="field -> value: JSON values, or text read like a CSV cell; null clears",
        min_length=1,
    )
    create: StrictBool = Field(False, description="create the contact when the id is new")


class ContactUpdated(BaseModel):
    id: str
    created: bool
    changed: list[str]


class ReadEvent(Input):
    publication: Name
    at: Time | None = Field(None, description="default: now")


class ContactEvents(Input):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={  # something to add: reads, logins or both
            "anyOf": [
                {"required": ["reads"], "properties": {"reads": {"minItems": 1}}},
                {"required": ["logins"], "properties": {"logins": {"minItems": 1}}},
            ]
        },
    )
    reads: list[ReadEvent] = Field(default_factory=list, max_length=10_000)
    logins: list[Time | None] = Field(
        default_factory=list, max_length=10_000, description="login times (null: now)"
    )


class ContactEventsAdded(BaseModel):
    reads: int
    logins: int


class StreamStatus(BaseModel):
    offset: int
    head: int
    lag_changes: int
    lag_seconds: float
    updated_at: datetime | None
    # Each partition's offset when the stream runs in partitions (else empty).
    partitions: list[dict[str, Any]] = []
    rechecks: int
    next_recheck_at: datetime | None
    errors: int
    recent_errors: list[dict[str, Any]]
    criteria: list[dict[str, Any]]
    reconciliations: list[dict[str, Any]]
