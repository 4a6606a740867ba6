"""/criteria (list, show, validate, render, preview: viewer; create, edit: editor)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from personatag.audit_log import record_now
from personatag.criteria import JSON_VERSION, CriteriaError, compile_criterion
from personatag.definitions.criteria import (
    add_criterion,
    criterion_versions,
    edit_criterion,
    get_criterion,
    list_criteria,
)
from personatag.domain import parse_timestamp
from personatag.store import Store
from personatag.tagging import versions as vs
from personatag.tagging.preview import preview
from personatag.web.api.deps import SettingsDep, StoreDep
from personatag.web.api.personas import criterion_public
from personatag.web.auth import CurrentUser, Principal, role
from personatag.web.errors import ApiError
from personatag.web.schemas import (
    MAX_EXPR_CHARS,
    CriterionCreate,
    CriterionDiff,
    CriterionDraft,
    CriterionHistory,
    CriterionProgress,
    CriterionPublic,
    CriterionUpdate,
    CriterionVersions,
    PreviewRequest,
    PreviewResponse,
    RenderRequest,
    RenderResponse,
    ValidateRequest,
    ValidateResponse,
)

router = APIRouter(tags=["criteria"])

# How many nodes deep an `ast` in an answer may nest: far more than a person writes,
# and well inside the depth the JSON encoder of the answers allows.
MAX_AST_DEPTH = 100


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


@router.post(
    "/criteria",
    status_code=201,
    response_model=CriterionPublic,
    **role("editor", errors=(404, 409)),
)
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


@router.put("/criteria/{name}", response_model=CriterionPublic, **role("editor", errors=(409,)))
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


@router.get(
    "/criteria/{name}/versions", response_model=CriterionHistory, **role("viewer", errors=(404,))
)
def criterion_history(name: str, store: StoreDep) -> dict[str, Any]:
    """Every version, oldest first, with its text, who made it and when, its state
    (`backfilling` for a building version the stream has started on) and its
    lifecycle events (added, edited, paused, resumed, retired, backfill, swap)."""
    return {
        "name": name,
        "versions": [
            {
                **criterion_public(h["criterion"]).model_dump(),
                "state": h["state"],
                "events": h["events"],
            }
            for h in vs.history(store, name)
        ],
    }


@router.get(
    "/criteria/{name}/progress", response_model=CriterionProgress, **role("viewer", errors=(404,))
)
def criterion_progress(name: str, store: StoreDep) -> dict[str, Any]:
    """Where the newest version is: its state and since when; while building, what
    the stream builds first, its lag and a backfill error; the swap once done."""
    return vs.progress(store, name)


@router.get("/criteria/{name}/diff", response_model=CriterionDiff, **role("viewer", errors=(404,)))
def criterion_diff(
    name: str,
    store: StoreDep,
    old: Annotated[int | None, Query(alias="from", ge=1, le=2**31 - 1)] = None,
    new: Annotated[int | None, Query(alias="to", ge=1, le=2**31 - 1)] = None,
    sample: Annotated[int, Query(ge=0, le=100)] = 10,
) -> dict[str, Any]:
    """Two stored versions compared: the text token by token, and membership now
    (whom each catches, who only one catches, and what `to` would move as the
    preview counts it). Defaults: `to` the newest version, `from` the one before."""
    with store.read() as conn:
        found = criterion_versions(conn, store, name)
    by_version = {c.version: c for c in found}
    new = found[-1].version if new is None else new
    old = max(new - 1, 1) if old is None else old
    for which, v in (("to", new), ("from", old)):
        if v not in by_version:
            have = ", ".join(str(c.version) for c in found)
            raise ApiError(
                404,
                "not_found",
                f"criterion {name!r} has no version {v} (it has {have})",
                field=which,
            )
    return _diff(store, name, vs.Side.of(by_version[old]), vs.Side.of(by_version[new]), sample)


@router.post("/criteria/{name}/diff", response_model=CriterionDiff, **role("viewer", errors=(404,)))
def criterion_diff_draft(name: str, body: CriterionDraft, store: StoreDep) -> dict[str, Any]:
    """An unsaved edit compared with a stored version (`from`, default the newest),
    as `GET .../diff` compares two stored ones; nothing is stored. Omitted fields
    are the stored version's, as `PUT /criteria/{name}` would keep them."""
    with store.read() as conn:
        base = get_criterion(conn, store, name, body.from_)
    if body.mode == "ongoing" and (body.action or base.action.value) != "tag":
        raise ApiError(
            422, "invalid_input", "an ongoing criterion tags: use action tag", field="action"
        )
    draft = vs.Side(
        persona=body.persona or base.persona_key,
        expr=body.expr if body.expr is not None else base.expr,
        action=body.action or base.action.value,
        mode=body.mode or base.mode.value,
        exit_policy=body.exit or base.exit_policy.value,
    )
    return _diff(store, name, vs.Side.of(base), draft, body.sample)


def _diff(store: Store, name: str, old: vs.Side, new: vs.Side, sample: int) -> dict[str, Any]:
    def side(s: vs.Side) -> dict[str, Any]:
        return {
            "version": s.version,
            "persona": s.persona,
            "expr": s.expr,
            "action": s.action,
            "mode": s.mode,
            "exit": s.exit_policy,
        }

    # The draft's text as it would be stored (canonical), so the text diff shows
    # only what the person changed, not spacing the store would drop anyway.
    if new.version is None:
        new = replace(new, expr=compile_criterion(new.expr, store.catalog()).text)
    return {
        "name": name,
        "old": side(old),
        "new": side(new),
        "text": vs.text_diff(old.expr, new.expr),
        "membership": vs.membership_diff(store, old, new, sample_size=sample),
    }


def _audit(store: Store, who: Principal, action: str, target: str, detail: dict[str, Any]) -> None:
    record_now(
        store, actor=who.user.username, action=action, target=target, detail=detail, source="api"
    )


def _lifecycle(name: str, action: str, store: Store, who: Principal) -> Any:
    from personatag.memberships.retire import set_ongoing_status

    c = set_ongoing_status(store, name, action, actor=who.user.username, source="api")
    return criterion_public(c)


@router.post(
    "/criteria/{name}/pause", response_model=CriterionPublic, **role("editor", errors=(409,))
)
def criterion_pause(name: str, store: StoreDep, who: CurrentUser) -> Any:
    """Pause an ongoing criterion: the stream skips it; its memberships stay."""
    return _lifecycle(name, "pause", store, who)


@router.post(
    "/criteria/{name}/resume", response_model=CriterionPublic, **role("editor", errors=(409,))
)
def criterion_resume(name: str, store: StoreDep, who: CurrentUser) -> Any:
    """Resume a paused ongoing criterion: it is backfilled again and swapped in."""
    return _lifecycle(name, "resume", store, who)


@router.post(
    "/criteria/{name}/retire", response_model=CriterionPublic, **role("editor", errors=(409,))
)
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
    ast = compiled.json["expr"]
    return {"ok": True, "expr": compiled.text, "ast": ast if _depth(ast) <= MAX_AST_DEPTH else None}


@router.post("/criteria/render", response_model=RenderResponse, **role("viewer"))
def criterion_render(body: RenderRequest, store: StoreDep) -> dict[str, Any]:
    """Turn a criterion node (JSON form) into its canonical text, checked against the
    contact schema like text is; nothing is stored.

    An invalid node is a 200 with `ok: false` and the error's JSON path under `$.ast`.
    """
    if _depth(body.ast) > MAX_AST_DEPTH:
        message = f"the criterion nests more than {MAX_AST_DEPTH} levels deep: write it as text"
        return {"ok": False, "error": {"path": "$.ast", "message": message}}
    catalog = store.catalog()
    try:
        # The document check reports a JSON path; reading the text back makes sure
        # the answer is exactly what validate and the stored criterion will see.
        text = compile_criterion({"version": JSON_VERSION, "expr": body.ast}, catalog).text
    except CriteriaError as exc:
        path = "$.ast" + (exc.path or "$.expr").removeprefix("$.expr")
        return {"ok": False, "error": {"path": path, "message": exc.message}}
    if len(text) > MAX_EXPR_CHARS:
        message = f"the criterion text would be {len(text)} characters, over {MAX_EXPR_CHARS}"
        return {"ok": False, "error": {"path": "$.ast", "message": message}}
    try:
        compiled = compile_criterion(text, catalog)
    except CriteriaError as exc:  # pragma: no cover - to_text round-trips every valid node
        return {"ok": False, "error": {"path": "$.ast", "message": str(exc)}}
    return {"ok": True, "expr": compiled.text, "ast": compiled.json["expr"]}


def _depth(node: Any) -> int:
    """How many nodes deep a node in JSON form nests (any JSON is measured safely);
    stops counting past MAX_AST_DEPTH."""
    deepest, todo = 0, [(node, 1)]
    while todo and deepest <= MAX_AST_DEPTH:
        item, depth = todo.pop()
        if not isinstance(item, dict):
            continue
        deepest = max(deepest, depth)
        args = item.get("args")
        children = [item.get("arg"), item.get("where"), *(args if isinstance(args, list) else ())]
        todo += [(child, depth + 1) for child in children]
    return deepest


@router.post("/preview", response_model=PreviewResponse, **role("viewer", errors=(404, 409)))
def preview_run(body: PreviewRequest, store: StoreDep, settings: SettingsDep) -> Any:
    """Whom an expression (or a stored criterion's newest version) catches now, with a
    sample and how many would enter or leave the persona; nothing is written."""
    expr, persona = body.expr, body.persona
    action, mode, exit_policy = body.action or "tag", body.mode or "adhoc", body.exit or "keep"
    if body.criterion is not None:
        with store.read() as conn:
            c = get_criterion(conn, store, body.criterion)
        expr, persona = c.expr, persona or c.persona_key
        action = body.action or c.action.value
        mode = body.mode or c.mode.value
        exit_policy = body.exit or c.exit_policy.value
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
    return preview(
        store,
        expr,
        persona=persona,
        as_of=as_of,
        sample_size=body.sample,
        action=action,
        mode=mode,
        exit_policy=exit_policy,
        engine=body.engine,
        settings=settings,
    )
