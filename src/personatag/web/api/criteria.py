"""/criteria (list, show, validate, preview: viewer; create, edit: editor)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from personatag.audit_log import record_now
from personatag.criteria import CriteriaError, compile_criterion
from personatag.domain import parse_timestamp
from personatag.pipeline.preview import preview
from personatag.store import Store
from personatag.store.definitions import (
    add_criterion,
    criterion_versions,
    edit_criterion,
    get_criterion,
    list_criteria,
)
from personatag.web.api.deps import StoreDep
from personatag.web.api.personas import criterion_public
from personatag.web.auth import CurrentUser, Principal, role
from personatag.web.errors import ApiError
from personatag.web.schemas import (
    CriterionCreate,
    CriterionPublic,
    CriterionUpdate,
    CriterionVersions,
    PreviewRequest,
    PreviewResponse,
    ValidateRequest,
    ValidateResponse,
)

router = APIRouter(tags=["criteria"])


class CriterionList(BaseModel):
    criteria: list[CriterionPublic]


@router.get("/criteria", response_model=CriterionList, **role("viewer"))
def criteria_list(store: StoreDep) -> dict[str, Any]:
    """The newest version of every criterion."""
    with store.read() as conn:
        return {"criteria": [criterion_public(c) for c in list_criteria(conn, store)]}


@router.get("/criteria/{name}", response_model=CriterionVersions, **role("viewer"))
def criterion_show(name: str, store: StoreDep) -> dict[str, Any]:
    """Every version of one criterion, oldest first."""
    with store.read() as conn:
        versions = criterion_versions(conn, store, name)
    return {"name": name, "versions": [criterion_public(c) for c in versions]}


@router.post("/criteria", status_code=201, response_model=CriterionPublic, **role("editor"))
def criterion_create(body: CriterionCreate, store: StoreDep, who: CurrentUser) -> Any:
    """Create a criterion at version 1 (the expression is checked against the schema)."""
    c = add_criterion(
        store,
        body.name,
        persona=body.persona,
        expr=body.expr,
        action=body.action,
        mode=body.mode,
        exit_policy=body.exit,
        actor=who.user.username,
    )
    _audit(store, who, "criterion.add", c.name, {"version": c.version, "expr": c.expr})
    return criterion_public(c)


@router.put("/criteria/{name}", response_model=CriterionPublic, **role("editor"))
def criterion_edit(name: str, body: CriterionUpdate, store: StoreDep, who: CurrentUser) -> Any:
    """Save a new version; omitted fields are kept; old versions stay."""
    c = edit_criterion(
        store,
        name,
        persona=body.persona,
        expr=body.expr,
        action=body.action,
        mode=body.mode,
        exit_policy=body.exit,
        actor=who.user.username,
    )
    _audit(store, who, "criterion.edit", c.name, {"version": c.version, "expr": c.expr})
    return criterion_public(c)


def _audit(store: Store, who: Principal, action: str, target: str, detail: dict[str, Any]) -> None:
    record_now(
        store, actor=who.user.username, action=action, target=target, detail=detail, source="api"
    )


def _lifecycle(name: str, action: str, store: Store, who: Principal) -> Any:
    from personatag.store.definitions import set_ongoing_status

    c = set_ongoing_status(store, name, action, actor=who.user.username, source="api")
    return criterion_public(c)


@router.post("/criteria/{name}/pause", response_model=CriterionPublic, **role("editor"))
def criterion_pause(name: str, store: StoreDep, who: CurrentUser) -> Any:
    """Pause an ongoing criterion: the stream skips it; its memberships stay."""
    return _lifecycle(name, "pause", store, who)


@router.post("/criteria/{name}/resume", response_model=CriterionPublic, **role("editor"))
def criterion_resume(name: str, store: StoreDep, who: CurrentUser) -> Any:
    """Resume a paused ongoing criterion: it is backfilled again and swapped in."""
    return _lifecycle(name, "resume", store, who)


@router.post("/criteria/{name}/retire", response_model=CriterionPublic, **role("editor"))
def criterion_retire(name: str, store: StoreDep, who: CurrentUser) -> Any:
    """Retire an ongoing criterion: its memberships are removed (exits logged)."""
    return _lifecycle(name, "retire", store, who)


@router.post("/criteria/validate", response_model=ValidateResponse, **role("viewer"))
def criterion_validate(body: ValidateRequest, store: StoreDep) -> dict[str, Any]:
    """Check an expression against the contact schema; nothing is stored.

    An invalid expression is a 200 with `ok: false` and the positioned error.
    """
    try:
        compiled = compile_criterion(body.expr, store.catalog())
    except CriteriaError as exc:
        return {"ok": False, "error": {"line": exc.line, "col": exc.col, "message": exc.message}}
    return {"ok": True, "expr": compiled.text}


@router.post("/preview", response_model=PreviewResponse, **role("viewer"))
def preview_run(body: PreviewRequest, store: StoreDep) -> Any:
    """Whom an expression (or a stored criterion's newest version) catches now, with a
    sample and how many would enter or leave the persona; nothing is written."""
    expr, persona = body.expr, body.persona
    if body.criterion is not None:
        with store.read() as conn:
            c = get_criterion(conn, store, body.criterion)
        expr, persona = c.expr, persona or c.persona_key
    as_of = None
    if body.as_of is not None:
        try:
            as_of = parse_timestamp(body.as_of)
        except (ValueError, OverflowError):
            raise ApiError(
                422,
                "invalid_input",
                f"invalid as_of {body.as_of!r}: use ISO-8601, e.g. 2026-06-30T12:00:00Z",
                field="as_of",
            ) from None
    assert expr is not None  # noqa: S101 - PreviewRequest requires expr or criterion
    return preview(store, expr, persona=persona, as_of=as_of, sample_size=body.sample)
