"""A read-only proxy for Flink's REST API and web UI: a plain WSGI application.

Flink's ``web.cancel.enable: false`` only hides the dashboard's cancel button;
``PATCH /jobs/:jobid`` still cancels a job. This proxy forwards GET and HEAD to
one upstream and refuses everything else before it reaches Flink, plus the GET
endpoints that act: the legacy ``/jobs/:jobid/yarn-cancel`` and ``yarn-stop``,
and ``/jars/:jarid/plan`` (runs the jar's ``main()`` on the JobManager).

Upstream calls go through one pooled httpx client per app, so the dashboard's
many small GETs reuse connections. A FastAPI/Starlette app can mount it
(``WSGIMiddleware``); the CLI serves it with a threaded wsgiref server
(``personatag flink ui``).
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx

from personatag.errors import ConfigError

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

ALLOWED_METHODS = ("GET", "HEAD")
# Everything else (hop-by-hop headers, Set-Cookie, CORS, ...) stays behind.
SAFE_RESPONSE_HEADERS = frozenset(
    {"content-type", "content-length", "cache-control", "etag", "last-modified"}
)
# Request headers passed on; cookies and credentials meant for us never reach Flink.
FORWARDED_REQUEST_HEADERS = {
    "HTTP_ACCEPT": "Accept",
    "HTTP_ACCEPT_LANGUAGE": "Accept-Language",
    "HTTP_IF_NONE_MATCH": "If-None-Match",
    "HTTP_IF_MODIFIED_SINCE": "If-Modified-Since",
}
# GET endpoints of Flink's REST API that change or run something.
_ACTING_SEGMENTS = frozenset({"yarn-cancel", "yarn-stop"})
_CHUNK = 64 * 1024
# RFC 3986 pchar plus '/': what may stay unescaped in a path we send.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
# A query is passed as received; '%' stays so existing escapes survive.
_QUERY_SAFE = "/?:@!$&'()*+,;=%-._~"
_NO_BODY = [("Content-Length", "0")]


@dataclass(frozen=True)
class Upstream:
    """Where requests go: scheme, host, port and a base path (no trailing '/')."""

    scheme: str
    host: str
    port: int
    base_path: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base_path}"


def parse_upstream(url: str) -> Upstream:
    """Validate an upstream URL (http or https, a host, no credentials, query or fragment)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"invalid Flink URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"invalid Flink URL {url!r}: expected http://HOST:PORT")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(
            f"invalid Flink URL {url!r}: no credentials, query or fragment; "
            "expected http://HOST:PORT[/PATH]"
        )
    default = 443 if parts.scheme == "https" else 80
    return Upstream(parts.scheme, parts.hostname, port or default, parts.path.rstrip("/"))


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _normal_prefix(prefix: str) -> str:
    prefix = prefix.strip()
    if not prefix or prefix == "/":
        return ""
    return "/" + prefix.strip("/")


def _clean_path(path: str) -> str:
    """Resolve '.', '..' and empty segments so a path cannot leave the upstream base path.

    ``path`` is a WSGI PATH_INFO: already unescaped, one character per byte.
    """
    if not path.startswith("/"):
        # An absolute-form target (`GET http://other/ HTTP/1.1`) or garbage.
        raise _Refused(400, "the request path must start with '/'")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise _Refused(400, "the request path contains a control character")
    stack: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if stack:
                stack.pop()
            continue
        stack.append(seg)
    cleaned = "/" + "/".join(stack)
    if stack and path.endswith("/"):
        cleaned += "/"
    return cleaned


def _check_not_acting(path: str) -> None:
    """403 for the GET endpoints that cancel, stop or run something in Flink."""
    # Flink's router ignores ';' parameters and is matched case-sensitively, but
    # refusing more than Flink would match costs nothing here.
    segments = [s.split(";", 1)[0].lower() for s in path.split("/") if s]
    for i, seg in enumerate(segments):
        if seg in _ACTING_SEGMENTS:
            raise _Refused(403, f"read-only: GET {path} stops or cancels a job and is not allowed")
        if seg == "jars" and i + 2 < len(segments) and segments[i + 2] == "plan":
            raise _Refused(403, f"read-only: GET {path} runs the jar's main() and is not allowed")


def _encode(text: str, safe: str) -> str:
    try:
        raw = text.encode("latin-1")  # WSGI strings carry one byte per character
    except UnicodeEncodeError:
        raise _Refused(400, "the request is not valid WSGI (non-latin-1 characters)") from None
    return quote(raw, safe=safe)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _json_response(
    start_response: StartResponse,
    method: str,
    status: int,
    message: str,
    extra: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    body = json.dumps({"error": message}).encode()
    headers = [
        ("Content-Type", "application/json; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        *extra,
    ]
    start_response(f"{status} {_reason(status)}", headers)
    return [] if method == "HEAD" else [body]


class _Body:
    """Streams the upstream body to the WSGI server; close() releases the connection."""

    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp

    def __iter__(self) -> Iterator[bytes]:
        try:
            # Raw: bytes pass as Flink sent them, Content-Length and all.
            yield from self._resp.iter_raw(_CHUNK)
        except httpx.HTTPError as exc:
            # Headers are gone already: all we can do is end the body early.
            log.warning("the Flink upstream broke off a response: %s", exc)

    def close(self) -> None:
        self._resp.close()


def _client(timeout: float) -> httpx.Client:
    # Only what we choose reaches Flink: no default Accept or User-Agent, no
    # compression (bodies pass through as sent), no proxy from the environment.
    client = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)
    for name in ("Accept", "User-Agent"):
        del client.headers[name]
    client.headers["Accept-Encoding"] = "identity"
    return client


class _ReadOnlyProxy:
    """The WSGI app `read_only_proxy` returns; close() ends its pooled connections."""

    def __init__(self, upstream: Upstream, mount: str, timeout: float) -> None:
        self.upstream = upstream
        self.mount = mount
        self.timeout = timeout
        self.client = _client(timeout)

    def close(self) -> None:
        self.client.close()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if method not in ALLOWED_METHODS:
            return _json_response(
                start_response,
                method,
                405,
                f"read-only: {method} is not allowed through the Flink proxy",
                [("Allow", ", ".join(ALLOWED_METHODS))],
            )
        path = str(environ.get("PATH_INFO", ""))
        query = str(environ.get("QUERY_STRING", ""))
        script = str(environ.get("SCRIPT_NAME", ""))
        mount = self.mount
        if mount and (path == mount or path.startswith(mount + "/")):
            script, path = script + mount, path[len(mount) :]
        try:
            if not path:
                # The UI's assets are relative (<base href="./">): it needs the trailing '/'.
                location = _encode(script, _PATH_SAFE) + "/"
                if query:
                    location += "?" + _encode(query, _QUERY_SAFE)
                start_response("308 Permanent Redirect", [("Location", location), *_NO_BODY])
                return []
            cleaned = _clean_path(path)
            _check_not_acting(cleaned)
            target = self.upstream.base_path + _encode(cleaned, _PATH_SAFE)
            if query:
                target += "?" + _encode(query, _QUERY_SAFE)
        except _Refused as exc:
            return _json_response(start_response, method, exc.status, str(exc))
        return self._forward(method, target, environ, start_response)

    def _forward(
        self, method: str, target: str, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        upstream = self.upstream
        try:
            headers = [
                (name.encode(), str(environ[key]).encode("latin-1"))
                for key, name in FORWARDED_REQUEST_HEADERS.items()
                if key in environ
            ]
            # raw_path: the target goes out exactly as built above, never re-normalised.
            url = httpx.URL(
                scheme=upstream.scheme,
                host=upstream.host,
                port=upstream.port,
                raw_path=target.encode("ascii"),
            )
            request = self.client.build_request(method, url, headers=headers)
            resp = self.client.send(request, stream=True)
        except (ValueError, httpx.LocalProtocolError) as exc:
            # A header value with CR/LF, or one that is not latin-1.
            return _json_response(start_response, method, 400, f"bad request header: {exc}")
        except httpx.TimeoutException:
            return _json_response(
                start_response,
                method,
                504,
                f"the Flink REST API at {upstream.url} did not answer within {self.timeout:g} s",
            )
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            return _json_response(
                start_response,
                method,
                502,
                f"the Flink REST API at {upstream.url} does not answer ({reason})",
            )
        passed = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in resp.headers.raw
            if k.decode("latin-1").lower() in SAFE_RESPONSE_HEADERS
        ]
        status = resp.status_code
        start_response(f"{status} {resp.reason_phrase or _reason(status)}", passed)
        if method == "HEAD":
            resp.close()
            return []
        return _Body(resp)


def read_only_proxy(upstream_url: str, prefix: str = "", timeout: float = 30.0) -> WSGIApplication:
    """A WSGI app forwarding GET/HEAD (path and query) to ``upstream_url`` only.

    Other methods get 405 and acting GET endpoints 403, without reaching Flink; an
    upstream that does not answer gives 502 (504 after ``timeout`` seconds). ``prefix``
    is the path the app is mounted under: it is removed from request paths that still
    carry it (some ASGI-to-WSGI bridges pass the full path). Requests only ever go to
    the upstream's host and port, under its base path.
    """
    return _ReadOnlyProxy(parse_upstream(upstream_url), _normal_prefix(prefix), timeout)


# -- serving it ---------------------------------------------------------------


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    # Browsers open several connections at once; one slow call must not stall the rest.
    daemon_threads = True
    # Ctrl-C stops at once: closing does not wait for calls still in flight (a
    # read-only view loses nothing), which could otherwise hold it for up to the
    # upstream timeout.
    block_on_close = False

    def server_close(self) -> None:
        super().server_close()
        app = self.get_app()
        if isinstance(app, _ReadOnlyProxy):
            app.close()


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_proxy_server(
    upstream_url: str, host: str = "127.0.0.1", port: int = 8082, *, log_requests: bool = True
) -> WSGIServer:
    """A threaded wsgiref server for the proxy, bound but not yet serving (port 0: any)."""
    app = read_only_proxy(upstream_url)
    handler = WSGIRequestHandler if log_requests else _QuietHandler
    try:
        return make_server(
            host,
            port,
            app,
            server_class=_ThreadingWSGIServer6 if ":" in host else _ThreadingWSGIServer,
            handler_class=handler,
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose another --port "
            "or --host"
        ) from None
