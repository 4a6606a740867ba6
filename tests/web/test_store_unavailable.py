"""The API while its PostgreSQL store is unreachable or drops its connections."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from personatag import accounts
from personatag.config import Settings
from personatag.store import Store
from personatag.store.db import create_store_engine
from personatag.web import create_app
from tests.helpers import terminate_other_backends
from tests.s3server import free_port
from tests.web.conftest import API, PASSWORD

PERSONA = {"key": "emea", "name": "EMEA", "category": "region"}


def test_writes_answer_503_with_retry_after_while_the_store_is_unreachable(
    tmp_path: Path,
) -> None:
    """Issue 17 item 6: with the store unreachable the writer API answered 500;
    it answers 503 with Retry-After, in the common error format."""
    store = Store(create_store_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"))
    token = accounts.TOKEN_PREFIX + "a" * accounts.TOKEN_SECRET_CHARS
    app = create_app(Settings(data_dir=tmp_path / "data"), store)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            headers = {"Authorization": f"Bearer {token}"}
            for method, path in (("POST", f"{API}/personas"), ("GET", f"{API}/personas")):
                r = client.request(method, path, headers=headers, json=PERSONA)
                assert r.status_code == 503, (method, path, r.text)
                assert r.headers["Retry-After"].isdigit()
                error = r.json()["error"]
                assert error["code"] == "store_unavailable"
                assert "Connection refused" not in error["message"]  # no driver details
    finally:
        store.dispose()


def test_terminated_sessions_do_not_fail_the_next_requests(pg_store: Store, tmp_path: Path) -> None:
    """Issue 17 item 6 (a guard; this already held): after an administrator
    ends every session of the store, the next requests get live connections
    (dead pooled ones are replaced), not a 500."""
    accounts.create_user(pg_store, "ad", PASSWORD, "admin", actor="test")
    token, _ = accounts.create_token(pg_store, "ad", "tests", actor="test")
    headers = {"Authorization": f"Bearer {token}"}
    app = create_app(Settings(data_dir=tmp_path / "data"), pg_store)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get(f"{API}/personas", headers=headers).status_code == 200
        assert terminate_other_backends(pg_store) >= 1
        r = client.post(f"{API}/personas", headers=headers, json=PERSONA)
        assert r.status_code == 201, r.text
        got = client.get(f"{API}/personas/emea", headers=headers)
        assert got.status_code == 200 and got.json()["key"] == "emea"
