"""A read-only proxy for Flink's REST API and web UI: a plain WSGI application.

Flink's ``web.cancel.enable: false`` only hides the dashboard's cancel button;
``PATCH /jobs/:jobid`` still cancels a job. This proxy forwards GET and HEAD to
one upstream and refuses everything else before it reaches Flink, plus the GET
endpoints that act: the legacy ``/jobs/:jobid/yarn-cancel`` and ``yarn-stop``,
and ``/jars/:jarid/plan`` (runs the jar's ``main()`` on the JobManager).

Stdlib only. A FastAPI/Starlette app can mount it (``WSGIMiddleware``); the CLI
serves it with a threaded wsgiref server (``personatag flink ui``).
"""

from __future__ import annotations

import http.client
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

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self._conn = conn
        self._resp = resp

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = self._resp.read1(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                # Headers are gone already: all we can do is end the body early.
                log.warning("the Flink upstream broke off a response: %s", exc)
                return
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        self._resp.close()
        self._conn.close()


def read_only_proxy(upstream_url: str, prefix: str = "", timeout: float = 30.0) -> WSGIApplication:
    """A WSGI app forwarding GET/HEAD (path and query) to ``upstream_url`` only.

    Other methods get 405 and acting GET endpoints 403, without reaching Flink; an
    upstream that does not answer gives 502 (504 after ``timeout`` seconds). ``prefix``
    is the path the app is mounted under: it is removed from request paths that still
    carry it (some ASGI-to-WSGI bridges pass the full path). Requests only ever go to
    the upstream's host and port, under its base path.
    """
    upstream = parse_upstream(upstream_url)
    mount = _normal_prefix(prefix)
    connection_class = (
        http.client.HTTPSConnection if upstream.scheme == "https" else http.client.HTTPConnection
    )

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
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
            target = upstream.base_path + _encode(cleaned, _PATH_SAFE)
            if query:
                target += "?" + _encode(query, _QUERY_SAFE)
        except _Refused as exc:
            return _json_response(start_response, method, exc.status, str(exc))
        return _forward(
            upstream, connection_class, timeout, method, target, environ, start_response
        )

    return app


def _forward(
    upstream: Upstream,
    connection_class: type[http.client.HTTPConnection],
    timeout: float,
    method: str,
    target: str,
    environ: WSGIEnvironment,
    start_response: StartResponse,
) -> Iterable[bytes]:
    headers = {
        name: str(environ[key]) for key, name in FORWARDED_REQUEST_HEADERS.items() if key in environ
    }
    headers["Connection"] = "close"
    conn = connection_class(upstream.host, upstream.port, timeout=timeout)
    try:
        conn.request(method, target, headers=headers)
        resp = conn.getresponse()
    except ValueError as exc:  # http.client refuses a header value with CR/LF and the like
        conn.close()
        return _json_response(start_response, method, 400, f"bad request header: {exc}")
    except TimeoutError:
        conn.close()
        return _json_response(
            start_response,
            method,
            504,
            f"the Flink REST API at {upstream.url} did not answer within {timeout:g} s",
        )
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        reason = str(exc) or type(exc).__name__
        return _json_response(
            start_response,
            method,
            502,
            f"the Flink REST API at {upstream.url} does not answer ({reason})",
        )
    passed = [(k, v) for k, v in resp.getheaders() if k.lower() in SAFE_RESPONSE_HEADERS]
    start_response(f"{resp.status} {resp.reason or _reason(resp.status)}", passed)
    if method == "HEAD":
        resp.close()
        conn.close()
        return []
    return _Body(conn, resp)


# -- serving it ---------------------------------------------------------------


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    # Browsers open several connections at once; one slow call must not stall the rest.
    daemon_threads = True
    # Ctrl-C stops at once: closing does not wait for calls still in flight (a
    # read-only view loses nothing), which could otherwise hold it for up to the
    # upstream timeout.
    block_on_close = False


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
