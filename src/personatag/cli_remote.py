"""The CLI commands that, with PERSONATAG_TOKEN set, talk to a running server.

Each prints what its local twin in personatag.cli prints (text and --json), mapped
from the REST API's answers (see docs/api.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import typer

from personatag.cli import _job_line, emit, settings
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


def remote_status(as_json: bool) -> None:
    view = _remote().get("/api/v1/status")
    out = {"queued": view["queued"], "running": view["running"], "recent": view["recent"]}
    if as_json:
        emit(out)
        return
    typer.echo(f"queued {out['queued']}, running {out['running']}")
    for j in out["recent"]:
        typer.echo(_job_line(j))


def remote_jobs_list(status: str | None, limit: int, as_json: bool) -> None:
    found = _remote().get("/api/v1/jobs" + _query(status=status, limit=limit))["jobs"]
    if as_json:
        emit({"jobs": found})
        return
    for j in found:
        typer.echo(_job_line(j))


def remote_jobs_show(ref: str, as_json: bool) -> None:
    j = _remote().get(_job_path(ref))
    if as_json:
        emit(j)
        return
    for k, v in j.items():
        typer.echo(f"{k:<15} {v if v is not None else '-'}")


def remote_jobs_cancel(ref: str, as_json: bool) -> None:
    j = _remote().post(_job_path(ref) + "/cancel")
    if as_json:
        emit(j)
    else:
        typer.echo(f"job {j['id']} ({j['request_id']}): {j['status']}")


def remote_preview(
    expr: str, persona: str | None, as_of: str | None, sample: int, as_json: bool
) -> None:
    body = {"expr": expr, "persona": persona, "as_of": as_of, "sample": sample}
    result = _remote().post("/api/v1/preview", {k: v for k, v in body.items() if v is not None})
    if as_json:
        emit(result)
        return
    typer.echo(
        f"matches: {result['count']:,}  would enter: {result['would_enter']:,}  "
        f"would exit: {result['would_exit']:,}"
    )
    typer.echo("sample: " + ", ".join(result["sample"]))


def remote_submit(file: Path, wait: bool, timeout: float, as_json: bool) -> None:
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
        if as_json:
            emit(submitted)
        else:
            typer.echo(f"submitted {submitted['request_id']} as {submitted['key']}")
        return
    summary = answer.get("summary")
    while summary is None and time.monotonic() < deadline:
        time.sleep(0.5)
        shown = remote.get(f"/api/v1/requests/{quote(submitted['request_id'], safe='')}")
        summary = shown.get("summary") if shown.get("status") != "submitted" else None
    if summary is None:
        raise PersonatagError(
            f"no result for {submitted['request_id']} after {timeout:g} s: is a dispatcher "
            "running (`personatag serve` without --no-dispatcher, or `personatag dispatcher`)?"
        )
    if as_json:
        emit(summary)
    else:
        c = summary.get("counts", {})
        typer.echo(
            f"{summary['request_id']} {summary['status']}: matched {c.get('matched', 0):,}, "
            f"tagged {c.get('tagged', 0):,}, untagged {c.get('untagged', 0):,}, "
            f"failed {c.get('failed', 0):,}"
            + (f" ({summary['error']})" if summary.get("error") else "")
        )
    if summary["status"] in ("failed", "cancelled"):
        raise typer.Exit(1)
