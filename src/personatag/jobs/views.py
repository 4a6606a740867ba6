"""Typed views of jobs: what the CLI prints and the API answers, said once.

The API uses these models as its response models; the CLI prints
`JobPublic.as_json()`, which is the API's JSON for the same job.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


class JobProgress(BaseModel):
    phase: str = Field(description="`evaluating`, `applying`, `writing results` or `done`")
    done: int | None = Field(description="how much of `total` is done; null when not counted")
    total: int | None = Field(description="how much there is to do; null when not known")
    unit: str | None = Field(description="what `done` and `total` count: `items` or `tasks`")
    updated_at: str = Field(description="when this figure was taken (UTC)")


class JobPublic(BaseModel):
    id: int
    request_id: str
    status: str
    engine: str
    engine_ref: str | None
    bundle_version: str | None
    submitted_by: str | None
    source: str | None = Field(
        None,
        description="where the request was submitted: `workbench`, `api` (an API token), "
        "`cli` or `file` (put into the requests bucket directly); null for older requests",
    )
    token: str | None = Field(None, description="the API token's name, when submitted with one")
    dry_run: bool
    queued_at: str | None
    started_at: str | None
    finished_at: str | None
    seconds: float | None
    deadline_at: str | None
    counts: dict[str, Any] | None
    progress: JobProgress | None = Field(
        description="what a running job does now; kept once it ended (`done`, or where it stopped)"
    )
    error: str | None
    owner: str | None

    @classmethod
    def from_row(cls, row: Any) -> JobPublic:
        """A row of jobs joined with its request (request_id, submitted_by,
        submitted_via, submitted_token, dry_run)."""
        m = row._mapping
        seconds = None
        if m["started_at"] is not None and m["finished_at"] is not None:
            seconds = round((m["finished_at"] - m["started_at"]).total_seconds(), 3)
        return cls(
            id=m["pk"],
            request_id=m["request_id"],
            status=m["status"],
            engine=m["engine"],
            engine_ref=m["engine_ref"],
            bundle_version=m["bundle_version"],
            submitted_by=m["submitted_by"],
            source=m["submitted_via"],
            token=m["submitted_token"],
            dry_run=bool(m["dry_run"]),
            queued_at=_iso(m["queued_at"]),
            started_at=_iso(m["started_at"]),
            finished_at=_iso(m["finished_at"]),
            seconds=seconds,
            deadline_at=_iso(m["deadline_at"]),
            counts=json.loads(m["counts"]) if m["counts"] else None,
            # See jobs/progress.py: kept after the job ended (`done`, or where it stopped).
            progress=json.loads(m["progress"]) if m["progress"] else None,
            error=m["error"],
            owner=m["owner"],
        )

    def as_json(self) -> dict[str, Any]:
        """The job as the API's JSON has it (and the CLI prints it)."""
        return self.model_dump()


class RequestItemInfo(BaseModel):
    persona: str
    action: str
    criterion: str | None = Field(description="the saved criterion it ran (`name@version`)")
    expr: str | None = Field(description="the criterion text it ran, if given as text")
    contacts: int | None = Field(description="how many contact ids it lists (a list request)")


class RequestInfo(BaseModel):
    """What a request asked for, who submitted it and how."""

    request_id: str
    created_at: str | None
    submitted_by: str | None
    source: str | None = Field(description="`workbench`, `api`, `cli` or `file` (see JobPublic)")
    token: str | None
    engine: str
    dry_run: bool
    as_of: str | None
    personas: list[str] = Field(description="the personas it names, first item's first")
    actions: list[str] = Field(description="its actions (`tag`, `untag`), first item's first")
    items: list[RequestItemInfo]
    file: str | None = Field(description="the request file's key in the requests bucket")
    format: str | None = Field(description="the request file's format: `json` or `csv`")
    contacts_file: str | None = Field(description="the list file a CLI request read")

    @classmethod
    def from_row(cls, row: Any) -> RequestInfo:
        """A row with the request's columns (spec, created_at, as_of,
        request_engine, submitted_via, submitted_token, ...)."""
        m = row._mapping
        spec = json.loads(m["spec"] or "{}")
        raw = spec.get("items") if "items" in spec else [spec]
        items = [
            RequestItemInfo(
                persona=str(i.get("persona") or ""),
                action=str(i.get("action") or ""),
                criterion=i.get("criterion"),
                expr=i.get("expr"),
                contacts=i["contacts"] if isinstance(i.get("contacts"), int) else None,
            )
            for i in raw or []
        ]
        return cls(
            request_id=m["request_id"],
            created_at=_iso(m["created_at"]),
            submitted_by=m["submitted_by"],
            source=m["submitted_via"],
            token=m["submitted_token"],
            engine=m["request_engine"],
            dry_run=bool(m["dry_run"]),
            as_of=_iso(m["as_of"]),
            personas=list(dict.fromkeys(i.persona for i in items)),
            actions=list(dict.fromkeys(i.action for i in items)),
            items=items,
            file=spec.get("source"),
            format=spec.get("format"),
            contacts_file=spec.get("contacts") if isinstance(spec.get("contacts"), str) else None,
        )
