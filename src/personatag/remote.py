"""A small client for a running `personatag serve` (stdlib only: urllib).

Used by the CLI when PERSONATAG_TOKEN is set. Answers of the API's error format
`{"error": {"status", "code", "message", ...}}` become PersonatagError
subclasses carrying the server's message."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any

from personatag.config import Settings
from personatag.errors import (
    ConflictError,
    InputError,
    NotFoundError,
    PersonatagError,
    RemoteError,
)

API = "/api/v1"


class Remote:
    """GET and POST JSON to the API at settings.server_url with settings.token."""

    def __init__(self, settings: Settings, *, timeout: float = 60.0) -> None:
        if settings.token is None:
            raise RemoteError("PERSONATAG_TOKEN is not set: there is no token to send")
        self.base = settings.server_url
        self.token = settings.token.get_secret_value()
        self.timeout = timeout

    def get(self, path: str, *, timeout: float | None = None) -> Any:
        return self._call("GET", path, None, {}, timeout)

    def post(self, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        return self._call("POST", path, data, headers, timeout)

    def post_file(
        self,
        path: str,
        field: str,
        filename: str,
        content: bytes,
        *,
        timeout: float | None = None,
    ) -> Any:
        """POST a multipart/form-data body with one file field."""
        boundary = f"personatag-{uuid.uuid4().hex}"
        safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
        data = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
                f'filename="{safe_name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + content
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return self._call("POST", path, data, headers, timeout)

    def _call(
        self,
        method: str,
        path: str,
        data: bytes | None,
        headers: dict[str, str],
        timeout: float | None,
    ) -> Any:
        url = self.base + (path if path.startswith("/") else f"{API}/{path}")
        req = urllib.request.Request(  # noqa: S310 - server_url is validated as http(s)
            url,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Accept": "application/json",
                **headers,
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise self._error(exc.code, exc.read()) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (TimeoutError, ConnectionError) as exc:
            raise self._unreachable(exc) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise RemoteError(
                f"the server at {self.base} answered {method} {path} with something "
                "other than JSON: is PERSONATAG_SERVER_URL a personatag server?"
            ) from None

    def _unreachable(self, reason: object) -> RemoteError:
        hint = f"cannot reach the personatag server at {self.base}"
        if isinstance(reason, ConnectionRefusedError):
            return RemoteError(f"{hint} (is `personatag serve` running?)")
        if isinstance(reason, TimeoutError):
            return RemoteError(f"{hint}: no answer in time (is `personatag serve` running?)")
        text = getattr(reason, "strerror", None) or str(reason)
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
