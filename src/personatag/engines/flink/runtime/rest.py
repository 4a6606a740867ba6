"""A small client for Flink's REST API (stdlib only: it is a handful of GETs)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from personatag.errors import PersonatagError


class FlinkUnreachable(PersonatagError):
    """The cluster's REST API did not answer (down, wrong URL, timed out)."""


class FlinkRestError(PersonatagError):
    """The REST API answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FlinkRest:
    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.base_url}{path}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - http(s) URL from settings
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            try:
                errors = json.loads(detail).get("errors")
                if errors:
                    detail = "; ".join(str(e).splitlines()[0] for e in errors)
            except (ValueError, AttributeError):
                pass
            raise FlinkRestError(
                exc.code, f"Flink REST {method} {path}: {exc.code} {detail}"
            ) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FlinkUnreachable(
                f"the Flink cluster at {self.base_url} does not answer ({reason})"
            ) from None
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
