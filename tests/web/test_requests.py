"""Request files through the API, run by a real dispatcher; jobs and status."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
import threading
from collections.abc import Iterator

import pytest

from personatag.audit_log import list_events
from personatag.jobs.repository import open_request
from personatag.requests.dispatcher import Dispatcher
from tests.helpers import NOW
from tests.web.conftest import API, Api


def run_dispatcher(api: Api) -> None:
    """One scan of the requests bucket; run what is there; wait for it."""
    ctx = api.app.state.ctx
    d = Dispatcher(api.store, ctx.buckets, api.settings)
    d.scan()
    d.drain()
    d.close()


@pytest.fixture
def dispatcher(api: Api) -> Iterator[None]:
    ctx = api.app.state.ctx
    d = Dispatcher(api.store, ctx.buckets, api.settings, poll_s=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=d.serve, args=(stop,), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(30)


def test_submit_json_then_read_state_and_result_files(api: Api) -> None:
    c, editor, viewer = api.client, api.headers("editor"), api.headers("viewer")
    body = {
        "version": 1,
        "request_id": "emea-1",
        "persona": "emea",
        "expr": 'region = "EMEA"',
        "submitted_by": "someone-else",
    }
    r = c.post(f"{API}/requests", json=body, headers=editor)
    assert r.status_code == 202
    assert r.json() == {
        "request_id": "emea-1",
        "key": "emea-1.json",
        "summary": None,
        "error": None,
    }
    stored = json.loads(api.app.state.ctx.buckets["requests"].get("emea-1.json"))
    assert stored["submitted_by"] == "editor"  # always the caller
    r = c.get(f"{API}/requests/emea-1", headers=viewer)
    assert r.json()["status"] == "submitted" and r.json()["job"] is None
    url = f"{API}/requests/emea-1/results/summary.json"
    assert c.get(url, headers=viewer).status_code == 404
    run_dispatcher(api)
    shown = c.get(f"{API}/requests/emea-1", headers=viewer).json()
    assert shown["status"] == "succeeded"
    assert shown["job"]["submitted_by"] == "editor"
    assert shown["summary"]["counts"]["tagged"] == 10
    r = c.get(url, headers=viewer)
    assert r.headers["content-type"] == "application/json"
    assert json.loads(r.content)["request_id"] == "emea-1"
    r = c.get(f"{API}/requests/emea-1/results/changes.csv.gz", headers=viewer)
    assert r.headers["content-type"] == "application/gzip"
    rows = list(csv.reader(io.StringIO(gzip.decompress(r.content).decode())))
    assert rows[0] == ["contact_id", "persona", "change"] and len(rows) == 11
    r = c.get(f"{API}/requests/emea-1/results/failed.csv", headers=viewer)
    assert r.status_code == 200 and r.text.startswith("row,")
    r = c.get(f"{API}/requests/emea-1/results/secrets.txt", headers=viewer)
    assert r.status_code == 422
    listed = c.get(f"{API}/requests", headers=viewer).json()["requests"]
    assert [x["request_id"] for x in listed] == ["emea-1"]
    assert list_events(api.store, action="request.submit")[0]["actor"] == "editor"


def test_a_job_shows_its_progress(api: Api) -> None:
    c, viewer = api.client, api.headers("viewer")
    queued = _queued_job(api, "waiting-1")
    assert c.get(f"{API}/jobs/{queued}", headers=viewer).json()["progress"] is None
    body = {"version": 1, "request_id": "emea-2", "persona": "emea", "expr": 'region = "EMEA"'}
    assert c.post(f"{API}/requests", json=body, headers=api.headers("editor")).status_code == 202
    run_dispatcher(api)
    progress = c.get(f"{API}/jobs/emea-2", headers=viewer).json()["progress"]
    assert progress["updated_at"].endswith("Z")
    assert {k: v for k, v in progress.items() if k != "updated_at"} == {
        "phase": "done",
        "done": None,
        "total": None,
        "unit": None,
    }
    listed = c.get(f"{API}/requests", headers=viewer).json()["requests"]
    assert [x["job"]["progress"] for x in listed if x["request_id"] == "emea-2"] == [progress]
    shown = c.get(f"{API}/requests/emea-2", headers=viewer).json()
    assert shown["job"]["progress"] == progress
    page = c.get(f"/jobs/{shown['job']['id']}", headers=viewer)
    assert page.status_code == 200
    assert '<span id="job-progress">done</span>' in page.text


def test_invalid_requests_are_refused_with_the_submit_message(api: Api) -> None:
    c, editor = api.client, api.headers("editor")
    r = c.post(f"{API}/requests", json={"version": 1, "persona": "emea"}, headers=editor)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_request_file"
    assert "exactly one of" in r.json()["error"]["message"]
    r = c.post(f"{API}/requests", json={"version": 2, "expr": "x"}, headers=editor)
    assert "unsupported version" in r.json()["error"]["message"]
    r = c.post(
        f"{API}/requests",
        content=b'{"version": 1, "version": 1}',
        headers={**editor, "content-type": "application/json"},
    )
    assert r.status_code == 422 and "more than once" in r.json()["error"]["message"]
    r = c.post(f"{API}/requests", content=b"[1, 2", headers=editor)
    assert r.status_code == 422 and r.json()["error"]["line"] == 1
    assert api.app.state.ctx.buckets["requests"].list() == []
    assert c.get(f"{API}/requests/nope", headers=editor).status_code == 404
    assert c.get(f"{API}/requests/a..b", headers=editor).status_code == 422


def test_upload_csv_rows_are_checked_before_anything_is_stored(api: Api) -> None:
    c, editor = api.client, api.headers("editor")
    bad = b"contact_id,persona,action\nc0001,emea,tag\n,emea,tag\nc0002,emea,maybe\n"
    r = c.post(f"{API}/requests/upload", files={"file": ("batch.csv", bad)}, headers=editor)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_rows"
    assert error["rows"] == [
        {"row": 3, "contact_id": "", "persona": "emea", "reason": "contact_id is empty"},
        {
            "row": 4,
            "contact_id": "c0002",
            "persona": "emea",
            "reason": 'action must be tag or untag, got "maybe"',
        },
    ]
    assert api.app.state.ctx.buckets["requests"].list() == []
    good = b"contact_id,persona,action\nc0001,emea,tag\nc0002,emea,tag\n"
    files = {"file": ("C:\\\\Users\\\\x\\\\batch.csv", good)}
    r = c.post(f"{API}/requests/upload", files=files, headers=editor)
    assert r.status_code == 202 and r.json()["request_id"] == "batch"
    r = c.post(
        f"{API}/requests/upload",
        files={"file": ("whatever.csv", good)},
        data={"request_id": "batch-2"},
        headers=editor,
    )
    assert r.json() == {
        "request_id": "batch-2",
        "key": "batch-2.csv",
        "summary": None,
        "error": None,
    }
    r = c.post(
        f"{API}/requests/upload",
        files={"file": ("x.csv", good)},
        data={"request_id": "../up"},
        headers=editor,
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "request_id"
    r = c.post(f"{API}/requests/upload", files={"file": ("x.txt", good)}, headers=editor)
    assert r.status_code == 422 and ".json or .csv" in r.json()["error"]["message"]
    r = c.post(f"{API}/requests/upload", headers=editor)
    assert r.status_code == 422 and r.json()["error"]["field"] == "file"
    run_dispatcher(api)
    summary = c.get(f"{API}/requests/batch", headers=editor).json()["summary"]
    assert summary["status"] == "succeeded" and summary["counts"]["matched"] == 2


def test_upload_too_large(api: Api) -> None:
    from personatag.config import Settings

    api.app.state.ctx.settings = Settings(data_dir=api.settings.data_dir, max_request_bytes=10)
    data = b"contact_id,persona,action\nc0001,emea,tag\n"
    r = api.client.post(
        f"{API}/requests/upload", files={"file": ("big.csv", data)}, headers=api.headers("editor")
    )
    assert r.status_code == 422 and "too large" in r.json()["error"]["message"]


def test_wait_for_the_summary(api: Api, dispatcher: None) -> None:
    body = {"version": 1, "persona": "emea", "expr": 'region = "APAC"'}
    r = api.client.post(
        f"{API}/requests?wait=true&timeout=30", json=body, headers=api.headers("editor")
    )
    assert r.status_code == 200, r.text
    assert r.json()["summary"]["status"] == "succeeded"
    assert r.json()["summary"]["counts"]["tagged"] == 10


def test_wait_sees_a_request_that_failed_while_being_prepared(api: Api, dispatcher: None) -> None:
    """Issue 17 item 4: an API waiter saw `submitted` forever for a request whose
    preparation raised (here an expression nested 5,000 deep): the dispatcher
    left it without an outcome. It gets the failed summary with the reason."""
    expr = "(" * 5000 + 'region = "APAC"' + ")" * 5000
    body = {"version": 1, "request_id": "deep-1", "persona": "emea", "expr": expr}
    r = api.client.post(
        f"{API}/requests?wait=true&timeout=30", json=body, headers=api.headers("editor")
    )
    assert r.status_code == 200, r.text
    summary = r.json()["summary"]
    assert summary["status"] == "failed" and summary["request_id"] == "deep-1"
    error = summary["error"]
    assert "nests more than" in error and "col 21" in error and "\n" not in error, error


def test_wait_that_times_out_is_still_accepted(api: Api) -> None:
    body = {"version": 1, "persona": "emea", "expr": 'region = "APAC"'}
    r = api.client.post(
        f"{API}/requests?wait=true&timeout=0.2", json=body, headers=api.headers("editor")
    )
    assert r.status_code == 202 and r.json()["summary"] is None


def _queued_job(api: Api, request_id: str) -> int:
    spec = {"persona": "emea", "action": "tag", "expr": "seniority > 1"}
    _, job, _ = open_request(
        api.store,
        request_id=request_id,
        submitted_by="someone",
        persona_pk=None,
        action="tag",
        engine="local",
        criterion_pk=None,
        expr=spec["expr"],
        as_of=NOW,
        dry_run=False,
        spec=spec,
        status="queued",
    )
    return job


def test_jobs_and_status(api: Api) -> None:
    c, viewer, editor = api.client, api.headers("viewer"), api.headers("editor")
    job = _queued_job(api, "queued-1")
    jobs = c.get(f"{API}/jobs", headers=viewer).json()["jobs"]
    assert [(j["id"], j["status"]) for j in jobs] == [(job, "queued")]
    assert c.get(f"{API}/jobs?status=queued", headers=viewer).json()["jobs"]
    r = c.get(f"{API}/jobs?status=sleeping", headers=viewer)
    assert r.status_code == 422 and "unknown job status" in r.json()["error"]["message"]
    assert c.get(f"{API}/jobs/{job}", headers=viewer).json()["request_id"] == "queued-1"
    assert c.get(f"{API}/jobs/queued-1", headers=viewer).json()["id"] == job
    assert c.get(f"{API}/jobs/{'9' * 30}", headers=viewer).status_code == 404
    assert c.get(f"{API}/jobs/a%20b", headers=viewer).status_code == 422
    status = c.get(f"{API}/status", headers=viewer).json()
    assert status["queued"] == 1 and status["running"] == 0 and status["failure_rate"] is None
    r = c.post(f"{API}/jobs/{job}/cancel", headers=editor)
    assert r.json()["status"] == "cancelled"
    r = c.post(f"{API}/jobs/{job}/cancel", headers=editor)
    assert r.status_code == 409 and "nothing to cancel" in r.json()["error"]["message"]
    status = c.get(f"{API}/status", headers=viewer).json()
    assert status["finished_recent"] == 1 and status["failure_rate"] == 0.0
    shown = c.get(f"{API}/requests/queued-1", headers=viewer).json()
    assert shown["status"] == "cancelled" and shown["summary"] is None
    assert list_events(api.store, action="job.cancel")[0]["target"] == "queued-1"


def test_a_request_whose_results_cannot_be_written_says_so(api: Api) -> None:
    """Issue 17 item 5 through the API: with the results bucket failing, a
    waiter (`?wait=true`) was answered 202 as if the request had not finished,
    and `GET /requests/{id}` of a refused file (unknown persona) said
    `submitted` for as long as the bucket failed. Both now say the request
    finished, with why its result files are missing."""
    root = api.app.state.ctx.buckets["results"].local_root
    assert root is not None
    shutil.rmtree(root)
    root.write_bytes(b"not a folder")  # the results area fails for real
    ctx = api.app.state.ctx
    d = Dispatcher(api.store, ctx.buckets, api.settings, poll_s=0.05, results_attempts=1)
    stop = threading.Event()
    thread = threading.Thread(target=d.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        editor = api.headers("editor")
        ran = {"version": 1, "request_id": "rf-1", "persona": "emea", "expr": 'region = "APAC"'}
        r = api.client.post(f"{API}/requests?wait=true&timeout=30", json=ran, headers=editor)
        assert r.status_code == 200, r.text
        assert r.json()["summary"] is None
        assert "results could not be written" in r.json()["error"]
        refused = {**ran, "request_id": "rf-2", "persona": "nosuch"}
        r = api.client.post(f"{API}/requests?wait=true&timeout=30", json=refused, headers=editor)
        assert r.status_code == 200 and "results could not be written" in r.json()["error"]
    finally:
        stop.set()
        thread.join(30)
    shown = api.client.get(f"{API}/requests/rf-1", headers=api.headers("viewer")).json()
    assert shown["status"] == "succeeded" and "results could not be written" in shown["error"]
    shown = api.client.get(f"{API}/requests/rf-2", headers=api.headers("viewer")).json()
    assert shown["status"] == "failed" and shown["job"] is None
    assert "results could not be written" in shown["error"]
