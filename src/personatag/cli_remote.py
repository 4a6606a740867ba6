"""What the CLI commands ask a running server for when PERSONATAG_TOKEN is set.

Each returns the data its local twin in personatag.cli computes, mapped from
the REST API's answers (see docs/api.md); the command prints it the same way."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from personatag.cli import settings
from personatag.errors import InputError, PersonatagError
from personatag.remote import Remote

# The API's largest wait for a request (POST /requests?wait=true&timeout=S).
_MAX_SERVER_WAIT = 600.0


def _remote(timeout: float = 60.0) -> Remote:
    return Remote(settings(), timeout=timeout)


def _query(**params: Any) -> str:
    kept = {k: v for k, v in params.items() if v is not None}
    return f"?{urlencode(kept)}" if kept else ""


def _job_path(ref: str) -> str:
    return f"/api/v1/jobs/{quote(ref, safe='')}"


def remote_status() -> dict[str, Any]:
    view = _remote().get("/api/v1/status")
    return {"queued": view["queued"], "running": view["running"], "recent": view["recent"]}


def remote_jobs_list(status: str | None, limit: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = _remote().get(
        "/api/v1/jobs" + _query(status=status, limit=limit)
    )["jobs"]
    return found


def remote_jobs_show(ref: str) -> dict[str, Any]:
    job: dict[str, Any] = _remote().get(_job_path(ref))
    return job


def remote_jobs_cancel(ref: str) -> dict[str, Any]:
    job: dict[str, Any] = _remote().post(_job_path(ref) + "/cancel")
    return job


def remote_preview(
    expr: str, persona: str | None, as_of: str | None, sample: int
) -> dict[str, Any]:
    body = {"expr": expr, "persona": persona, "as_of": as_of, "sample": sample}
    result: dict[str, Any] = _remote().post(
        "/api/v1/preview", {k: v for k, v in body.items() if v is not None}
    )
    return result


def remote_submit(file: Path, wait: bool, timeout: float) -> dict[str, Any]:
    """The submitted file's {request_id, key}, or with `wait` its summary."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {file}: {exc.strerror}") from None
    server_wait = max(0.1, min(timeout, _MAX_SERVER_WAIT))
    query = _query(wait="true", timeout=f"{server_wait:g}") if wait else ""
    deadline = time.monotonic() + timeout
    remote = _remote(timeout=(server_wait + 30) if wait else 60.0)
    if file.suffix.lower() == ".csv":
        answer = remote.post_file("/api/v1/requests/upload" + query, "file", file.name, data)
    else:
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise InputError(f"{file}: not valid JSON: {exc}") from None
        answer = remote.post("/api/v1/requests" + query, body)
    submitted = {"request_id": answer["request_id"], "key": answer["key"]}
    if not wait:
        return submitted
    summary: dict[str, Any] | None = answer.get("summary")
    while summary is None and time.monotonic() < deadline:
        time.sleep(0.5)
        shown = remote.get(f"/api/v1/requests/{quote(submitted['request_id'], safe='')}")
        summary = shown.get("summary") if shown.get("status") != "submitted" else None
    if summary is None:
        raise PersonatagError(
            f"no result for {submitted['request_id']} after {timeout:g} s: is a dispatcher "
            "running (`personatag serve` without --no-dispatcher, or `personatag dispatcher`)?"
        )
    return summary
