"""An app over a real SQLite store and real local buckets in tmp_path, with a user
and an API token of each role."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from personatag import accounts
from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.store import Store, open_store
from personatag.web import create_app
from tests.helpers import add_contacts, population

PASSWORD = "Correct-Horse-42"  # noqa: S105 - a test user's
API = "/api/v1"


@dataclass
class Api:
    app: FastAPI
    client: TestClient
    store: Store
    settings: Settings
    tokens: dict[str, str]

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


class _FakeFlink(BaseHTTPRequestHandler):
    """Answers every GET like Flink's /overview (the proxy is what is tested)."""

    def do_GET(self) -> None:
        body = json.dumps({"flink-version": "2.3.0", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def flink_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeFlink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def settings(tmp_path: Path, flink_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", flink_url=flink_url)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    st = open_store(settings.resolved_store_url, create=True)
    yield st
    st.dispose()


@pytest.fixture
def api(settings: Settings, store: Store) -> Iterator[Api]:
    add_contacts(store, population(40))
    add_persona(store, "emea", name="EMEA", category="region")
    tokens = {}
    for role in accounts.ROLES:
        accounts.create_user(store, role, PASSWORD, role, actor="test")
        tokens[role], _ = accounts.create_token(store, role, "tests", actor="test")
    app = create_app(settings, store)
    with TestClient(app) as client:
        yield Api(app, client, store, settings, tokens)
