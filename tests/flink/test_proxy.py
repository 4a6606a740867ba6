"""The read-only Flink proxy, against a real HTTP upstream standing in for Flink."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from personatag.engines.flink.runtime.proxy import (
    make_proxy_server,
    parse_upstream,
    read_only_proxy,
)
from personatag.errors import ConfigError
from tests.s3server import free_port

ROOT = Path(__file__).resolve().parents[2]
PERSONATAG = Path(sys.executable).parent / "personatag"
BIG = bytes(range(256)) * 8192  # 2 MiB


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    peer: tuple[str, int] = ("", 0)


class _Upstream(BaseHTTPRequestHandler):
    """Answers every method, records every request it gets."""

    seen: list[Seen]
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        self.seen.append(
            Seen(
                self.command,
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
                self.client_address,
            )
        )
        if self.path.endswith("/slow"):
            threading.Event().wait(2)
        if self.path.endswith("/big"):
            status, body, ctype = 200, BIG, "application/octet-stream"
        elif self.path.endswith("/missing"):
            status, body, ctype = 404, b'{"errors": ["Not found"]}', "application/json"
        else:
            status = 200
            body = json.dumps({"method": self.command, "path": self.path}).encode()
            ctype = "application/json; charset=UTF-8"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"v1"')
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Set-Cookie", "flink=secret")
        self.send_header("X-Internal", "do-not-leak")
        self.send_header("Keep-Alive", "timeout=5")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Upstream:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        handler = type("Handler", (_Upstream,), {"seen": self.seen})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.close()


def _serve(upstream_url: str) -> Iterator[tuple[str, int]]:
    server = make_proxy_server(upstream_url, "127.0.0.1", 0, log_requests=False)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield ("127.0.0.1", int(server.server_address[1]))
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[tuple[str, int]]:
    yield from _serve(upstream.url)


def call(
    where: tuple[str, int], method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*where, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# -- passing through ----------------------------------------------------------------


def test_get_passes_status_body_content_type_and_query(
    proxy: tuple[str, int], upstream: Upstream
) -> None:
    status, headers, body = call(proxy, "GET", "/jobs/overview?a=1&b=x%20y&c=%2F")
    assert status == 200
    assert headers["content-type"] == "application/json; charset=UTF-8"
    assert json.loads(body) == {"method": "GET", "path": "/jobs/overview?a=1&b=x%20y&c=%2F"}
    assert [(s.method, s.path) for s in upstream.seen] == [
        ("GET", "/jobs/overview?a=1&b=x%20y&c=%2F")
    ]


def test_only_safe_headers_pass_either_way(proxy: tuple[str, int], upstream: Upstream) -> None:
    _, headers, body = call(
        proxy, "GET", "/overview", {"Accept": "application/json", "Cookie": "session=ours"}
    )
    assert headers["etag"] == '"v1"'
    assert headers["cache-control"] == "no-cache"
    assert headers["content-length"] == str(len(body))
    for dropped in ("set-cookie", "x-internal", "keep-alive"):
        assert dropped not in headers
    [seen] = upstream.seen
    assert seen.headers["accept"] == "application/json"
    assert "cookie" not in seen.headers
    assert seen.headers["host"] == upstream.url.removeprefix("http://")
    # Nothing of our own either (no user agent), and bodies come uncompressed.
    assert set(seen.headers) == {"host", "accept", "accept-encoding", "connection"}
    assert seen.headers["accept-encoding"] == "identity"


def test_calls_to_flink_reuse_pooled_connections(upstream: Upstream) -> None:
    app = read_only_proxy(upstream.url)
    for _ in range(4):
        assert _wsgi_get(app, "/overview")[0].startswith("200")
    assert _wsgi_get(app, "/taskmanagers/tm-1/logs/big")[2] == BIG
    assert _wsgi_get(app, "/jobs/nope/missing")[0].startswith("404")
    assert len(upstream.seen) == 6
    assert len({s.peer for s in upstream.seen}) == 1  # one connection to Flink


def test_upstream_errors_pass_through(proxy: tuple[str, int]) -> None:
    status, headers, body = call(proxy, "GET", "/jobs/nope/missing")
    assert status == 404
    assert json.loads(body) == {"errors": ["Not found"]}
    assert headers["content-type"] == "application/json"


def test_head_gives_headers_without_a_body(proxy: tuple[str, int], upstream: Upstream) -> None:
    status, headers, body = call(proxy, "HEAD", "/overview")
    assert status == 200 and body == b""
    assert headers["etag"] == '"v1"'
    assert [s.method for s in upstream.seen] == ["HEAD"]


def test_large_bodies_stream_intact(proxy: tuple[str, int]) -> None:
    status, _, body = call(proxy, "GET", "/taskmanagers/tm-1/logs/big")
    assert status == 200
    assert body == BIG


# -- refusing ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"])
def test_other_methods_are_refused_before_flink(
    proxy: tuple[str, int], upstream: Upstream, method: str
) -> None:
    status, headers, body = call(proxy, method, "/jobs/0123456789abcdef?mode=cancel")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    assert json.loads(body) == {
        "error": f"read-only: {method} is not allowed through the Flink proxy"
    }
    assert upstream.seen == []


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/0123456789abcdef/yarn-cancel",
        "/jobs/0123456789abcdef/yarn-stop",
        "/v1/jobs/0123456789abcdef/yarn-cancel",
        "/jobs/0123456789abcdef/./yarn-cancel",
        "/jobs/0123456789abcdef/x/../yarn-cancel?targetDirectory=/tmp",
        "/jobs/0123456789abcdef%2Fyarn-cancel",
        "/jobs/0123456789abcdef/YARN-CANCEL",
        "/jobs/0123456789abcdef/yarn-cancel;x=1",
        "/jars/1234_job.jar/plan?entry-class=Main",
    ],
)
def test_acting_get_endpoints_are_forbidden(
    proxy: tuple[str, int], upstream: Upstream, path: str
) -> None:
    status, headers, body = call(proxy, "GET", path)
    assert status == 403
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"].startswith("read-only: GET ")
    assert upstream.seen == []


def test_paths_cannot_climb_out_or_name_another_host(
    proxy: tuple[str, int], upstream: Upstream
) -> None:
    assert call(proxy, "GET", "/a/../../../etc/passwd")[0] == 200
    assert call(proxy, "GET", "//evil.example/x")[0] == 200
    assert call(proxy, "GET", "/%2e%2e/%2E%2E/config")[0] == 200
    assert [s.path for s in upstream.seen] == ["/etc/passwd", "/evil.example/x", "/config"]


def test_an_upstream_base_path_is_kept(upstream: Upstream) -> None:
    for where in _serve(upstream.url + "/base/"):
        assert call(where, "GET", "/../../overview?x=1")[0] == 200
    assert [s.path for s in upstream.seen] == ["/base/overview?x=1"]


def test_an_absolute_url_target_never_leaves_for_another_host(
    proxy: tuple[str, int], upstream: Upstream
) -> None:
    other = Upstream()
    try:
        other_host = other.url.removeprefix("http://")
        with socket.create_connection(proxy, timeout=10) as sock:
            sock.sendall(
                f"GET {other.url}/secret HTTP/1.1\r\nHost: {other_host}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.0 400") or reply.startswith(b"HTTP/1.1 400"), reply
        assert other.seen == [] and upstream.seen == []
    finally:
        other.close()


def test_an_upstream_that_is_down_gives_502() -> None:
    for where in _serve(f"http://127.0.0.1:{free_port()}"):
        status, headers, body = call(where, "GET", "/overview")
        assert status == 502
        assert headers["content-type"].startswith("application/json")
        assert "does not answer" in json.loads(body)["error"]


def test_an_upstream_that_does_not_answer_in_time_gives_504(upstream: Upstream) -> None:
    app = read_only_proxy(upstream.url, timeout=0.3)
    status, headers, body = _wsgi_get(app, "/jobs/slow")
    assert status.startswith("504")
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"] == (
        f"the Flink REST API at {upstream.url} did not answer within 0.3 s"
    )


# -- mounting ------------------------------------------------------------------------------


def _wsgi_get(
    app: Any, path: str, script: str = "", **extra: str
) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path, "SCRIPT_NAME": script, **extra}
    setup_testing_defaults(environ)
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        got["status"], got["headers"] = status, {k.lower(): v for k, v in headers}
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return got["status"], got["headers"], body


def test_a_mount_prefix_is_removed_and_its_root_redirects(upstream: Upstream) -> None:
    app = read_only_proxy(upstream.url, prefix="/flink/")
    status, _, body = _wsgi_get(app, "/flink/overview")
    assert status.startswith("200") and json.loads(body)["path"] == "/overview"
    # A bridge that already stripped the prefix passes the rest as is.
    status, _, _ = _wsgi_get(app, "/jobs/overview", script="/flink")
    assert status.startswith("200")
    status, headers, _ = _wsgi_get(app, "/flink")
    assert status.startswith("308") and headers["location"] == "/flink/"
    status, headers, _ = _wsgi_get(app, "", script="/ops/flink")
    assert status.startswith("308") and headers["location"] == "/ops/flink/"
    assert [s.path for s in upstream.seen] == ["/overview", "/jobs/overview"]


def test_a_header_that_would_split_the_request_is_refused(upstream: Upstream) -> None:
    app = read_only_proxy(upstream.url)
    status, _, body = _wsgi_get(app, "/overview", HTTP_ACCEPT="a\r\nX-Evil: 1")
    assert status.startswith("400") and b"bad request header" in body
    assert upstream.seen == []


@pytest.mark.parametrize(
    "url", ["ftp://flink:21", "http://", "127.0.0.1:8081", "http://u:p@flink:8081", "http://h:x"]
)
def test_bad_upstream_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="invalid Flink URL"):
        parse_upstream(url)


# -- the command ----------------------------------------------------------------------------


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_flink_ui_command_serves_until_interrupted(upstream: Upstream) -> None:
    """Started as a script's background job would be (SIGINT ignored on entry),
    it still stops cleanly on SIGINT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")}
    env["PERSONATAG_FLINK_URL"] = upstream.url
    port = free_port()
    proc = subprocess.Popen(
        [str(PERSONATAG), "flink", "ui", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=_ignore_sigint,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in first and upstream.url in first
        status, _, body = call(("127.0.0.1", port), "GET", "/overview")
        assert status == 200 and json.loads(body)["path"] == "/overview"
        assert call(("127.0.0.1", port), "PATCH", "/jobs/x")[0] == 405
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The command's own reachability check, then the proxied call; never the PATCH.
    assert [(s.method, s.path) for s in upstream.seen] == [("GET", "/overview")] * 2


# -- a real Flink cluster -------------------------------------------------------------------


@pytest.mark.skipif(
    not os.environ.get("PERSONATAG_TEST_FLINK_URL"),
    reason="PERSONATAG_TEST_FLINK_URL is not set (`make test` starts a local cluster)",
)
def test_real_flink_through_the_proxy() -> None:
    for where in _serve(os.environ["PERSONATAG_TEST_FLINK_URL"]):
        status, headers, body = call(where, "GET", "/overview")
        assert status == 200
        assert headers["content-type"].startswith("application/json")
        overview = json.loads(body)
        assert "taskmanagers" in overview and "flink-version" in overview
        status, headers, _ = call(where, "GET", "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        status, _, body = call(where, "PATCH", "/jobs/00000000000000000000000000000000")
        assert status == 405
        assert json.loads(body)["error"].startswith("read-only: PATCH")
