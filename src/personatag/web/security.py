"""Browser-facing headers on every answer, and whom to believe about the client.

Every response (pages, API, static files, errors, the Flink proxy) carries:

- `Content-Security-Policy`: the workbench loads only its own static JS and
  CSS (no inline script, style or event handler anywhere), talks only to its
  own origin, and may not be framed (`frame-ancestors 'none'`). The proxied
  Flink dashboard gets the same policy except that it may use inline styles
  (its framework injects them at run time).
- `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff` and
  `Referrer-Policy: no-referrer`.

`X-Forwarded-For` / `X-Forwarded-Proto` are believed only from the addresses in
PERSONATAG_TRUSTED_PROXIES (none by default): the client address used by the
login limits and written to the audit log is otherwise the peer of the socket.
"""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_BASE = (
    "default-src 'self'",
    "script-src 'self'",
    "connect-src 'self'",
    "img-src 'self' data:",
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
)
CSP = "; ".join((*_BASE, "style-src 'self'"))
# The Flink dashboard (Angular) adds <style> elements at run time.
FLINK_CSP = "; ".join((*_BASE, "style-src 'self' 'unsafe-inline'"))

_EXTERNAL = re.compile(r"""<(?:script|link)\b[^>]*\b(?:src|href)=["'](https://[^"']+)["']""")
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def docs_csp(html: str) -> str:
    """The policy of the interactive API page (Swagger UI, as FastAPI renders
    it): the strict one, plus the origins its scripts and style sheets come
    from and the hashes of its inline scripts, so that exactly this page runs.
    Its widgets set inline styles, as the Flink dashboard's do."""
    origins = sorted({f"{u.scheme}://{u.netloc}" for u in map(urlsplit, _EXTERNAL.findall(html))})
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html)
    ]
    rest = [part for part in _BASE if not part.startswith("script-src")]
    return "; ".join(
        (
            *rest,
            " ".join(("script-src 'self'", *origins, *hashes)),
            " ".join(("style-src 'self'", *origins, "'unsafe-inline'")),
        )
    )


HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


class SecurityHeaders:
    """Add the headers above to every HTTP response that does not set its own."""

    def __init__(self, app: ASGIApp, *, flink_prefix: str = "/flink") -> None:
        self.app = app
        self.flink_prefix = flink_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        flink = path == self.flink_prefix or path.startswith(self.flink_prefix + "/")
        wanted = {**HEADERS, "content-security-policy": FLINK_CSP if flink else CSP}

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in wanted.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def trust_proxies(app: ASGIApp, proxies: list[str]) -> ASGIApp:
    """`app` behind uvicorn's proxy-header rule with only `proxies` trusted (the
    same rule uvicorn applies; `serve` turns uvicorn's own copy off so that the
    app, under any server or test client, is the one place that decides)."""
    if not proxies:
        return app
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    return ProxyHeadersMiddleware(app, trusted_hosts=proxies)  # type: ignore[arg-type,return-value]
