"""The Flink REST client's contract (errors, JSON, pooling) without a cluster:
httpx's mock transport plays Flink; a refused connection is a real closed port."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from personatag.engines.flink.runtime.rest import FlinkRest, FlinkRestError, FlinkUnreachable
from tests.s3server import free_port

Handler = Callable[[httpx.Request], httpx.Response]


def rest_with(handler: Handler) -> FlinkRest:
    return FlinkRest("http://flink.test:8081/", transport=httpx.MockTransport(handler))


def test_get_and_cancel_send_what_flink_expects() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "PATCH":
            return httpx.Response(202, content=b"")
        return httpx.Response(200, json={"jobs": [{"id": "j1", "state": "RUNNING"}]})

    with rest_with(handler) as rest:
        assert rest.base_url == "http://flink.test:8081"
        assert rest.jobs_overview() == [{"id": "j1", "state": "RUNNING"}]
        assert rest.cancel("j1") is None  # an empty body is None, not a JSON error
        assert rest.request("POST", "/jars/x/run", {"a": 1}) == {
            "jobs": [{"id": "j1", "state": "RUNNING"}]
        }
    assert [(r.method, str(r.url)) for r in seen] == [
        ("GET", "http://flink.test:8081/jobs/overview"),
        ("PATCH", "http://flink.test:8081/jobs/j1?mode=cancel"),
        ("POST", "http://flink.test:8081/jars/x/run"),
    ]
    assert "content-type" not in seen[0].headers
    assert seen[2].headers["content-type"] == "application/json"
    assert json.loads(seen[2].content) == {"a": 1}


def test_an_error_status_carries_flinks_first_error_lines() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/jobs/nope":
            errors = ["Job nope not found\n\tat org.apache.flink...", "second"]
            return httpx.Response(404, json={"errors": errors})
        if request.url.path == "/plain":
            return httpx.Response(503, content=b"x" * 2000)
        return httpx.Response(500, content=b"")

    rest = rest_with(handler)
    with pytest.raises(FlinkRestError) as caught:
        rest.job("nope")
    assert caught.value.status == 404
    assert str(caught.value) == "Flink REST GET /jobs/nope: 404 Job nope not found; second"
    with pytest.raises(FlinkRestError) as caught:
        rest.get("/plain")
    assert caught.value.status == 503
    assert str(caught.value) == "Flink REST GET /plain: 503 " + "x" * 500
    with pytest.raises(FlinkRestError, match=r"^Flink REST PATCH /jobs/j\?mode=cancel: 500 $"):
        rest.cancel("j")


def test_a_timeout_is_unreachable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(FlinkUnreachable) as caught:
        rest_with(handler).overview()
    assert str(caught.value) == (
        "the Flink cluster at http://flink.test:8081 does not answer (timed out)"
    )


def test_a_refused_connection_is_unreachable() -> None:
    port = free_port()
    with pytest.raises(FlinkUnreachable, match=r"at http://127\.0\.0\.1:\d+ does not answer \("):
        FlinkRest(f"http://127.0.0.1:{port}", timeout=2.0).overview()


class _Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    peers: list[tuple[str, int]]

    def do_GET(self) -> None:
        self.peers.append(self.client_address)
        if self.path == "/slow":
            threading.Event().wait(3)
        body = b'{"flink-version": "1.20"}'
        # The slow call's client has given up by now.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[tuple[str, int]]]]:
    peers: list[tuple[str, int]] = []
    handler = type("Handler", (_Slow,), {"peers": peers})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", peers
    httpd.shutdown()
    httpd.server_close()


def test_polls_reuse_one_connection(server: tuple[str, list[tuple[str, int]]]) -> None:
    url, peers = server
    with FlinkRest(url) as rest:
        for _ in range(5):
            assert rest.get("/config") == {"flink-version": "1.20"}
    assert len(peers) == 5 and len(set(peers)) == 1  # one client port: one connection


def test_a_slow_answer_times_out(server: tuple[str, list[tuple[str, int]]]) -> None:
    url, _ = server
    with pytest.raises(FlinkUnreachable, match=r"does not answer \(timed out\)"):
        FlinkRest(url, timeout=0.3).get("/slow")
