"""`personatag serve` as a real process: health, readiness, login, and a request
submitted through the API run by the embedded dispatcher."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.service import Backoff, Service
from personatag.store import Store, open_store
from personatag.web import create_app
from personatag.web.auth import CSRF_HEADER
from tests.helpers import add_contacts, population
from tests.web.serving import serving


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")}
    return env | {"PERSONATAG_DATA_DIR": str(data_dir), "PERSONATAG_DISPATCHER_POLL_S": "0.1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "personatag.cli", *args]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(base URL, admin password) of a running `personatag serve --port 0`."""
    env = _env(tmp_path)
    subprocess.run(_cli("init"), env=env, check=True, capture_output=True)
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    add_contacts(store, population(40))
    add_persona(store, "emea", name="EMEA", category="region")
    store.dispose()
    with serving(env, tmp_path / "serve.log") as (url, printed):
        passwords = [p for p in printed if p.startswith("admin password: ")]
        assert passwords, "the first admin's password was not printed"
        yield url, passwords[0].removeprefix("admin password: ").strip()


@pytest.mark.slow
def test_serve(server: tuple[str, str]) -> None:
    url, password = server
    with httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/healthz").text == "ok\n"
        assert client.get("/readyz").json() == {"ready": True, "reasons": []}
        r = client.post("/api/v1/login", json={"username": "admin", "password": password})
        assert r.status_code == 200
        csrf = {CSRF_HEADER: r.json()["csrf_token"]}
        body = {"version": 1, "request_id": "live-1", "persona": "emea", "expr": 'region = "EMEA"'}
        r = client.post("/api/v1/requests?wait=true&timeout=45", json=body, headers=csrf)
        assert r.status_code == 200, r.text
        assert r.json()["summary"]["status"] == "succeeded"
        assert r.json()["summary"]["counts"]["tagged"] == 10
        shown = client.get("/api/v1/requests/live-1").json()
        assert shown["job"]["submitted_by"] == "admin"
        summary = client.get("/api/v1/requests/live-1/results/summary.json").json()
        assert summary["request_id"] == "live-1"
        assert client.get("/api/v1/personas/emea").json()["members"] == 10
        metrics = client.get("/metrics").text
        assert 'personatag_requests_total{status="succeeded"} 1.0' in metrics


def _wait_for(check: object, what: str, timeout_s: float = 30.0) -> float:
    """Poll `check()` until it is true; the seconds it took (no bound is asserted
    on them: the suite never asserts timings, the bench measures them)."""
    import time

    started = time.monotonic()
    while not check():  # type: ignore[operator]
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.slow
def test_serve_keeps_ongoing_criteria_true(server: tuple[str, str], tmp_path: Path) -> None:
    url, password = server
    with httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/api/v1/login", json={"username": "admin", "password": password})
        csrf = {CSRF_HEADER: r.json()["csrf_token"]}
        body = {
            "name": "emea-live",
            "persona": "emea",
            "expr": 'region = "EMEA" and seniority >= 5',
            "mode": "ongoing",
            "exit": "remove",
        }
        assert client.post("/api/v1/criteria", json=body, headers=csrf).status_code == 201

        def active() -> bool:
            crits = client.get("/api/v1/stream").json()["criteria"]
            return [c["status"] for c in crits] == ["active"]

        _wait_for(active, "the swap-in of emea-live@1")
        assert client.get("/api/v1/personas/emea").json()["members"] == 4

        def holds(contact: str) -> bool:
            shown = client.get(f"/api/v1/contacts/{contact}").json()
            return "emea" in [p["persona"] for p in shown["personas"]]

        # Through the API ...
        r = client.patch(
            "/api/v1/contacts/c0001",
            json={"fields": {"region": "EMEA", "seniority": 9}},
            headers=csrf,
        )
        assert r.status_code == 200, r.text
        _wait_for(lambda: holds("c0001"), "c0001 entering emea")
        # ... and through the CLI on the same store, in and out again.
        env = _env(tmp_path)
        subprocess.run(
            _cli("contact", "set", "c0002", "region=EMEA", "seniority=8"), env=env, check=True
        )
        _wait_for(lambda: holds("c0002"), "c0002 entering emea")
        subprocess.run(_cli("contact", "set", "c0002", "seniority=1"), env=env, check=True)
        _wait_for(lambda: not holds("c0002"), "c0002 leaving emea")
        shown = client.get("/api/v1/contacts/c0002").json()
        assert [e["change"] for e in shown["log"]][:2] == ["exit", "enter"]
        assert shown["log"][0]["criterion"] == "emea-live@1"
        metrics = client.get("/metrics").text
        assert 'personatag_stream_memberships_changed_total{change="enter"} 6.0' in metrics
        assert "personatag_stream_lag_changes 0.0" in metrics


def test_the_apps_lifespan_starts_and_stops_its_services(settings: Settings, store: Store) -> None:
    """`serve` hands its services to the app: they start with its lifespan, stop
    when it ends, and /readyz names one whose loop ended (the rest still serve)."""

    class Idle(Service):
        def __init__(self, name: str, fail: bool = False) -> None:
            super().__init__(Backoff(1.0, 1.0))
            self.thread_name = name
            self.fail = fail

        def setup(self) -> None:
            if self.fail:  # before the rounds: the loop ends
                raise RuntimeError("cannot start")

        def cycle(self) -> float:
            return 3600.0

    idle, broken = Idle("idle"), Idle("broken", fail=True)
    app = create_app(settings, store, services=[idle, broken], stop_timeout_s=5)
    assert not idle.is_alive()
    with TestClient(app) as client:
        assert idle.is_alive()
        broken.stop(5)
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["reasons"] == ["service broken: stopped (the log says why)"]
        assert client.get("/healthz").text == "ok\n"
    assert not idle.is_alive() and not broken.is_alive()


def test_connections_are_accepted_without_nagle() -> None:
    """The listening socket sets TCP_NODELAY, which every accepted connection
    inherits: a response on a kept-alive connection otherwise waits ~40 ms for
    the client's delayed ACK."""
    import socket

    from personatag.serve import bind

    sock = bind("127.0.0.1", 0)
    client = socket.create_connection(sock.getsockname())
    accepted, _ = sock.accept()
    try:
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        accepted.close()
        client.close()
        sock.close()
