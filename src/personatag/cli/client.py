"""Where the commands that can run against a server (`status`, `jobs`, `submit`,
`preview`) get their data: the local store, or a running `personatag serve`.

`open_client` picks one: with PERSONATAG_TOKEN set, a RemoteClient that calls
the REST API (see docs/api.md) and maps its answers to what the LocalClient
computes, so a command prints both the same way. The API's error format
`{"error": {"status", "code", "message", ...}}` becomes PersonatagError
subclasses carrying the server's message."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from personatag.cli.common import actor, as_of_option
from personatag.config import Settings
from personatag.domain import JobStatus
from personatag.errors import (
    ConflictError,
    InputError,
    NotFoundError,
    PersonatagError,
    RemoteError,
)

if TYPE_CHECKING:
    import httpx

    from personatag.buckets import Buckets
    from personatag.store import Store

# The API's largest wait for a request (POST /requests?wait=true&timeout=S).
MAX_SERVER_WAIT = 600.0
# Seconds a call may take (connect, each read, each write) unless it says otherwise.
DEFAULT_TIMEOUT = 60.0
# Seconds between looks at a submitted request while waiting for its summary.
POLL_S = 0.5


class Client(ABC):
    """The data behind `status`, `jobs list|show|cancel`, `preview` and `submit`."""

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """{"queued": n, "running": n, "recent": [job, ...]} (ten newest jobs)."""

    @abstractmethod
    def list_jobs(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest jobs first, optionally only those with `status`."""

    @abstractmethod
    def list_requests(self, filters: dict[str, Any], limit: int, offset: int) -> dict[str, Any]:
        """{"requests": [...], "total", "limit", "offset"}: requests newest first,
        with their newest job, that match `filters` (GET /api/v1/requests's)."""

    @abstractmethod
    def get_job(self, ref: str) -> dict[str, Any]:
        """A job by its number, or the newest job of a request id."""

    @abstractmethod
    def cancel_job(self, ref: str) -> dict[str, Any]:
        """Cancel a queued job, or ask a running one to stop; the job after."""

    @abstractmethod
    def preview(
        self,
        expr: str,
        *,
        persona: str | None,
        as_of: str | None,
        sample: int,
        action: str = "tag",
        mode: str = "adhoc",
        exit_policy: str = "keep",
        engine: str | None = None,
    ) -> dict[str, Any]:
        """{"count", "sample", "would_enter", "would_exit", "count_ignoring_case",
        "hint"} (see tagging.preview); `as_of` is ISO-8601 text."""

    @abstractmethod
    def submit(self, file: Path, *, wait: bool, timeout: float) -> dict[str, Any]:
        """The submitted file's {request_id, key}, or with `wait` its summary."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the client is not used after."""

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_client(settings: Settings) -> Client:
    """The server's API when a token is set, else the local store."""
    return RemoteClient(settings) if settings.token else LocalClient(settings)


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {file}: {exc.strerror}") from None


class LocalClient(Client):
    """The local store and buckets; each is opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Store | None = None

    def _st(self) -> Store:
        if self._store is None:
            from personatag.store import open_store

            self._store = open_store(self.settings.resolved_store_url)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.dispose()
            self._store = None

    def _buckets(self) -> Buckets:
        from personatag.buckets import open_buckets

        return open_buckets(self.settings)

    def status(self) -> dict[str, Any]:
        from personatag.jobs.repository import list_jobs

        st = self._st()
        return {
            "queued": len(list_jobs(st, status=JobStatus.QUEUED, limit=1000)),
            "running": len(list_jobs(st, status=JobStatus.RUNNING, limit=1000)),
            "recent": [j.as_json() for j in list_jobs(st, limit=10)],
        }

    def list_jobs(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        from personatag.jobs.repository import list_jobs

        return [j.as_json() for j in list_jobs(self._st(), status=status, limit=limit)]

    def list_requests(self, filters: dict[str, Any], limit: int, offset: int) -> dict[str, Any]:
        from personatag.jobs.repository import RequestFilter, list_requests

        found, total = list_requests(
            self._st(), RequestFilter(**filters), limit=limit, offset=offset
        )
        return {
            "requests": [
                {
                    "request_id": info.request_id,
                    "status": job.status,
                    "job": job.as_json(),
                    "summary": None,
                    "error": None,
                    "request": info.model_dump(),
                }
                for info, job in found
            ],
            "total": total,
            "limit": limit,
            "offset": offset,
        }

    def get_job(self, ref: str) -> dict[str, Any]:
        from personatag.jobs.repository import get_job

        return get_job(self._st(), ref).as_json()

    def cancel_job(self, ref: str) -> dict[str, Any]:
        from personatag.jobs.repository import cancel_job

        return cancel_job(self._st(), ref).as_json()

    def preview(
        self,
        expr: str,
        *,
        persona: str | None,
        as_of: str | None,
        sample: int,
        action: str = "tag",
        mode: str = "adhoc",
        exit_policy: str = "keep",
        engine: str | None = None,
    ) -> dict[str, Any]:
        from personatag.tagging.preview import preview as run_preview

        return run_preview(
            self._st(),
            expr,
            persona=persona,
            as_of=as_of_option(as_of),
            sample_size=sample,
            action=action,
            mode=mode,
            exit_policy=exit_policy,
            engine=engine,
            settings=self.settings,
        )

    def submit(self, file: Path, *, wait: bool, timeout: float) -> dict[str, Any]:
        from personatag.jobs.submissions import CLI, Submitter
        from personatag.requests.submit import submit_file, wait_for_result

        data = _read(file)
        b = self._buckets()
        submitter = Submitter(actor(), CLI)
        answer = submit_file(b, data, name=file.name, store=self._st(), submitter=submitter)
        if wait:
            answer = wait_for_result(b, self._st(), answer, timeout=timeout)
        return answer


def _job_path(ref: str) -> str:
    return f"/api/v1/jobs/{quote(ref, safe='')}"


def _os_error(exc: BaseException) -> OSError | None:
    """The operating system's error under an httpx error (refused, reset, ...)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class RemoteClient(Client):
    """The REST API at settings.server_url, with settings.token as bearer token.

    One pooled httpx client serves every call (a `submit --wait` polls over the
    same connection); `transport` lets tests answer without a server. httpx is
    imported here, not at the top: commands on the local store do without it."""

    def __init__(
        self,
        settings: Settings,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if settings.token is None:
            raise RemoteError("PERSONATAG_TOKEN is not set: there is no token to send")
        import httpx

        self.base = settings.server_url
        self._http = httpx.Client(
            base_url=self.base,
            headers={
                "Authorization": f"Bearer {settings.token.get_secret_value()}",
                "Accept": "application/json",
                # Requests it submits show as from the CLI (see web/api/requests.py).
                "X-Personatag-Client": "cli",
            },
            timeout=httpx.Timeout(timeout),
            follow_redirects=True,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    # -- the commands ---------------------------------------------------------

    def status(self) -> dict[str, Any]:
        view = self._call("GET", "/api/v1/status")
        return {"queued": view["queued"], "running": view["running"], "recent": view["recent"]}

    def list_jobs(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        params = {"status": status, "limit": limit} if status is not None else {"limit": limit}
        found: list[dict[str, Any]] = self._call("GET", "/api/v1/jobs", params=params)["jobs"]
        return found

    def list_requests(self, filters: dict[str, Any], limit: int, offset: int) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        if isinstance(params.get("dry_run"), bool):
            params["dry_run"] = "true" if params["dry_run"] else "false"
        found: dict[str, Any] = self._call(
            "GET", "/api/v1/requests", params=params | {"limit": limit, "offset": offset}
        )
        return found

    def get_job(self, ref: str) -> dict[str, Any]:
        job: dict[str, Any] = self._call("GET", _job_path(ref))
        return job

    def cancel_job(self, ref: str) -> dict[str, Any]:
        job: dict[str, Any] = self._call("POST", _job_path(ref) + "/cancel")
        return job

    def preview(
        self,
        expr: str,
        *,
        persona: str | None,
        as_of: str | None,
        sample: int,
        action: str = "tag",
        mode: str = "adhoc",
        exit_policy: str = "keep",
        engine: str | None = None,
    ) -> dict[str, Any]:
        body = {
            "expr": expr,
            "persona": persona,
            "as_of": as_of,
            "sample": sample,
            # Defaults are left out, so a server without these fields still answers.
            "action": None if action == "tag" else action,
            "mode": None if mode == "adhoc" else mode,
            "exit": None if exit_policy == "keep" else exit_policy,
            "engine": engine,
        }
        result: dict[str, Any] = self._call(
            "POST", "/api/v1/preview", body={k: v for k, v in body.items() if v is not None}
        )
        return result

    def submit(self, file: Path, *, wait: bool, timeout: float) -> dict[str, Any]:
        data = _read(file)
        server_wait = max(0.1, min(timeout, MAX_SERVER_WAIT))
        params = {"wait": "true", "timeout": f"{server_wait:g}"} if wait else None
        deadline = time.monotonic() + timeout
        call_timeout = (server_wait + 30) if wait else DEFAULT_TIMEOUT
        if file.suffix.lower() == ".csv":
            answer = self._call(
                "POST",
                "/api/v1/requests/upload",
                params=params,
                upload=("file", file.name, data),
                timeout=call_timeout,
            )
        else:
            try:
                body = json.loads(data)
            except ValueError as exc:
                raise InputError(f"{file}: not valid JSON: {exc}") from None
            answer = self._call(
                "POST", "/api/v1/requests", params=params, body=body, timeout=call_timeout
            )
        submitted = {"request_id": answer["request_id"], "key": answer["key"]}
        if not wait:
            return submitted
        summary: dict[str, Any] | None = answer.get("summary")
        while summary is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
            shown = self._call(
                "GET",
                f"/api/v1/requests/{quote(submitted['request_id'], safe='')}",
                timeout=call_timeout,
            )
            summary = shown.get("summary") if shown.get("status") != "submitted" else None
        if summary is None:
            raise PersonatagError(
                f"no result for {submitted['request_id']} after {timeout:g} s: is a dispatcher "
                "running (`personatag serve` without --no-dispatcher, or `personatag dispatcher`)?"
            )
        return summary

    # -- HTTP -----------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        upload: tuple[str, str, bytes] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """JSON answer of one call (None when empty); `upload` is (field, filename,
        content) for a multipart/form-data body with one file."""
        import httpx

        content: bytes | None = None
        headers: dict[str, str] = {}
        files = None
        if body is not None:
            # Encoded here rather than by httpx, which refuses NaN: the server judges it.
            content = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if upload is not None:
            field, filename, data = upload
            safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
            files = {field: (safe_name, data, "application/octet-stream")}
        try:
            resp = self._http.request(
                method,
                path,
                params=params,
                content=content,
                files=files,
                headers=headers,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else httpx.Timeout(timeout),
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if resp.status_code >= 400:
            raise self._error(resp.status_code, resp.content)
        raw = resp.content
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise RemoteError(
                f"the server at {self.base} answered {method} {path} with something "
                "other than JSON: is PERSONATAG_SERVER_URL a personatag server?"
            ) from None

    def _unreachable(self, exc: httpx.TransportError) -> RemoteError:
        import httpx

        hint = f"cannot reach the personatag server at {self.base}"
        if isinstance(exc, httpx.TimeoutException):
            return RemoteError(f"{hint}: no answer in time (is `personatag serve` running?)")
        cause = _os_error(exc)
        if isinstance(cause, ConnectionRefusedError):
            return RemoteError(f"{hint} (is `personatag serve` running?)")
        text = (cause.strerror if cause is not None else None) or str(exc)
        return RemoteError(f"{hint}: {text} (is `personatag serve` running?)")

    def _error(self, status: int, raw: bytes) -> PersonatagError:
        try:
            err = json.loads(raw)["error"]
            message = str(err["message"])
        except (ValueError, KeyError, TypeError):
            snippet = " ".join(raw.decode("utf-8", "replace").split())[:200]
            return RemoteError(
                f"the server at {self.base} answered {status}" + (f": {snippet}" if snippet else "")
            )
        if isinstance(err.get("rows"), list):
            rows = "; ".join(
                f"row {r.get('row')}: {r.get('reason')}"
                for r in err["rows"][:5]
                if isinstance(r, dict)
            )
            message += f" ({rows}{'; ...' if len(err['rows']) > 5 else ''})" if rows else ""
        if status in (401, 403):
            return RemoteError(f"the server refused the token: {message}")
        if status == 404:
            return NotFoundError(message)
        if status == 409:
            return ConflictError(message)
        if status in (400, 413, 422):
            return InputError(message)
        return RemoteError(f"the server failed ({status}): {message}")
