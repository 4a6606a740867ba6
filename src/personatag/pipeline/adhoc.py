"""Ad hoc requests: tag or untag everyone who matches now (or a list), once."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.exc import DBAPIError

from personatag.config import Settings
from personatag.criteria import compile_criterion, from_json, references
from personatag.domain import SOURCE_ADHOC, Action, check_as_of, utcnow
from personatag.engines import get_engine
from personatag.engines.base import MatchSpec
from personatag.errors import InputError, PersonatagError
from personatag.pipeline import jobs
from personatag.pipeline.applier import ApplyCounts, apply_adhoc
from personatag.pipeline.audit import LogContext
from personatag.pipeline.contact_lists import FailedRow, LoadedList, read_contact_ids
from personatag.pipeline.matchset import is_heavy, materialize
from personatag.store import Store
from personatag.store.definitions import get_criterion
from personatag.store.personas import get_persona, persona_pks

log = logging.getLogger(__name__)


@dataclass
class AdhocRequest:
    persona: str | None
    action: Action
    expr: str | None = None
    criterion: str | None = None
    contacts_file: Path | None = None
    contact_ids: list[str] | None = None
    as_of: datetime | None = None
    dry_run: bool = False
    actor: str | None = None
    request_id: str | None = None
    engine: str = "local"


@dataclass
class AdhocResult:
    request_id: str
    status: str
    counts: ApplyCounts
    dry_run: bool
    failures: list[FailedRow] = field(default_factory=list)
    failed: int = 0  # rows that could not be used (len(failures) on a fresh run)

    def as_json(self) -> dict[str, Any]:
        c = self.counts
        return {
            "request_id": self.request_id,
            "status": self.status,
            "matched": c.matched,
            "tagged": c.tagged,
            "untagged": c.untagged,
            "already": c.already,
            "failed": self.failed,
            "pinned": c.pinned,
            "dry_run": self.dry_run,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> AdhocResult:
        counts = ApplyCounts(
            matched=data["matched"],
            tagged=data["tagged"],
            untagged=data["untagged"],
            already=data["already"],
            pinned=data["pinned"],
        )
        return AdhocResult(
            data["request_id"], data["status"], counts, data["dry_run"], failed=data["failed"]
        )


class RequestFailed(PersonatagError):
    """A recorded request whose job failed; nothing of it was applied."""

    def __init__(self, request_id: str, reason: str) -> None:
        super().__init__(f"request {request_id} failed: {reason}")
        self.request_id = request_id
        self.reason = reason


def _reason(exc: BaseException) -> str:
    """One line for people (and the job record): no SQL, no parameters."""
    if isinstance(exc, PersonatagError):
        return str(exc)
    if isinstance(exc, DBAPIError):
        first = str(exc.orig).strip().splitlines()
        return f"the store failed: {first[0] if first else type(exc.orig).__name__}"
    return f"{type(exc).__name__}: {exc}"


def run_adhoc(store: Store, req: AdhocRequest, settings: Settings) -> AdhocResult:
    """Validate, record, compute on the engine, apply all-or-nothing, record the outcome."""
    sources = [x is not None for x in (req.expr, req.criterion, req.contacts_file, req.contact_ids)]
    if sum(sources) != 1:
        raise InputError("give exactly one of --expr, --criterion or --contacts")
    as_of = check_as_of(req.as_of or utcnow())
    engine = get_engine(req.engine, store)
    with store.read() as conn:
        criterion = None
        if req.criterion is not None:
            criterion = get_criterion(conn, store, req.criterion)
            if req.persona and req.persona != criterion.persona_key:
                raise InputError(
                    f"criterion {criterion.label} is for persona {criterion.persona_key!r}, "
                    f"not {req.persona!r}"
                )
            if criterion.action is not req.action:
                raise InputError(
                    f"criterion {criterion.label} has action {criterion.action.value!r}, not "
                    f"{req.action.value!r}: run it with `personatag {criterion.action.value}`"
                )
            persona_key = criterion.persona_key
        elif req.persona is None:
            raise InputError("--persona is required")
        else:
            persona_key = req.persona
        persona = get_persona(conn, store, persona_key, active=True)
        catalog = store.catalog(conn)
        ast = None
        if criterion is not None:
            ast = from_json(criterion.ast)
            compile_criterion(criterion.expr, catalog)  # still valid against today's schema?
        elif req.expr is not None:
            ast = compile_criterion(req.expr, catalog).ast
        pks = persona_pks(conn, store)
    ids: list[tuple[int, str]] | None = None
    if req.contacts_file is not None:
        ids = list(read_contact_ids(req.contacts_file))
    elif req.contact_ids is not None:
        ids = list(enumerate(req.contact_ids, start=1))

    request_id = req.request_id or jobs.new_request_id()
    spec = {
        "persona": persona_key,
        "action": req.action.value,
        "engine": req.engine,
        "dry_run": req.dry_run,
        "as_of": as_of.isoformat(),
        "criterion": criterion.label if criterion else None,
        "expr": req.expr,
        "contacts": str(req.contacts_file) if req.contacts_file else None,
    }
    request_pk, job_pk, previous = jobs.open_request(
        store,
        request_id=request_id,
        submitted_by=req.actor,
        persona_pk=persona.pk,
        action=req.action.value,
        engine=req.engine,
        criterion_pk=criterion.pk if criterion else None,
        expr=req.expr,
        as_of=as_of,
        dry_run=req.dry_run,
        spec=spec,
    )
    if previous is not None:  # the same request id ran to completion before
        return AdhocResult.from_json(previous)
    ctx = LogContext(
        at=utcnow(),
        persona_pk=persona.pk,
        source=SOURCE_ADHOC,
        request_pk=request_pk,
        criterion_pk=criterion.pk if criterion else None,
        actor=req.actor,
        reason=f"{req.action.value} request {request_id}",
    )
    try:
        match = None
        if ast is not None:
            match = engine.compute(
                MatchSpec(ast=ast, as_of=as_of, catalog=catalog, persona_pks=pks)
            )
        # A dry run writes nothing but its temp tables: no write lock needed.
        with store.read() if req.dry_run else store.write() as conn:
            loaded = held = None
            portable = match is not None and match.portable
            try:
                if match is not None:
                    condition: ColumnElement[bool] = match.condition(conn, store)
                    if ast is not None and is_heavy(references(ast)):
                        held = materialize(conn, store, condition)
                        condition = held.contains(store.tables.contacts.c.pk)
                        portable = False
                else:
                    loaded = LoadedList(conn, store, ids or [])
                    condition = store.tables.contacts.c.pk.in_(loaded.pks.select())
                counts = apply_adhoc(
                    conn,
                    store,
                    action=req.action,
                    condition=condition,
                    ctx=ctx,
                    dry_run=req.dry_run,
                    bulk_threshold=settings.bulk_log_threshold,
                    portable=portable,
                )
                failures = loaded.failed if loaded else []
                status = jobs.PARTIAL if failures else jobs.SUCCEEDED
                result = AdhocResult(
                    request_id, status, counts, req.dry_run, failures, failed=len(failures)
                )
                if not req.dry_run:  # the outcome commits with the memberships
                    jobs.finish_job(conn, store, job_pk, status, result.as_json())
            finally:
                if held is not None:
                    held.drop(conn)
                if loaded is not None:
                    loaded.drop(conn)
                if match is not None:
                    match.close(conn)
        if req.dry_run:
            with store.write() as conn:
                jobs.finish_job(conn, store, job_pk, status, result.as_json())
    except Exception as exc:
        reason = _reason(exc)
        log.debug("request %s failed", request_id, exc_info=True)
        with store.write() as conn:
            jobs.finish_job(conn, store, job_pk, jobs.FAILED, {}, error=reason)
        raise RequestFailed(request_id, reason) from exc
    return result
