"""The dispatcher on real stores and real (local) buckets."""

from __future__ import annotations

import csv
import gzip
import io
import json
import socket
from pathlib import Path

import pytest
from sqlalchemy import func, select

from personatag.buckets import Buckets, open_buckets
from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.domain import JobStatus
from personatag.requests.dispatcher import Dispatcher
from personatag.store import Store
from tests.helpers import add_contacts, population


@pytest.fixture
def env(store: Store, tmp_path: Path) -> tuple[Store, Buckets, Settings]:
    add_contacts(store, population(40))
    add_persona(store, "emea", name="EMEA", category="region")
    add_persona(store, "cio", name="CIO", category="job title")
    settings = Settings(data_dir=tmp_path)
    return store, open_buckets(settings), settings


def summary(b: Buckets, rid: str) -> dict:  # type: ignore[type-arg]
    return json.loads(b["results"].get(f"{rid}/summary.json"))


def changes(b: Buckets, rid: str) -> list[list[str]]:
    data = gzip.decompress(b["results"].get(f"{rid}/changes.csv.gz")).decode()
    return list(csv.reader(io.StringIO(data)))


def failed(b: Buckets, rid: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(b["results"].get(f"{rid}/failed.csv").decode())))


def members(store: Store, key: str) -> int:
    t = store.tables
    with store.read() as conn:
        pk = conn.scalar(select(t.personas.c.pk).where(t.personas.c.key == key))
        q = select(func.count()).where(t.memberships.c.persona_pk == pk)
        return int(conn.scalar(q) or 0)


def test_criterion_list_and_malformed_requests(env: tuple[Store, Buckets, Settings]) -> None:
    store, b, settings = env
    req = b["requests"]
    req.put(
        "r1.json",
        json.dumps(
            {
                "version": 1,
                "request_id": "r1",
                "persona": "emea",
                "action": "tag",
                "expr": 'region = "EMEA"',
                "submitted_by": "ana",
            }
        ).encode(),
    )
    req.put("r2.csv", b"contact_id,persona,action\nc0001,cio,tag\nnope,cio,tag\nc0002,cio,tag\n")
    req.put("broken.json", b'{"version": 1, "persona": ')
    d = Dispatcher(store, b, settings, workers=2)
    assert d.scan() == 2  # the malformed file is finished at once
    d.drain()
    d.close()

    s1 = summary(b, "r1")
    assert s1["status"] == "succeeded" and s1["counts"]["tagged"] == 10 and s1["error"] is None
    assert sorted(r[0] for r in changes(b, "r1")[1:]) == [f"c{i:04d}" for i in range(0, 40, 4)]
    assert changes(b, "r1")[0] == ["contact_id", "persona", "change"]
    assert failed(b, "r1") == [["row", "contact_id", "persona", "reason"]]

    s2 = summary(b, "r2")
    assert s2["status"] == "partial" and s2["counts"]["tagged"] == 2
    assert failed(b, "r2")[1] == ["3", "nope", "cio", "unknown contact id 'nope'"]
    assert members(store, "cio") == 2

    s3 = summary(b, "broken")
    assert s3["status"] == "failed" and "broken.json" in s3["error"]
    assert changes(b, "broken") == [["contact_id", "persona", "change"]]


def test_each_file_runs_once_even_with_two_dispatchers(
    env: tuple[Store, Buckets, Settings],
) -> None:
    store, b, settings = env
    body = {"version": 1, "persona": "emea", "action": "tag", "expr": 'region = "EMEA"'}
    for i in range(6):
        b["requests"].put(f"q{i}.json", json.dumps({**body, "request_id": f"q{i}"}).encode())
    # the same request under a second file name: still one run
    b["requests"].put("q0-again.json", json.dumps({**body, "request_id": "q0"}).encode())
    one, two = Dispatcher(store, b, settings), Dispatcher(store, b, settings)
    # Scan until nothing is left: a file naming a request that is still running
    # is let go and looked at again once that run has ended.
    for _ in range(10):
        claimed = one.scan() + two.scan()
        one.drain()
        two.drain()
        if not claimed:
            break
    one.close()
    two.close()
    t = store.tables
    with store.read() as conn:
        assert conn.scalar(select(func.count()).select_from(t.jobs)) == 6
        assert conn.scalar(select(func.count()).select_from(t.request_files)) == 7
        outcomes = list(conn.scalars(select(t.request_files.c.outcome)))
    assert sorted(outcomes) == ["duplicate"] + ["succeeded"] * 6
    tagged = [summary(b, f"q{i}")["counts"]["tagged"] for i in range(6)]
    assert sorted(tagged) == [0, 0, 0, 0, 0, 10]
    assert Dispatcher(store, b, settings).scan() == 0  # nothing new


def test_bad_requests_get_precise_failed_summaries(env: tuple[Store, Buckets, Settings]) -> None:
    store, b, settings = env
    req = b["requests"]
    req.put(
        "p.json", b'{"version": 1, "request_id": "p", "persona": "nobody", "expr": "seniority > 1"}'
    )
    req.put("x.json", b'{"version": 1, "request_id": "x", "persona": "emea", "expr": "regoin = 1"}')
    d = Dispatcher(store, b, settings)
    d.scan()
    d.drain()
    d.close()
    assert "unknown persona 'nobody'" in summary(b, "p")["error"]
    assert "did you mean 'region'" in summary(b, "x")["error"]
    assert members(store, "emea") == 0


def test_stuck_engine_fails_at_its_deadline_and_others_still_run(
    env: tuple[Store, Buckets, Settings],
) -> None:
    import threading

    from personatag.engines import register_engine, unregister_engine
    from personatag.engines.base import Engine, Match, MatchSpec

    release = threading.Event()

    class StuckEngine(Engine):
        """An engine that stops answering (a hung remote cluster)."""

        name = "stuck"

        def compute(self, spec: MatchSpec) -> Match:
            release.wait(60)
            raise RuntimeError("released")

    register_engine("stuck", lambda: StuckEngine)
    store, b, settings = env
    body = {"version": 1, "persona": "emea", "action": "tag", "expr": 'region = "EMEA"'}
    b["requests"].put("s.json", json.dumps({**body, "request_id": "s", "engine": "stuck"}).encode())
    b["requests"].put("ok.json", json.dumps({**body, "request_id": "ok"}).encode())
    # Long enough for the other job on a loaded machine (its engine may build
    # the columnar copy first), short next to the stuck engine's 60 s.
    d = Dispatcher(store, b, settings, workers=2, deadline_s=8)
    try:
        d.scan()
        d.drain(timeout=30)
    finally:
        release.set()
        d.close()
        unregister_engine("stuck")
    stuck = summary(b, "s")
    assert stuck["status"] == "failed"
    assert stuck["error"] == "engine 'stuck' did not finish within the deadline of 8 s"
    assert summary(b, "ok")["status"] == "succeeded"
    assert members(store, "emea") == 10


def test_oversized_file_is_refused_without_reading_it(
    env: tuple[Store, Buckets, Settings],
) -> None:
    store, b, settings = env
    root = b["requests"].local_root
    assert root is not None
    with (root / "huge.json").open("wb") as f:  # 1 GiB, sparse: nothing is written
        f.truncate(2**30)
    d = Dispatcher(store, b, settings)
    d.scan()
    d.drain()
    d.close()
    s = summary(b, "huge")
    assert s["status"] == "failed"
    assert s["error"] == "huge.json: file is too large (1024 MiB); the limit is 100 MiB"


def test_dot_dot_key_on_s3_gets_a_failed_summary(
    store: Store, s3_endpoint: str, tmp_path: Path
) -> None:
    from tests.s3server import S3_BUCKET, s3_client, s3_settings

    settings = s3_settings(s3_endpoint, tmp_path)
    b = open_buckets(settings)
    prefix = settings.bucket_url.removeprefix(f"s3://{S3_BUCKET}/")  # type: ignore[union-attr]
    s3_client(s3_endpoint).put_object(
        Bucket=S3_BUCKET, Key=f"{prefix}/requests/evil/../x.json", Body=b"{}"
    )
    d = Dispatcher(store, b, settings)
    d.scan()
    d.drain()
    d.close()
    s = summary(b, "evil_x")
    assert s["status"] == "failed" and "'..'" in s["error"]


@pytest.mark.parametrize("threshold", [2, 1000])
def test_changes_file_quotes_ids_on_both_log_paths(
    env: tuple[Store, Buckets, Settings], threshold: int
) -> None:
    store, b, _ = env
    odd = ["a,b", 'q"x', "n\nl", "plain", "é"]
    add_contacts(store, [{"id": i, "region": "NORDICS"} for i in odd])
    settings = Settings(
        data_dir=b["requests"].local_root.parent.parent, bulk_log_threshold=threshold
    )  # type: ignore[union-attr]
    body = {"version": 1, "request_id": "odd", "persona": "emea", "expr": 'region = "NORDICS"'}
    b["requests"].put("odd.json", json.dumps(body).encode())
    d = Dispatcher(store, b, settings)
    d.scan()
    d.drain()
    d.close()
    rows = changes(b, "odd")
    assert rows[0] == ["contact_id", "persona", "change"]
    assert sorted(r[0] for r in rows[1:]) == sorted(odd)
    assert {(r[1], r[2]) for r in rows[1:]} == {("emea", "enter")}


def test_csv_rows_of_an_unknown_persona_fail_and_the_rest_applies(
    env: tuple[Store, Buckets, Settings],
) -> None:
    store, b, settings = env
    b["requests"].put(
        "mix.csv",
        b"contact_id,persona,action\nc0001,cio,tag\nc0002,nope,tag\nc0003,cio,tag\n",
    )
    d = Dispatcher(store, b, settings)
    d.scan()
    d.drain()
    d.close()
    s = summary(b, "mix")
    assert (s["status"], s["counts"]["tagged"], s["counts"]["failed"]) == ("partial", 2, 1)
    assert failed(b, "mix")[1][:3] == ["3", "c0002", "nope"]
    assert "unknown persona 'nope'" in failed(b, "mix")[1][3]


def test_jobs_cancel_stops_a_running_job(env: tuple[Store, Buckets, Settings]) -> None:
    import threading
    import time

    from personatag.engines import register_engine, unregister_engine
    from personatag.engines.base import Engine, Match, MatchSpec
    from personatag.jobs.repository import cancel_job, get_job

    release = threading.Event()

    class SlowEngine(Engine):
        name = "slow"

        def compute(self, spec: MatchSpec) -> Match:
            release.wait(60)
            raise RuntimeError("released")

    register_engine("slow", lambda: SlowEngine)
    store, b, settings = env
    body = {"version": 1, "request_id": "c1", "persona": "emea", "expr": "seniority > 1"}
    b["requests"].put("c1.json", json.dumps({**body, "engine": "slow"}).encode())
    d = Dispatcher(store, b, settings, poll_s=0.05)
    stop = threading.Event()
    loop = threading.Thread(target=d.serve, args=(stop,))
    loop.start()
    try:
        deadline = time.monotonic() + 30
        while get_job_status(store, "c1") != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cancel_job(store, "c1").as_json()["status"] == "running"  # asked to stop
        while not b["results"].exists("c1/summary.json") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        release.set()
        stop.set()
        loop.join(30)
        unregister_engine("slow")
    assert summary(b, "c1")["status"] == "cancelled"
    assert get_job(store, "c1").as_json()["status"] == "cancelled"
    assert members(store, "emea") == 0


def test_the_dispatcher_as_a_service_runs_a_file_and_stops_at_once(
    env: tuple[Store, Buckets, Settings],
) -> None:
    """Started in its own thread (as `serve` does): it scans on start, and a stop
    ends the wait between rounds at once, however long the poll interval."""
    import time

    store, b, settings = env
    body = {"version": 1, "request_id": "s1", "persona": "emea", "expr": 'region = "EMEA"'}
    b["requests"].put("s1.json", json.dumps(body).encode())
    d = Dispatcher(store, b, settings, poll_s=3600)
    d.start()
    try:
        deadline = time.monotonic() + 30
        while not b["results"].exists("s1/summary.json") and time.monotonic() < deadline:
            time.sleep(0.05)
        health = d.health()
        assert health.alive and health.name == "dispatcher" and health.failures == 0
    finally:
        assert d.stop(30)  # the poll interval is an hour: the stop ended the wait
    assert not d.is_alive()
    assert summary(b, "s1")["status"] == "succeeded"
    assert members(store, "emea") == 10


def get_job_status(store: Store, ref: str) -> str | None:
    from personatag.errors import NotFoundError
    from personatag.jobs.repository import get_job

    try:
        return str(get_job(store, ref).as_json()["status"])
    except NotFoundError:
        return None


def test_changes_file_of_a_bulk_change(env: tuple[Store, Buckets, Settings]) -> None:
    store, b, settings = env
    bulk = Settings(data_dir=settings.data_dir, bulk_log_threshold=2)
    body = {"version": 1, "request_id": "bulk", "persona": "emea", "expr": 'region = "EMEA"'}
    b["requests"].put("bulk.json", json.dumps(body).encode())
    d = Dispatcher(store, b, bulk)
    d.scan()
    d.drain()
    d.close()
    rows = changes(b, "bulk")
    assert rows[1:] == [[f"c{i:04d}", "emea", "enter"] for i in range(0, 40, 4)]


def test_requests_and_results_on_s3(store: Store, s3_endpoint: str, tmp_path: Path) -> None:
    from tests.s3server import s3_settings

    add_contacts(store, population(40))
    add_persona(store, "emea", name="EMEA", category="region")
    settings = s3_settings(s3_endpoint, tmp_path)
    b = open_buckets(settings)
    body = {"version": 1, "request_id": "on-s3", "persona": "emea", "expr": 'region = "EMEA"'}
    b["requests"].put("on-s3.json", json.dumps(body).encode())
    b["requests"].put("list.csv", b"contact_id,persona,action\nc0001,emea,tag\nghost,emea,tag\n")
    d = Dispatcher(store, b, settings)
    assert d.scan() == 2
    d.drain()
    d.close()
    assert b["results"].url("on-s3/summary.json").startswith("s3://")
    assert summary(b, "on-s3")["counts"]["tagged"] == 10
    assert summary(b, "list")["status"] == "partial"
    assert failed(b, "list")[1][:2] == ["3", "ghost"]
    assert len(changes(b, "on-s3")) == 11


def test_changes_file_built_beside_the_insert(env: tuple[Store, Buckets, Settings]) -> None:
    # Everyone matches: on SQLite the pks and contact ids are captured during
    # the insert and the changes file is built from them before the job commits.
    store, b, settings = env
    odd = ["a,b", 'q"x', "n\nl", "r\rx", "plain", "é"]
    add_contacts(store, [{"id": i, "seniority": 1} for i in odd])
    bulk = Settings(data_dir=settings.data_dir, bulk_log_threshold=2)
    body = {"version": 1, "request_id": "all", "persona": "cio", "expr": "seniority >= 0"}
    b["requests"].put("all.json", json.dumps(body).encode())
    untag = {**body, "request_id": "none", "action": "untag"}
    d = Dispatcher(store, b, bulk)
    d.scan()
    d.drain()
    b["requests"].put("none.json", json.dumps(untag).encode())
    d.scan()
    d.drain()
    d.close()
    everyone = [f"c{i:04d}" for i in range(40)] + odd  # in pk order, as logged
    assert changes(b, "all")[1:] == [[i, "cio", "enter"] for i in everyone]
    assert changes(b, "none")[1:] == [[i, "cio", "exit"] for i in everyone]


def _request(rid: str, **extra: object) -> bytes:
    body = {"version": 1, "request_id": rid, "persona": "emea", "expr": 'region = "EMEA"'}
    return json.dumps({**body, **extra}).encode()


def test_refusals_never_overwrite_a_finished_request(
    env: tuple[Store, Buckets, Settings],
) -> None:
    store, b, settings = env
    b["requests"].put("ok.json", _request("ok"))
    d = Dispatcher(store, b, settings)
    d.scan()
    d.drain()
    b["requests"].put("ok.csv", b"contact_id,persona\nc0001,emea\n")  # malformed, same stem
    b["requests"].put("other.json", _request("ok", persona="cio"))  # another request, same id
    b["requests"].put("again.JSON", _request("ok"))  # the same request again
    d.scan()
    d.drain()
    d.close()
    assert summary(b, "ok")["status"] == "succeeded"
    assert len(changes(b, "ok")) == 11
    assert summary(b, "ok+refused")["source"] == "ok.csv"
    refused = summary(b, "other+refused")
    assert refused["status"] == "failed" and "different request" in refused["error"]
    t = store.tables
    with store.read() as conn:
        rows = conn.execute(select(t.request_files.c.key, t.request_files.c.outcome))
        outcomes = {k: o for k, o in rows}
    assert outcomes == {
        "ok.json": "succeeded",
        "ok.csv": "failed",
        "other.json": "failed",
        "again.JSON": "duplicate",
    }


def test_a_cancelled_queued_request_stays_cancelled(env: tuple[Store, Buckets, Settings]) -> None:
    from personatag.jobs.repository import cancel_job

    store, b, settings = env
    b["requests"].put("q.json", _request("q"))
    first = Dispatcher(store, b, settings)
    assert first._claim("q.json")
    job = first.prepare("q.json")  # claimed and queued, not yet run
    assert job is not None
    assert cancel_job(store, "q").as_json()["status"] == "cancelled"
    first.close()  # gone before it ran the job
    second = Dispatcher(store, b, settings)
    assert second.scan() == 0
    second.close()
    assert members(store, "emea") == 0


def test_a_job_ended_elsewhere_does_not_apply(env: tuple[Store, Buckets, Settings]) -> None:
    from personatag.jobs import repository as jobs

    store, b, settings = env
    b["requests"].put("x.json", _request("x"))
    d = Dispatcher(store, b, settings)
    job = d.prepare("x.json")
    assert job is not None
    with store.write() as conn:  # as a dispatcher taking the work over would
        jobs.finish_job(conn, store, job.job_pk, JobStatus.FAILED, {}, error="taken over")
    assert d.run(job) == "failed"
    d.close()
    assert members(store, "emea") == 0
    assert jobs.get_job(store, str(job.job_pk)).as_json()["error"] == "taken over"


def test_shutdown_leaves_the_file_to_run_again(env: tuple[Store, Buckets, Settings]) -> None:
    import threading

    from personatag.engines import register_engine, unregister_engine
    from personatag.engines.base import Engine, Match, MatchSpec
    from personatag.engines.local.batch import LocalEngine
    from personatag.jobs.repository import get_job

    started, slow = threading.Event(), threading.Event()
    slow.set()

    class Slow(Engine):
        name = "slow-start"

        def compute(self, spec: MatchSpec) -> Match:
            started.set()
            if slow.is_set():
                threading.Event().wait(30)
            return LocalEngine(self.store).compute(spec)

    register_engine("slow-start", lambda: Slow)
    store, b, settings = env
    b["requests"].put("s.json", _request("s", engine="slow-start"))
    try:
        d = Dispatcher(store, b, settings)
        d.scan()
        assert started.wait(30)
        d.close()  # SIGTERM does this
        job = get_job(store, "s").as_json()
        assert job["status"] == "failed" and "dispatcher stopped" in job["error"]
        assert not b["results"].exists("s/summary.json")
        t = store.tables
        gone = f"{socket.gethostname()}:999999999:0:x"  # the stopped dispatcher's process
        with store.write() as conn:
            conn.execute(t.request_files.update().values(claimed_by=gone))
        slow.clear()
        again = Dispatcher(store, b, settings)
        assert again.scan() == 1
        again.drain()
        again.close()
    finally:
        slow.clear()
        unregister_engine("slow-start")
    assert summary(b, "s")["status"] == "succeeded"
    assert members(store, "emea") == 10


def test_a_job_that_committed_but_was_not_reported_is_reported_later(
    env: tuple[Store, Buckets, Settings],
) -> None:
    store, b, settings = env
    b["requests"].put("r.csv", b"contact_id,persona,action\nc0001,cio,tag\nnope,cio,tag\n")
    d = Dispatcher(store, b, settings)
    d.scan()
    d.drain()
    d.close()
    before = summary(b, "r")
    for key in b["results"].list("r/"):  # as if its dispatcher died right after the commit
        b["results"].delete(key)
    t = store.tables
    gone = f"{socket.gethostname()}:999999999:0:x"
    with store.write() as conn:
        conn.execute(t.request_files.update().values(outcome=None, claimed_by=gone))
    again = Dispatcher(store, b, settings)
    again.scan()
    again.drain()
    again.close()
    after = summary(b, "r")
    assert (after["status"], after["counts"], after["job"]) == (
        before["status"],
        before["counts"],
        before["job"],
    )
    assert failed(b, "r")[1][:2] == ["3", "nope"]
    assert [r[0] for r in changes(b, "r")[1:]] == ["c0001"]
    assert members(store, "cio") == 1


@pytest.mark.parametrize("size", [1, 3, 7, 100])
def test_captured_ids_split_into_parts_between_ids(size: int) -> None:
    from personatag.tagging.changes import _label_parts

    ids = [b"a", b"bb,c", b"", b"dddd", b'e"e', "é".encode()]
    parts = list(_label_parts(b"\x00".join(ids), size=size))
    assert b"\x00".join(parts) == b"\x00".join(ids)
    assert [i for p in parts for i in p.split(b"\x00")] == ids
