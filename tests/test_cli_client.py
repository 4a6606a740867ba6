"""The CLI's Client: what RemoteClient sends and how it reads the API's answers
(over httpx.MockTransport: the HTTP shapes are the point here; the commands
against a real server are in tests/web/test_remote_cli.py), and the LocalClient
over each store."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from personatag.cli import client as client_mod
from personatag.cli.client import LocalClient, RemoteClient, open_client
from personatag.config import Settings
from personatag.errors import (
    ConflictError,
    InputError,
    NotFoundError,
    PersonatagError,
    RemoteError,
)

URL = "http://server.test:8000"
Handler = Callable[[httpx.Request], httpx.Response]


def _settings(tmp_path: Path, token: str | None = "pt_secret") -> Settings:  # noqa: S107
    return Settings(
        data_dir=tmp_path,
        server_url=URL,
        token=None if token is None else SecretStr(token),
    )


def _remote(tmp_path: Path, handler: Handler) -> RemoteClient:
    return RemoteClient(_settings(tmp_path), transport=httpx.MockTransport(handler))


def _recording(answers: list[httpx.Response]) -> tuple[list[httpx.Request], Handler]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return answers.pop(0)

    return seen, handler


def _error(status: int, message: str, **extra: Any) -> httpx.Response:
    body = {"error": {"status": status, "code": "x", "message": message, **extra}}
    return httpx.Response(status, json=body)


def test_open_client_picks_by_token(tmp_path: Path) -> None:
    with open_client(_settings(tmp_path, token=None)) as local:
        assert isinstance(local, LocalClient)
    with open_client(_settings(tmp_path)) as remote:
        assert isinstance(remote, RemoteClient)
    # Nothing was opened or created locally for either.
    assert not any(tmp_path.iterdir())


def test_remote_needs_a_token(tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="PERSONATAG_TOKEN is not set"):
        RemoteClient(_settings(tmp_path, token=None))


def test_jobs_calls(tmp_path: Path) -> None:
    job = {"id": 3, "request_id": "a/b", "status": "cancelled"}
    seen, handler = _recording(
        [
            httpx.Response(200, json={"queued": 1, "running": 2, "recent": [], "other": 0}),
            httpx.Response(200, json={"jobs": [job]}),
            httpx.Response(200, json={"jobs": []}),
            httpx.Response(200, json=job),
            httpx.Response(200, json=job),
        ]
    )
    with _remote(tmp_path, handler) as c:
        assert c.status() == {"queued": 1, "running": 2, "recent": []}
        assert c.list_jobs(None, 50) == [job]
        assert c.list_jobs("failed", 5) == []
        assert c.get_job("a/b") == job
        assert c.cancel_job("a/b") == job
    calls = [(r.method, r.url.raw_path.decode()) for r in seen]
    assert calls == [
        ("GET", "/api/v1/status"),
        ("GET", "/api/v1/jobs?limit=50"),
        ("GET", "/api/v1/jobs?status=failed&limit=5"),
        ("GET", "/api/v1/jobs/a%2Fb"),
        ("POST", "/api/v1/jobs/a%2Fb/cancel"),
    ]
    for r in seen:
        assert r.headers["authorization"] == "Bearer pt_secret"
        assert r.headers["accept"] == "application/json"
        assert r.url.host == "server.test" and r.url.port == 8000
    assert seen[-1].content == b""


def test_preview_sends_only_given_fields(tmp_path: Path) -> None:
    result = {"count": 2, "sample": ["c1", "c2"], "would_enter": 1, "would_exit": 0}
    seen, handler = _recording([httpx.Response(200, json=result)] * 3)
    with _remote(tmp_path, handler) as c:
        assert c.preview('region = "EMEA"', persona=None, as_of=None, sample=10) == result
        c.preview("x = 1", persona="emea", as_of="2026-01-01T00:00:00Z", sample=0)
        c.preview("x = 1", persona=None, as_of=None, sample=1, action="untag")
    assert [r.url.path for r in seen] == ["/api/v1/preview"] * 3
    assert seen[0].headers["content-type"] == "application/json"
    assert json.loads(seen[0].content) == {"expr": 'region = "EMEA"', "sample": 10}
    assert json.loads(seen[1].content) == {
        "expr": "x = 1",
        "persona": "emea",
        "as_of": "2026-01-01T00:00:00Z",
        "sample": 0,
    }
    assert json.loads(seen[2].content) == {"expr": "x = 1", "sample": 1, "action": "untag"}


def test_submit_json_and_csv(tmp_path: Path) -> None:
    request = tmp_path / "req.json"
    request.write_text('{"version": 1, "request_id": "r1", "limit": NaN}')
    csv_file = tmp_path / 'odd"name.csv'
    csv_file.write_text("contact_id,persona,action\nc1,emea,tag\n")
    seen, handler = _recording(
        [
            httpx.Response(201, json={"request_id": "r1", "key": "r1.json", "more": 1}),
            httpx.Response(201, json={"request_id": "odd_name", "key": "odd_name.csv"}),
        ]
    )
    with _remote(tmp_path, handler) as c:
        assert c.submit(request, wait=False, timeout=600) == {
            "request_id": "r1",
            "key": "r1.json",
        }
        assert c.submit(csv_file, wait=False, timeout=600)["key"] == "odd_name.csv"
    assert seen[0].url.raw_path == b"/api/v1/requests"
    # NaN goes to the server as written (it answers what is wrong with it).
    assert b"NaN" in seen[0].content
    assert seen[1].url.raw_path == b"/api/v1/requests/upload"
    assert seen[1].headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'name="file"; filename="odd_name.csv"' in seen[1].content
    assert b"c1,emea,tag" in seen[1].content


def test_submit_rejects_unreadable_and_invalid_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")

    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing is sent")

    with _remote(tmp_path, handler) as c:
        with pytest.raises(InputError, match=r"bad\.json: not valid JSON"):
            c.submit(bad, wait=False, timeout=1)
        with pytest.raises(InputError, match=r"cannot read .*missing\.json"):
            c.submit(tmp_path / "missing.json", wait=False, timeout=1)


def test_submit_wait_polls_until_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_mod, "POLL_S", 0.0)
    request = tmp_path / "req.json"
    request.write_text('{"version": 1, "request_id": "r 2"}')
    summary = {"request_id": "r 2", "status": "succeeded", "counts": {"tagged": 3}}
    seen, handler = _recording(
        [
            httpx.Response(202, json={"request_id": "r 2", "key": "r 2.json"}),
            httpx.Response(200, json={"status": "submitted", "summary": None}),
            httpx.Response(200, json={"status": "succeeded", "summary": summary}),
        ]
    )
    with _remote(tmp_path, handler) as c:
        assert c.submit(request, wait=True, timeout=5) == summary
    assert seen[0].url.params == httpx.QueryParams({"wait": "true", "timeout": "5"})
    assert [r.url.raw_path for r in seen[1:]] == [b"/api/v1/requests/r%202"] * 2
    # Each call may last the server's wait plus 30 s.
    assert all(r.extensions["timeout"]["read"] == 35 for r in seen)


def test_submit_wait_gives_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_mod, "POLL_S", 0.01)
    request = tmp_path / "req.json"
    request.write_text('{"version": 1, "request_id": "r3"}')

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={"request_id": "r3", "key": "r3.json"})
        return httpx.Response(200, json={"status": "submitted"})

    with (
        _remote(tmp_path, handler) as c,
        pytest.raises(PersonatagError, match=r"no result for r3 after 0\.05 s: is a dispatcher"),
    ):
        c.submit(request, wait=True, timeout=0.05)


ROWS = [{"row": n, "reason": f"bad {n}"} for n in range(1, 7)]


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (_error(401, "invalid token"), RemoteError, "the server refused the token: invalid token"),
        (_error(403, "editor needed"), RemoteError, "the server refused the token: editor needed"),
        (_error(404, "no job 'x'"), NotFoundError, "no job 'x'"),
        (_error(409, "finished"), ConflictError, "finished"),
        (_error(400, "bad expr"), InputError, "bad expr"),
        (_error(413, "too big"), InputError, "too big"),
        (
            _error(422, "rows rejected", rows=ROWS),
            InputError,
            "rows rejected (row 1: bad 1; row 2: bad 2; row 3: bad 3; row 4: bad 4; "
            "row 5: bad 5; ...)",
        ),
        (_error(422, "one row", rows=ROWS[:1]), InputError, "one row (row 1: bad 1)"),
        (_error(500, "boom"), RemoteError, "the server failed (500): boom"),
        (
            httpx.Response(502, text="<html>\n Bad   Gateway</html>"),
            RemoteError,
            f"the server at {URL} answered 502: <html> Bad Gateway</html>",
        ),
        (httpx.Response(503), RemoteError, f"the server at {URL} answered 503"),
        (
            httpx.Response(200, text="<html>hello</html>"),
            RemoteError,
            f"the server at {URL} answered GET /api/v1/jobs/x with something other than "
            "JSON: is PERSONATAG_SERVER_URL a personatag server?",
        ),
    ],
)
def test_answers_become_errors(
    tmp_path: Path, answer: httpx.Response, error: type[Exception], message: str
) -> None:
    with _remote(tmp_path, lambda _: answer) as c, pytest.raises(error) as caught:
        c.get_job("x")
    assert type(caught.value) is error
    assert str(caught.value) == message


def _raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


def _caused(exc: Exception, cause: BaseException) -> Exception:
    exc.__cause__ = cause
    return exc


HINT = f"cannot reach the personatag server at {URL}"


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (
            _caused(httpx.ConnectError("refused"), ConnectionRefusedError(111, "refused")),
            f"{HINT} (is `personatag serve` running?)",
        ),
        (
            httpx.ReadTimeout("timed out"),
            f"{HINT}: no answer in time (is `personatag serve` running?)",
        ),
        (
            _caused(
                httpx.ConnectError("[Errno -2] Name or service not known"),
                OSError(-2, "Name or service not known"),
            ),
            f"{HINT}: Name or service not known (is `personatag serve` running?)",
        ),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            f"{HINT}: Server disconnected without sending a response. "
            "(is `personatag serve` running?)",
        ),
    ],
)
def test_unreachable(tmp_path: Path, exc: Exception, message: str) -> None:
    with _remote(tmp_path, _raising(exc)) as c, pytest.raises(RemoteError) as caught:
        c.status()
    assert str(caught.value) == message


def test_refused_by_a_real_socket(tmp_path: Path) -> None:
    """The refused case as the operating system reports it (no mock)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(
        data_dir=tmp_path, server_url=f"http://127.0.0.1:{port}", token=SecretStr("pt_x")
    )
    with RemoteClient(settings) as c, pytest.raises(RemoteError) as caught:
        c.status()
    assert str(caught.value) == (
        f"cannot reach the personatag server at http://127.0.0.1:{port} "
        "(is `personatag serve` running?)"
    )


def test_local_client(store_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, store_url=store_url)
    with LocalClient(settings) as c:
        assert c.status() == {"queued": 0, "running": 0, "recent": []}
        assert c.list_jobs(None, 5) == []
        with pytest.raises(NotFoundError):
            c.get_job("nothing-here")
        result = c.preview('region = "EMEA"', persona=None, as_of=None, sample=3)
        assert result["count"] == 0
        with pytest.raises(InputError, match="invalid --as-of 'yesterday'"):
            c.preview('region = "EMEA"', persona=None, as_of="yesterday", sample=3)
