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
        """A row of jobs joined with its request (request_id, submitted_by, dry_run)."""
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
