"""Ad hoc requests from the command line: tag or untag everyone who matches now
(or a list), once. The job runs like a request file's (tagging/runner.py), all
or nothing, with the same idempotency by request id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from personatag.config import Settings
from personatag.domain import Action, check_as_of, utcnow
from personatag.engines import get_engine
from personatag.errors import InputError
from personatag.jobs import repository as jobs
from personatag.jobs.submissions import CLI
from personatag.store import Store
from personatag.tagging.contact_lists import read_contact_ids
from personatag.tagging.outcome import AdhocResult, RequestFailed
from personatag.tagging.plan import Item, resolve
from personatag.tagging.runner import JobRequest, JobRunner

__all__ = ["AdhocRequest", "AdhocResult", "RequestFailed", "run_adhoc"]


@dataclass
class AdhocRequest:
    """What `personatag tag|untag` asks for: one item."""

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
    engine: str | None = None  # None: the batch_engine setting
    via: str = CLI


def run_adhoc(store: Store, req: AdhocRequest, settings: Settings) -> AdhocResult:
    """Validate, record, compute on the engine, apply all-or-nothing, record the outcome."""
    given = [x is not None for x in (req.expr, req.criterion, req.contacts_file, req.contact_ids)]
    if sum(given) != 1:
        raise InputError("give exactly one of --expr, --criterion or --contacts")
    if req.criterion is None and req.persona is None:
        raise InputError("--persona is required")
    as_of = check_as_of(req.as_of or utcnow())
    engine = req.engine or settings.batch_engine
    get_engine(engine, store, settings)  # an unknown engine fails before anything is recorded
    ids: list[tuple[int, str]] | None = None
    if req.contacts_file is not None:
        ids = list(read_contact_ids(req.contacts_file))
    elif req.contact_ids is not None:
        ids = list(enumerate(req.contact_ids, start=1))
    item = Item(req.persona, req.action, criterion=req.criterion, expr=req.expr, contact_ids=ids)
    request = JobRequest(
        request_id=req.request_id or jobs.new_request_id(),
        plan=resolve(store, [item]),
        as_of=as_of,
        engine=engine,
        dry_run=req.dry_run,
        submitted_by=req.actor,
        contacts_file=str(req.contacts_file) if req.contacts_file else None,
        via=req.via,
    )
    runner = JobRunner(store, settings)
    job = runner.open(request)
    if isinstance(job, AdhocResult):  # the same request id ran to completion before
        return job
    return runner.run(job)
