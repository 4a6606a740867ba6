"""Health, readiness, metrics, the error format, and the read-only Flink mount."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from personatag.config import Settings
from personatag.metrics import record_request
from personatag.store import Store
from personatag.store.db import create_store_engine
from personatag.web import create_app
from personatag.web.api.flink import _BufferedWSGI, flink_upstream
from personatag.web.auth import role
from tests.web.conftest import API, Api


def test_healthz_readyz_metrics(api: Api) -> None:
    c = api.client
    assert c.get("/healthz").text == "ok\n"
    assert c.get("/readyz").json() == {"ready": True, "reasons": []}
    record_request("succeeded")
    r = c.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert {"personatag_requests", "personatag_queue_depth"} <= names


def test_readyz_names_what_is_wrong(api: Api, tmp_path: Path) -> None:
    requests = api.settings.data_dir / "buckets" / "requests"
    if requests.exists():
        shutil.rmtree(requests)
    requests.parent.mkdir(parents=True, exist_ok=True)
    requests.write_text("not a folder")
    r = api.client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["ready"] is False
    assert any(reason.startswith("bucket requests:") for reason in r.json()["reasons"])

    empty = Settings(data_dir=tmp_path / "other")
    raw = Store(create_store_engine(empty.resolved_store_url, create=True))
    with TestClient(create_app(empty, raw)) as client:
        r = client.get("/readyz")
    raw.dispose()
    assert r.status_code == 503
    assert any("schema is not at revision" in x for x in r.json()["reasons"])


def test_unknown_paths_and_methods_use_the_error_format(api: Api) -> None:
    r = api.client.get(f"{API}/nothing-here")
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "status": 404,
            "code": "not_found",
            "message": f"no such path: {API}/nothing-here",
        }
    }
    r = api.client.delete(f"{API}/personas", headers=api.headers("admin"))
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = api.client.post(
        f"{API}/personas",
        content=b"{not json",
        headers={**api.headers("admin"), "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_a_bug_is_a_generic_500_with_an_error_id(api: Api, caplog: Any) -> None:
    @api.app.get("/boom", **role("public"))
    def boom() -> None:
        raise RuntimeError("secret internals")

    r = api.client.get("/boom")
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["code"] == "internal_error" and "secret" not in error["message"]
    error_id = error["message"].rsplit(" ", 1)[-1]
    assert any(error_id in rec.getMessage() and rec.exc_info for rec in caplog.records)


def test_flink_mount_is_read_only_and_needs_a_login(api: Api) -> None:
    c = api.client
    assert c.get("/flink/overview").status_code == 401
    r = c.get("/flink/overview?x=1", headers=api.headers("viewer"))
    assert r.status_code == 200 and r.json()["path"] == "/overview?x=1"
    r = c.request("PATCH", "/flink/jobs/abc", headers=api.headers("admin"))
    assert r.status_code == 405
    r = c.get("/flink/jobs/abc/yarn-cancel", headers=api.headers("admin"))
    assert r.status_code == 403


def test_flink_is_mounted_only_when_configured(tmp_path: Path, store: Store) -> None:
    bare = Settings(data_dir=tmp_path / "bare")
    assert flink_upstream(bare) is None
    app = create_app(bare, store)
    assert not any(getattr(r, "path", "") == "/flink" for r in app.routes)
    conf = tmp_path / "bare" / "flink" / "conf" / "config.yaml"
    conf.parent.mkdir(parents=True)
    conf.write_text("")
    assert flink_upstream(bare) == "http://127.0.0.1:8081"


def test_the_fallback_wsgi_bridge() -> None:
    def wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = environ["wsgi.input"].read()
        start_response(
            "201 Created", [("Content-Type", "text/plain"), ("X-Path", environ["PATH_INFO"])]
        )
        return [
            environ["REQUEST_METHOD"].encode(),
            b" ",
            body,
            b" ",
            environ["QUERY_STRING"].encode(),
        ]

    r = TestClient(_BufferedWSGI(wsgi)).post("/a/b?q=1", content=b"hello")
    assert r.status_code == 201
    assert r.text == "POST hello q=1" and r.headers["x-path"] == "/a/b"
