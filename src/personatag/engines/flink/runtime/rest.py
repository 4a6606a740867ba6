"""A small client for Flink's REST API: JSON over a pooled httpx client.

Engines keep one `FlinkRest` while they poll a job, so the polls reuse a
connection instead of opening one each.
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

import httpx

from personatag.errors import PersonatagError


class FlinkUnreachable(PersonatagError):
    """The cluster's REST API did not answer (down, wrong URL, timed out).

    `kind` says why in one word: `refused` (nothing listens at the address),
    `timeout` (no answer in time), `dns` (the host name is unknown) or `other`.
    """

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


def _unreachable_kind(exc: BaseException) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    text = str(exc).lower()
    if "refused" in text:
        return "refused"
    if "name or service not known" in text or "nodename nor servname" in text:
        return "dns"
    if "temporary failure in name resolution" in text:
        return "dns"
    return "other"


class FlinkRestError(PersonatagError):
    """The REST API answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# As many as urllib followed before; Flink itself does not redirect.
_MAX_REDIRECTS = 10


class FlinkRest:
    """Requests to one cluster. `timeout` (seconds) bounds the connect and each
    read and write; `transport` replaces the network (unit tests)."""

    def __init__(
        self,
        base_url: str,
        timeout: float = 5.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._client = httpx.Client(
            timeout=timeout,
            follow_redirects=True,
            max_redirects=_MAX_REDIRECTS,
            transport=transport,
        )

    def close(self) -> None:
        """Close the pooled connections; the client is done then."""
        self._client.close()

    def __enter__(self) -> FlinkRest:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.base_url}{path}"
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        try:
            resp = self._client.request(method, url, content=data, headers=headers)
        except (httpx.TransportError, httpx.TooManyRedirects, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise FlinkUnreachable(
                f"the Flink cluster at {self.base_url} does not answer ({reason})",
                _unreachable_kind(exc),
            ) from None
        if resp.is_error or resp.is_redirect:
            detail = resp.content.decode(errors="replace")[:500]
            try:
                errors = json.loads(detail).get("errors")
                if errors:
                    detail = "; ".join(str(e).splitlines()[0] for e in errors)
            except (ValueError, AttributeError):
                pass
            raise FlinkRestError(
                resp.status_code, f"Flink REST {method} {path}: {resp.status_code} {detail}"
            )
        raw = resp.content
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def overview(self) -> dict[str, Any]:
        """/overview: taskmanagers, slots-total, slots-available, jobs-running, ..."""
        result: dict[str, Any] = self.get("/overview")
        return result

    def taskmanagers(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/taskmanagers").get("taskmanagers", [])
        return result

    def jobs_overview(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/jobs/overview").get("jobs", [])
        return result

    def job(self, jid: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/jobs/{jid}")
        return result

    def exceptions(self, jid: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/jobs/{jid}/exceptions")
        return result

    def cancel(self, jid: str) -> None:
        self.request("PATCH", f"/jobs/{jid}?mode=cancel")
