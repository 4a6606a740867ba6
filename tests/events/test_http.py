"""The webhook sender's contract (headers, redirects, caps, error words): httpx's
mock transport plays the receiver, real sockets where the network is the point."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from personatag.errors import InputError
from personatag.membership_events.http import (
    ACCEPTED_READ_MAX,
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    post,
    sign,
)
from tests.s3server import free_port

Handler = Callable[[httpx.Request], httpx.Response]
URL = "https://crm.example.com/hook"


def send(handler: Handler, url: str = URL, timeout_s: float = 5.0) -> str | None:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return post(url, "s3cret", b'{"events": []}', "d-1", timeout_s, client=client)


def test_a_signed_post_and_2xx_is_delivered() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    assert send(handler) is None
    (request,) = seen
    assert (request.method, str(request.url)) == ("POST", URL)
    assert request.content == b'{"events": []}'
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("personatag/")
    assert request.headers["accept-encoding"] == "identity"
    assert request.headers[DELIVERY_HEADER] == "d-1"
    timestamp = int(request.headers[TIMESTAMP_HEADER])
    assert request.headers[SIGNATURE_HEADER] == sign("s3cret", timestamp, request.content)


def test_a_redirect_is_not_followed_and_not_a_delivery() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(
            307, headers={"Location": "http://169.254.169.254/latest"}, content=b"moved"
        )

    assert send(handler) == "HTTP 307: moved"
    assert seen == [URL]  # nothing sent to where it pointed


def test_error_answers_keep_a_short_detail() -> None:
    assert send(lambda r: httpx.Response(500)) == "HTTP 500"
    assert (
        send(lambda r: httpx.Response(503, content=b"  busy, retry  \n")) == "HTTP 503: busy, retry"
    )
    assert send(lambda r: httpx.Response(400, content=b"x" * 10_000)) == "HTTP 400: " + "x" * 200


def test_a_huge_answer_is_not_read_whole() -> None:
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for _ in range(10_000):  # 640 MB if it were all read
            sent.append(1)
            yield b"y" * 65536

    assert send(lambda r: httpx.Response(200, content=chunks())) is None
    assert len(sent) * 65536 <= 2 * ACCEPTED_READ_MAX


def test_timeouts_and_failures_in_words() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    def reset(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("boom", request=request) from ConnectionResetError(
            104, "Connection reset by peer"
        )

    assert send(timeout, timeout_s=2.5) == "no answer within 2.5 s"
    assert send(reset) == "connection failed: Connection reset by peer"


def test_bad_urls_are_refused_before_sending() -> None:
    for url in ("ftp://crm.example.com/x", "https://user:pw@crm.example.com/", "file:///etc"):
        with pytest.raises(InputError, match="invalid webhook URL"):
            send(lambda r: httpx.Response(204), url=url)


def test_a_refused_connection_in_words() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    assert post(url, "s", b"{}", "d", 2.0) == "cannot connect: Connection refused"


@pytest.fixture
def silent() -> Iterator[str]:
    """A receiver that accepts the connection and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    sock.close()


def test_a_silent_receiver_times_out(silent: str) -> None:
    assert post(silent, "s", b"{}", "d", 0.3) == "no answer within 0.3 s"
