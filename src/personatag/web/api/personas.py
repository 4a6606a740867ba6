"""/personas: list, show, members, members as CSV, size history, and
/persona-stats: sizes and overlaps from the persona sets (viewer);
create, edit, archive and restore (editor)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from personatag.audit_log import record_now
from personatag.definitions.archive import archive_persona
from personatag.definitions.criteria import Criterion, list_criteria
from personatag.definitions.personas import (
    KEEP,
    Persona,
    add_persona,
    edit_persona,
    get_persona,
    list_personas,
    member_count,
    restore_persona,
)
from personatag.engines.columnar.sets import current_sets
from personatag.engines.columnar.sets_stats import MAX_KEYS
from personatag.engines.columnar.sets_stats import persona_stats as compute_stats
from personatag.errors import InputError
from personatag.memberships import persona_view
from personatag.web.api.deps import SettingsDep, StoreDep
from personatag.web.auth import CurrentUser, role
from personatag.web.schemas import (
    CriterionPublic,
    MembersPage,
    PersonaCreate,
    PersonaDetail,
    PersonaPublic,
    PersonaStats,
    PersonaUpdate,
    SizeHistory,
)

router = APIRouter(tags=["personas"])


class PersonaList(BaseModel):
    personas: list[PersonaPublic]


def persona_public(p: Persona, members: int) -> dict[str, Any]:
    return {
        "key": p.key,
        "name": p.name,
        "category": p.category,
        "description": p.description,
        "members": members,
        "created_at": p.created_at,
        "created_by": p.created_by,
        "archived_at": p.archived_at,
    }


def criterion_public(c: Criterion) -> CriterionPublic:
    return CriterionPublic(
        name=c.name,
        version=c.version,
        persona=c.persona_key,
        expr=c.expr,
        action=c.action.value,
        mode=c.mode.value,
        exit=c.exit_policy.value,
        status=c.status,
        created_at=c.created_at,
        created_by=c.created_by,
    )


@router.get("/personas", response_model=PersonaList, **role("viewer"))
def personas_list(
    store: StoreDep,
    include_archived: Annotated[
        bool, Query(alias="all", description="include archived personas")
    ] = False,
) -> dict[str, Any]:
    """Personas by category and key, with member counts."""
    with store.read() as conn:
        rows = list_personas(conn, store, include_archived=include_archived)
    return {"personas": [persona_public(p, n) for p, n in rows]}


@router.get("/personas/{key}", response_model=PersonaDetail, **role("viewer"))
def persona_show(key: str, store: StoreDep) -> dict[str, Any]:
    """One persona: member count and the criteria (newest versions) that feed it."""
    with store.read() as conn:
        p = get_persona(conn, store, key)
        n = member_count(conn, store, p.pk)
        feeding = [c for c in list_criteria(conn, store) if c.persona_key == key]
    return {**persona_public(p, n), "criteria": [criterion_public(c) for c in feeding]}


@router.get("/personas/{key}/members", response_model=MembersPage, **role("viewer"))
def persona_members(
    key: str,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    after: Annotated[
        str | None, Query(max_length=1000, description="the last id of the previous page")
    ] = None,
    q: Annotated[
        str | None,
        Query(
            max_length=persona_view.MAX_QUERY_CHARS,
            description="only members whose id, first name, last name or full name "
            "starts with this (ignoring case)",
        ),
    ] = None,
) -> dict[str, Any]:
    """Member contact ids in id order, a page at a time (keyset: stable while tagging runs)."""
    with store.read() as conn:
        p = get_persona(conn, store, key)
        rows, next_after = persona_view.members_page(
            conn, store, p.pk, q=q, after=after, limit=limit
        )
    return {"members": [r["id"] for r in rows], "next_after": next_after}


@router.post(
    "/personas", status_code=201, response_model=PersonaPublic, **role("editor", errors=(409,))
)
def persona_create(body: PersonaCreate, store: StoreDep, who: CurrentUser) -> dict[str, Any]:
    """Create a persona."""
    actor = who.user.username
    p = add_persona(
        store,
        body.key,
        name=body.name,
        category=body.category,
        description=body.description,
        actor=actor,
    )
    detail = {"name": p.name, "category": p.category}
    record_now(store, actor=actor, action="persona.add", target=p.key, detail=detail, source="api")
    return persona_public(p, 0)


@router.post(
    "/personas/{key}/archive", response_model=PersonaPublic, **role("editor", errors=(409,))
)
def persona_archive(key: str, store: StoreDep, who: CurrentUser) -> Any:
    """Archive a persona: no more tagging into it; its members and history are kept."""
    p = archive_persona(store, key)
    record_now(store, actor=who.user.username, action="persona.archive", target=key, source="api")
    with store.read() as conn:
        return persona_public(p, member_count(conn, store, p.pk))


@router.patch("/personas/{key}", response_model=PersonaPublic, **role("editor"))
def persona_edit(key: str, body: PersonaUpdate, store: StoreDep, who: CurrentUser) -> Any:
    """Change a persona's name, category or description; omitted fields are kept
    (the key never changes). Audited as `persona.edit` when something changed."""
    given = body.model_fields_set
    for field in ("name", "category"):
        if field in given and getattr(body, field) is None:
            raise InputError(f"{field}: a persona's {field} cannot be null (omit it to keep it)")
    p = edit_persona(
        store,
        key,
        name=body.name,
        category=body.category,
        description=body.description if "description" in given else KEEP,
        actor=who.user.username,
        source="api",
    )
    with store.read() as conn:
        return persona_public(p, member_count(conn, store, p.pk))


@router.post(
    "/personas/{key}/restore", response_model=PersonaPublic, **role("editor", errors=(409,))
)
def persona_restore(key: str, store: StoreDep, who: CurrentUser) -> Any:
    """Restore an archived persona: tagging into it is allowed again."""
    p = restore_persona(store, key, actor=who.user.username, source="api")
    with store.read() as conn:
        return persona_public(p, member_count(conn, store, p.pk))


@router.get("/personas/{key}/size-history", response_model=SizeHistory, **role("viewer"))
def persona_size_history(
    key: str,
    store: StoreDep,
    days: Annotated[
        int, Query(ge=1, le=persona_view.MAX_DAYS, description="UTC days, ending today")
    ] = 90,
) -> dict[str, Any]:
    """The persona's size at the end of each UTC day and the contacts that
    entered and exited that day, oldest first, from the membership log."""
    with store.read() as conn:
        p = get_persona(conn, store, key)
        return persona_view.size_history(conn, store, p.pk, days).as_json()


@router.get("/persona-stats", response_model=PersonaStats, **role("viewer", errors=(404,)))
def persona_stats(
    store: StoreDep,
    settings: SettingsDep,
    key: Annotated[
        list[str],
        Query(min_length=1, max_length=MAX_KEYS, description="persona keys, one or more"),
    ],
    days: Annotated[
        int, Query(ge=0, le=persona_view.MAX_DAYS, description="size per UTC day (0: none)")
    ] = 0,
) -> dict[str, Any]:
    """Sizes and overlaps of one or more personas (both, a not b, either, the
    pairwise matrix) and, with `days`, their size over time: from the persona
    sets, brought up to date with the membership log first. 404 names an
    unknown key."""
    return compute_stats(current_sets(store, settings.data_dir), key, days=days)


_FORMULA_START = frozenset("=+-@\t\r")
CSV_BATCH = 1000  # rows per chunk sent


def _csv_chunks(rows: Iterator[tuple[Any, ...]]) -> Iterator[bytes]:
    """CSV text in chunks of CSV_BATCH rows. A spreadsheet would run a cell
    starting like a formula: such cells get a leading `'`."""
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(persona_view.MEMBER_COLUMNS)
    for n, row in enumerate(rows, 1):
        out.writerow(["'" + v if v and v[0] in _FORMULA_START else v for v in row])
        if n % CSV_BATCH == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


@router.get(
    "/personas/{key}/members.csv",
    response_class=StreamingResponse,
    **role("viewer", responses={200: {"content": {"text/csv": {}}}}),
)
def persona_members_csv(key: str, store: StoreDep) -> StreamingResponse:
    """Every member as CSV (id, names, email, job title, firm, region) in id
    order, streamed as it is read. Cells that a spreadsheet would take for a
    formula start with `'`."""
    with store.read() as conn:
        p = get_persona(conn, store, key)
    return StreamingResponse(
        _csv_chunks(persona_view.iter_members(store, p.pk)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{key}-members.csv"'},
    )
