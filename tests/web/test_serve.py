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

from personatag.store import open_store
from personatag.store.personas import add_persona
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
