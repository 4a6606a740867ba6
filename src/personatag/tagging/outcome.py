"""What a job of an ad hoc request ends with: its counts, or why it failed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from personatag.domain import JobStatus
from personatag.errors import PersonatagError
from personatag.memberships.apply import ApplyCounts
from personatag.store.transient import describe as describe_store_error
from personatag.tagging.contact_lists import FailedRow


@dataclass
class ItemResult:
    persona: str
    action: str
    counts: ApplyCounts
    failures: list[FailedRow] = field(default_factory=list)


def sum_counts(counts: Sequence[ApplyCounts]) -> ApplyCounts:
    return ApplyCounts(
        matched=sum(c.matched for c in counts),
        tagged=sum(c.tagged for c in counts),
        untagged=sum(c.untagged for c in counts),
        already=sum(c.already for c in counts),
        pinned=sum(c.pinned for c in counts),
    )


@dataclass
class AdhocResult:
    request_id: str
    status: JobStatus
    counts: ApplyCounts
    dry_run: bool
    failures: list[FailedRow] = field(default_factory=list)
    failed: int = 0  # rows that could not be used (len(failures) on a fresh run)
    items: list[ItemResult] = field(default_factory=list)
    # Why the job ran on another engine than asked (tagging.fallback), if it
    # did, and that engine (None: the one asked).
    warnings: list[str] = field(default_factory=list)
    engine: str | None = None

    def as_json(self) -> dict[str, Any]:
        c = self.counts
        out: dict[str, Any] = {
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
        if self.warnings:
            out["warnings"] = list(self.warnings)
        if self.engine is not None:
            out["engine"] = self.engine
        return out

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
            data["request_id"],
            JobStatus(data["status"]),
            counts,
            data["dry_run"],
            failed=data["failed"],
            warnings=list(data.get("warnings") or []),
            engine=data.get("engine"),
        )


class RequestFailed(PersonatagError):
    """A recorded request whose job failed (or was cancelled); nothing was applied."""

    def __init__(self, request_id: str, reason: str, status: JobStatus = JobStatus.FAILED) -> None:
        super().__init__(f"request {request_id} {status}: {reason}")
        self.request_id = request_id
        self.reason = reason
        self.status = status


def reason_of(exc: BaseException) -> str:
    """One line for people (and the job record): no SQL, no parameters."""
    if isinstance(exc, PersonatagError):
        return str(exc)
    # The store error that started it, named (a deadlock, a lost connection),
    # not the "current transaction is aborted" that followed it.
    return describe_store_error(exc)
