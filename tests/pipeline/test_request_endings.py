"""Every request file ends: whatever fails while it is prepared, while its
results are written, or in how it is named, it gets an outcome and a report.

Real stores and real (local) buckets; nothing of ours is mocked: the failures
come from real inputs and real components (a store that refuses a value, a
results folder that cannot be written).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from personatag.buckets import BucketError, Buckets, open_buckets
from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.domain import JobStatus, utcnow
from personatag.errors import PersonatagError
from personatag.jobs import repository as jobs
from personatag.requests.dispatcher import Dispatcher, request_id_for_key
from personatag.requests.files import (
    RequestFileError,
    parse_request,
    request_id_from_name,
)
from personatag.requests.submit import submit_file, wait_for_result
from personatag.store import Store, open_store
from tests.helpers import add_contacts, population

Env = tuple[Store, Buckets, Settings]


@pytest.fixture
def env(store: Store, tmp_path: Path) -> Env:
    add_contacts(store, population(12))
    add_persona(store, "emea", name="EMEA", category="region")
    settings = Settings(data_dir=tmp_path)
    return store, open_buckets(settings), settings


def outcomes(store: Store) -> dict[str, str | None]:
    rf = store.tables.request_files
    with store.read() as conn:
        return {r.key: r.outcome for r in conn.execute(select(rf.c.key, rf.c.outcome))}


def job_statuses(store: Store) -> list[str]:
    j = store.tables.jobs
    with store.read() as conn:
        return list(conn.scalars(select(j.c.status).order_by(j.c.pk)))


def run_once(store: Store, b: Buckets, settings: Settings) -> Dispatcher:
    d = Dispatcher(store, b, settings, workers=1)
    d.recover()
    d.scan()
    d.drain()
    d.close()
    return d


# Inputs that made the criteria parser, checker or compiler (or the store) raise
# something other than a clean error.
RAISING = {
    "deep": {"expr": "(" * 5000 + 'region = "EMEA"' + ")" * 5000},
    "bigint": {"expr": "seniority > " + "9" * 4301},
    "date": {"expr": 'created_at > date("0001-01-01T00:00:00+14:00")'},
    "surrogate": {"expr": 'region = "\ud800"'},
    # Not the criteria language at all: the store cannot encode the submitter.
    "submitter": {"expr": 'region = "EMEA"', "submitted_by": "ana\udfff"},
}


# What each one's reason says.
REASONS = {
    "deep": "nests more than",
    "bigint": "is too long",
    "date": "out of range",
    "surrogate": "lone surrogate",
    "submitter": "lone surrogate",
}


@pytest.mark.parametrize("case", sorted(RAISING))
def test_a_request_that_raises_while_prepared_ends_failed(env: Env, case: str) -> None:
    """Issue 17 item 4: a request file whose preparation raised (an expression
    nested 5,000 deep, a 4,301-digit integer, a date that overflows, a lone
    surrogate, a value the store cannot encode) was left claimed with no
    outcome and no results, and every restart took it over and failed again;
    a waiter saw nothing. It must end as a failed request with a one-line
    reason, and stay ended. The file is dropped into the bucket as another
    system would, past `submit`'s own checks."""
    store, b, settings = env
    body = {"version": 1, "request_id": case, "persona": "emea", **RAISING[case]}
    # json.dumps escapes the lone surrogate as \\ud800, as another system would.
    key = f"{case}.json"
    b["requests"].put(key, json.dumps(body).encode())
    run_once(store, b, settings)

    assert outcomes(store) == {key: "failed"}
    summary = wait_for_result(b, store, {"key": key, "request_id": case}, timeout=0)
    assert summary["status"] == "failed" and summary["request_id"] == case
    error = summary["error"]
    assert REASONS[case] in error and "\n" not in error, error
    assert "Error" not in error  # a reason for people, not an exception's name
    assert summary["source"] == key
    assert not any(status in ("queued", "running") for status in job_statuses(store))

    again = run_once(store, b, settings)  # a restart does not take the file over
    assert again.stats.claimed == 0 and again.stats.finished == {}
    assert outcomes(store) == {key: "failed"}


def test_a_job_whose_preparation_fails_after_it_was_recorded_ends_failed(env: Env) -> None:
    """Issue 17 item 4: a failure after the request's job was recorded (here the
    active job bundle record is unreadable) left the job queued for good and the
    file without an outcome. The job fails with the reason, and the file ends."""
    store, b, settings = env
    b["job-properties"].put("active.json", b"{not json")
    body = {"version": 1, "request_id": "r1", "persona": "emea", "expr": 'region = "EMEA"'}
    submitted = submit_file(b, json.dumps(body).encode(), name="r1.json")
    run_once(store, b, settings)

    assert outcomes(store) == {"r1.json": "failed"}
    assert job_statuses(store) == ["failed"]
    summary = wait_for_result(b, store, submitted, timeout=0)
    assert "active.json is not valid JSON" in summary["error"]
    assert "\n" not in summary["error"]


# -- item 8: files waiting for their request, file names, links --------------------


def run_cli_once(store_url: str, data_dir: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")}
    env |= {"PERSONATAG_STORE_URL": store_url, "PERSONATAG_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "personatag.cli", "dispatcher", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return done.stdout


def expr_request(rid: str, expr: str = 'region = "EMEA"') -> bytes:
    return json.dumps({"version": 1, "request_id": rid, "persona": "emea", "expr": expr}).encode()


def test_once_reports_a_file_whose_request_runs_in_another_dispatcher(
    store_url: str, tmp_path: Path
) -> None:
    """Issue 17 item 8: `dispatcher --once` left a file whose request id another
    dispatcher was running unclaimed and said nothing about it. It names it."""
    store = open_store(store_url)
    add_persona(store, "emea", name="EMEA", category="region")
    b = open_buckets(Settings(data_dir=tmp_path))
    # A job of r1 queued by a dispatcher that is alive (this very process).
    _, job_pk, _ = jobs.open_request(
        store,
        request_id="r1",
        submitted_by=None,
        persona_pk=None,
        action="tag",
        engine="local",
        criterion_pk=None,
        expr='region = "EMEA"',
        as_of=utcnow(),
        dry_run=False,
        spec={"expr": 'region = "EMEA"'},
        status=JobStatus.QUEUED,
        owner=f"{socket.gethostname()}:{os.getpid()}:",
    )
    b["requests"].put("again.json", expr_request("r1"))
    out = run_cli_once(store_url, tmp_path)
    assert f"again.json not run: request r1 is queued (job {job_pk})" in out
    assert "again.json" not in outcomes(store)  # left for a later run, not lost


def test_once_finishes_files_whose_request_ran_from_another_file(
    store_url: str, tmp_path: Path
) -> None:
    """Issue 17 item 8: `dispatcher --once` left the second file of a request id
    (a copy, or a different request under the same id) unclaimed and
    unreported when the first one was still queued. It waits for that run and
    then ends the file: a duplicate, or refused as a different request."""
    store = open_store(store_url)
    add_contacts(store, population(400))
    add_persona(store, "emea", name="EMEA", category="region")
    b = open_buckets(Settings(data_dir=tmp_path))
    req = b["requests"]
    req.put("a0.json", expr_request("r0"))  # keeps the one worker busy meanwhile
    req.put("a1.json", expr_request("r1"))
    req.put("a2.json", expr_request("r2"))
    req.put("b1.json", expr_request("r1"))  # the same file again
    req.put("b2.json", expr_request("r2", 'region = "APAC"'))  # another request, same id
    out = run_cli_once(store_url, tmp_path)
    assert "not run" not in out
    assert outcomes(store) == {
        "a0.json": "succeeded",
        "a1.json": "succeeded",
        "a2.json": "succeeded",
        "b1.json": "duplicate",
        "b2.json": "failed",
    }
    refused = json.loads(b["results"].get("b2+refused/summary.json"))
    assert "for a different request" in refused["error"]


@pytest.mark.parametrize("name", ["my batch.csv", "in/sales team.csv", "no id é.json"])
def test_a_file_name_that_is_no_request_id_is_refused_alike(env: Env, name: str) -> None:
    """Issue 17 item 8: `my batch.csv` was refused by `submit` but ran as
    `my_batch` when dropped in the bucket (and a JSON file without an id was
    renamed the same way). One rule: the dispatcher refuses it with the message
    `submit` gives, and nothing runs under a folded name."""
    store, b, settings = env
    if name.endswith(".csv"):
        data = b"contact_id,persona,action\nc0001,emea,tag\n"
    else:
        data = json.dumps({"version": 1, "persona": "emea", "expr": 'region = "EMEA"'}).encode()
    with pytest.raises(RequestFileError) as refused:
        parse_request(data, name=name, id_from_name=True)
    with pytest.raises(RequestFileError) as by_submit:  # a CSV's id is always its name
        submit_file(b, data, name=name) if name.endswith(".csv") else request_id_from_name(name)
    assert str(by_submit.value) == str(refused.value)
    b["requests"].put(name, data)
    run_once(store, b, settings)

    assert outcomes(store) == {name: "failed"}
    assert job_statuses(store) == []
    folded = request_id_for_key(name)
    summary = json.loads(b["results"].get(f"{folded}/summary.json"))
    assert summary["error"] == str(refused.value)
    assert "the request id comes from the file name" in summary["error"]


def test_a_csv_submitted_again_is_the_same_request(env: Env) -> None:
    """Issue 17 item 8 (the same rule): a CSV file submitted again was stored as
    `<id>.2.csv`, which the dispatcher ran as another request (`<id>_2`). The
    second file keeps the request id and reports the recorded result."""
    store, b, settings = env
    data = b"contact_id,persona,action\nc0001,emea,tag\n"
    first = submit_file(b, data, name="batch.csv")
    run_once(store, b, settings)
    second = submit_file(b, data, name="batch.csv")
    assert second["request_id"] == "batch" and second["key"] != first["key"]
    run_once(store, b, settings)
    assert outcomes(store) == {first["key"]: "succeeded", second["key"]: "duplicate"}
    assert wait_for_result(b, store, second, timeout=0)["status"] == "succeeded"
    assert len(job_statuses(store)) == 1


def test_a_link_in_a_local_requests_bucket_is_refused_unread(env: Env, tmp_path: Path) -> None:
    """Issue 17 item 8: a `leak.csv` in a local requests bucket that links to a
    system file was followed, and the file's first line ended up in a summary
    any viewer can read. Links (to files or folders) are refused unread."""
    store, b, settings = env
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    root = b["requests"].local_root
    assert root is not None
    (root / "leak.csv").symlink_to(secret / "passwd")
    (root / "linked").symlink_to(secret, target_is_directory=True)
    (secret / "inside.csv").write_text("root:x:0:0:root:/root:/bin/bash\n")
    run_once(store, b, settings)

    found = outcomes(store)
    assert found.get("leak.csv") == "failed"
    for rid in ("leak", *(["linked_inside"] if "linked/inside.csv" in found else [])):
        summary = json.loads(b["results"].get(f"{rid}/summary.json"))
        assert "is a symbolic link" in summary["error"] and "root:x" not in summary["error"]
    assert all(outcome == "failed" for outcome in found.values())
    assert not any(b"root:x" in b["results"].get(k) for k in b["results"].list())


def test_local_bucket_refuses_links_and_special_files(tmp_path: Path) -> None:
    """Issue 17 item 8: a local bucket read through links (and would block
    forever on a FIFO). Reading one is a clear BucketError; the target is not
    opened; writing through a linked folder is refused."""
    bucket = open_buckets(Settings(data_dir=tmp_path))["requests"]
    root = bucket.local_root
    assert root is not None
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.csv").write_bytes(b"secret")
    (root / "link.csv").symlink_to(outside / "f.csv")
    (root / "dir").symlink_to(outside, target_is_directory=True)
    os.mkfifo(root / "pipe.csv")
    for key, why in (
        ("link.csv", "is a symbolic link"),
        ("dir/f.csv", "is a symbolic link"),
        ("pipe.csv", "is not a regular file"),
    ):
        assert bucket.exists(key)
        for read in (bucket.get, bucket.size, bucket.open):
            with pytest.raises(BucketError, match=why):
                read(key)
    with pytest.raises(BucketError, match="is a symbolic link"):
        bucket.put("dir/new.csv", b"x")
    assert sorted(p.name for p in outside.iterdir()) == ["f.csv"]


# -- item 5: a results bucket that fails ---------------------------------------------


def break_folder(b: Buckets) -> Path:
    """Make the local results area fail for real: its folder becomes a file."""
    root = b["results"].local_root
    assert root is not None
    shutil.rmtree(root)
    root.write_bytes(b"not a folder")
    return root


def log_rows(store: Store) -> int:
    t = store.tables
    with store.read() as conn:
        return int(conn.scalar(select(func.count()).select_from(t.membership_log)) or 0)


KINDS = {
    # kind: (file, body, outcome once reported, job statuses)
    "succeeded": ("r1.json", expr_request("r1"), "succeeded", ["succeeded"]),
    "job failed": (
        "r1.json",
        json.dumps(
            {
                "version": 1,
                "request_id": "r1",
                "persona": "emea",
                "engine": "nope",
                "expr": 'region = "EMEA"',
            }
        ).encode(),
        "failed",
        ["failed"],
    ),
    "refused": ("r1.json", b'{"version": 1, "persona": ', "failed", []),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_results_that_cannot_be_written_are_written_later_without_a_rerun(
    env: Env, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17 item 5: a results bucket that failed mid-run stranded the request
    (its memberships committed, no summary, no outcome) until the dispatcher
    restarted, and nothing said why. Writing is retried with backoff; then the
    file's outcome is `results_failed` with the error (and a job that succeeded
    says so), a waiter is told, and a later dispatcher writes the results from
    the store without running the job again."""
    store, b, settings = env
    key, body, outcome, statuses = KINDS[kind]
    root = break_folder(b)
    b["requests"].put(key, body)
    d = Dispatcher(store, b, settings, workers=1, results_attempts=2, results_backoff_s=0.01)
    d.scan()
    d.drain()
    d.close()

    rf = store.tables.request_files
    with store.read() as conn:
        row = conn.execute(select(rf).where(rf.c.key == key)).one()
    assert row.outcome == "results_failed"
    assert row.error.startswith("results could not be written: cannot write 'r1/")
    assert "attempt 1 of 2" in caplog.text
    assert job_statuses(store) == statuses
    applied = log_rows(store)
    if kind == "succeeded":
        assert applied == 3  # the memberships committed
        job = jobs.get_job(store, "r1").as_json()
        assert job["error"].startswith("results could not be written")
        assert job["progress"]["phase"] == "writing results"
    if kind == "job failed":
        assert "unknown engine 'nope'" in jobs.get_job(store, "r1").as_json()["error"]
    with pytest.raises(PersonatagError, match="results could not be written"):
        wait_for_result(b, store, {"key": key, "request_id": "r1"}, timeout=0)

    root.unlink()  # the bucket is back; a restarted dispatcher writes the results
    run_once(store, b, settings)

    assert outcomes(store) == {key: outcome}
    assert job_statuses(store) == statuses  # no job ran again
    assert log_rows(store) == applied
    summary = wait_for_result(b, store, {"key": key, "request_id": "r1"}, timeout=0)
    assert summary["status"] == outcome
    if kind == "succeeded":
        assert summary["counts"]["tagged"] == 3 and summary["error"] is None
        job = jobs.get_job(store, "r1").as_json()
        assert job["error"] is None and job["progress"]["phase"] == "done"
        data = gzip.decompress(b["results"].get("r1/changes.csv.gz")).decode()
        assert data.count(",emea,enter") == 3
    elif kind == "job failed":
        assert "unknown engine 'nope'" in summary["error"]
    else:
        assert "not valid JSON" in summary["error"]


def test_results_on_an_s3_server_that_stops_are_written_once_it_is_back(
    store: Store, tmp_path: Path
) -> None:
    """Issue 17 item 5 on S3: the server stops between the job's start and its
    report. The memberships commit, the file ends `results_failed` (not
    stranded), and once the server is back a restarted dispatcher writes the
    report without running the job again."""
    from moto.server import ThreadedMotoServer

    from tests.s3server import S3_BUCKET, free_port, s3_client, s3_settings

    add_contacts(store, population(12))
    add_persona(store, "emea", name="EMEA", category="region")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        s3_client(endpoint).create_bucket(Bucket=S3_BUCKET)
        settings = s3_settings(endpoint, tmp_path)
        b = open_buckets(settings)
        b["requests"].put("r1.json", expr_request("r1"))
        # One attempt: the S3 client retries a refused connection by itself.
        d = Dispatcher(store, b, settings, workers=1, results_attempts=1)
        assert d._claim("r1.json")
        job = d.prepare("r1.json")
        assert job is not None
        server.stop()  # the bucket goes away while the job runs
        assert d.run(job) == "succeeded"
        d.close()
        assert outcomes(store) == {"r1.json": "results_failed"}
        assert log_rows(store) == 3

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        run_once(store, b, settings)
        assert outcomes(store) == {"r1.json": "succeeded"}
        assert job_statuses(store) == ["succeeded"] and log_rows(store) == 3
        summary = json.loads(b["results"].get("r1/summary.json"))
        assert summary["status"] == "succeeded" and summary["counts"]["tagged"] == 3
    finally:
        server.stop()


def test_a_running_dispatcher_writes_missing_results_on_a_later_scan(env: Env) -> None:
    """Issue 17 item 5: results that could not be written were only retried
    after a restart (a live dispatcher never took its own file over). A later
    scan of the same dispatcher writes them, without running the job again."""
    store, b, settings = env
    root = break_folder(b)
    b["requests"].put("r1.json", expr_request("r1"))
    # No backoff between attempts, so the next scan is due at once.
    d = Dispatcher(store, b, settings, workers=1, results_attempts=1, results_backoff_s=0)
    try:
        d.scan()
        d.drain()
        assert outcomes(store) == {"r1.json": "results_failed"}
        d.scan()  # the bucket still fails: tried again, still missing
        d.drain()
        assert outcomes(store) == {"r1.json": "results_failed"}
        root.unlink()
        d.scan()
        d.drain()
    finally:
        d.close()
    assert outcomes(store) == {"r1.json": "succeeded"}
    assert job_statuses(store) == ["succeeded"] and log_rows(store) == 3
    assert json.loads(b["results"].get("r1/summary.json"))["status"] == "succeeded"


def test_refused_files_whose_names_fold_alike_keep_their_own_reports(env: Env) -> None:
    """Issue 17 item 8 (its family): a refused file whose name is no request id
    reports under its key folded to safe characters, so `drop/é.csv`,
    `drop/ß.csv` and `drop/ü.csv` all folded to `drop`: the first reported
    there, the second in `drop+refused`, and every later one overwrote that
    report. Each refused file keeps a report of its own, and a waiter finds it."""
    store, b, settings = env
    keys = ["drop/é.csv", "drop/ß.csv", "drop/ü.csv", "drop/ø.csv"]
    for key in keys:
        b["requests"].put(key, b"contact_id,persona,action\nc0001,emea,tag\n")
    run_once(store, b, settings)
    assert outcomes(store) == dict.fromkeys(keys, "failed")
    reported = {}
    for key in b["results"].list():
        if key.endswith("/summary.json"):
            reported[json.loads(b["results"].get(key))["source"]] = key
    assert sorted(reported) == sorted(keys)
    for key in keys:
        summary = wait_for_result(b, store, {"key": key, "request_id": "drop"}, timeout=0)
        assert summary["source"] == key and summary["status"] == "failed"
