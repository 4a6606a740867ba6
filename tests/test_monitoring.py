"""The monitoring figures on SQLite and PostgreSQL: what /api/v1/monitoring/*
answers equals what the test counts itself from the store's rows (jobs,
requests, the membership log, memberships, stream samples); the stream keeps
a bounded history of samples; the Flink cluster route says why a cluster does
not answer (and, with the test cluster, what it runs)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from personatag import accounts
from personatag.config import Settings
from personatag.contacts import set_contact
from personatag.definitions.criteria import add_criterion
from personatag.definitions.personas import add_persona
from personatag.domain import Action, JobStatus, utcnow
from personatag.engines.local.stream.processor import StreamProcessor
from personatag.engines.local.stream.status import Gauges, history
from personatag.jobs import repository as jobs
from personatag.metrics import default_metrics
from personatag.store import Store
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from personatag.web import create_app
from tests.helpers import add_contacts, population
from tests.memberships.guard import outside_writes

API = "/api/v1"


def day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", flink_url=f"http://127.0.0.1:{free_port()}")


@pytest.fixture
def client(store: Store, settings: Settings) -> Iterator[TestClient]:
    accounts.create_user(store, "vic", "Correct-Horse-42", "viewer", actor="test")
    token, _ = accounts.create_token(store, "vic", "tests", actor="test")
    with TestClient(create_app(settings, store)) as c:
        c.headers["Authorization"] = f"Bearer {token}"
        yield c


@pytest.fixture
def activity(store: Store, settings: Settings) -> None:
    """Real requests (tag, untag, dry run, a failed job), then some of them
    moved to earlier days, as if they had happened then."""
    add_contacts(store, population(40))
    add_persona(store, "emea", name="EMEA", category="region")
    add_persona(store, "apac", name="APAC", category="region")
    add_persona(store, "empty", name="Nobody yet", category="region")
    tag = Action.TAG
    run_adhoc(store, AdhocRequest("emea", tag, expr='region = "EMEA"', actor="erin"), settings)
    ids = [f"c{n:04d}" for n in range(1, 6)]
    run_adhoc(store, AdhocRequest("apac", tag, contact_ids=ids, actor="erin"), settings)
    run_adhoc(store, AdhocRequest("apac", Action.UNTAG, contact_ids=ids[:2]), settings)
    run_adhoc(store, AdhocRequest("emea", tag, expr='region != ""', dry_run=True), settings)
    _, job_pk, _ = jobs.open_request(
        store,
        request_id="r-failed",
        submitted_by="erin",
        persona_pk=None,
        action="tag",
        engine="local",
        criterion_pk=None,
        expr='region = "EMEA"',
        as_of=utcnow(),
        dry_run=False,
        spec={},
    )
    with store.write() as conn:
        jobs.finish_job(conn, store, job_pk, JobStatus.FAILED, {}, error="a test failure")
    t = store.tables
    with store.write() as conn:
        two_days = 2 * 86_400_000_000
        first_job = conn.scalar(select(t.jobs.c.pk).order_by(t.jobs.c.pk).limit(1))
        first_request = conn.scalar(select(t.requests.c.pk).order_by(t.requests.c.pk).limit(1))
        conn.execute(
            t.jobs.update()
            .where(t.jobs.c.pk == first_job)
            .values(
                started_at=t.jobs.c.started_at - two_days,
                finished_at=t.jobs.c.finished_at - two_days,
            )
        )
        conn.execute(
            t.requests.update()
            .where(t.requests.c.pk == first_request)
            .values(created_at=t.requests.c.created_at - two_days)
        )
        with outside_writes():
            first_log = conn.scalar(select(t.membership_log.c.seq).order_by("seq").limit(1))
            conn.execute(
                t.membership_log.update()
                .where(t.membership_log.c.seq == first_log)
                .values(at=t.membership_log.c.at - two_days)
            )


def test_jobs_daily_counts_what_the_store_holds(
    store: Store, activity: None, client: TestClient
) -> None:
    got = client.get(f"{API}/monitoring/jobs-daily", params={"days": 5})
    assert got.status_code == 200, got.text
    days = got.json()["days"]
    assert len(days) == 5 and days[-1]["day"] == day(utcnow())
    t = store.tables.jobs
    with store.read() as conn:
        rows = list(conn.execute(select(t.c.status, t.c.started_at, t.c.finished_at)))
    counted: dict[str, Counter[str]] = defaultdict(Counter)
    runs: dict[str, list[float]] = defaultdict(list)
    for status, started, finished in rows:
        if finished is None:
            continue
        counted[day(finished)][status] += 1
        if started is not None:
            runs[day(finished)].append((finished - started).total_seconds())
    for entry in days:
        for status in ("succeeded", "partial", "failed", "cancelled"):
            assert entry[status] == counted[entry["day"]][status], (entry, status)
        ran = runs[entry["day"]]
        if ran:
            assert entry["mean_seconds"] == pytest.approx(sum(ran) / len(ran), abs=0.002)
            assert entry["max_seconds"] == pytest.approx(max(ran), abs=0.002)
        else:
            assert entry["mean_seconds"] is None
    # two days ago holds the moved job; today the rest, one of them failed
    assert sum(days[-3][s] for s in ("succeeded", "partial", "failed", "cancelled")) == 1
    assert days[-1]["failed"] == 1
    assert sum(e["succeeded"] for e in days) == 4


def test_requests_per_day_and_hour(store: Store, activity: None, client: TestClient) -> None:
    t = store.tables.requests
    with store.read() as conn:
        rows = list(conn.execute(select(t.c.created_at, t.c.dry_run)))
    per_day = Counter(day(at) for at, _ in rows)
    dry = Counter(day(at) for at, d in rows if d)
    got = client.get(f"{API}/monitoring/requests-daily", params={"days": 7}).json()["days"]
    assert {e["day"]: e["requests"] for e in got if e["requests"]} == dict(per_day)
    assert {e["day"]: e["dry_runs"] for e in got if e["dry_runs"]} == dict(dry)
    assert sum(per_day.values()) == 5

    hourly = client.get(f"{API}/monitoring/requests-hourly", params={"hours": 72}).json()["hours"]
    assert len(hourly) == 72
    per_hour = Counter(at.astimezone(UTC).strftime("%Y-%m-%d %H:00") for at, _ in rows)
    assert {e["hour"]: e["requests"] for e in hourly if e["requests"]} == dict(per_hour)


def test_enters_and_exits_per_day(store: Store, activity: None, client: TestClient) -> None:
    log = store.tables.membership_log
    p = store.tables.personas
    with store.read() as conn:
        rows = list(
            conn.execute(select(log.c.at, log.c.change, log.c.bulk_count, log.c.persona_pk))
        )
        apac = conn.scalar(select(p.c.pk).where(p.c.key == "apac"))
    moved: dict[str, Counter[str]] = defaultdict(Counter)
    for at, change, bulk, _ in rows:
        moved[day(at)][change] += bulk or 1
    got = client.get(f"{API}/monitoring/memberships-daily", params={"days": 4}).json()
    assert got["persona"] is None and len(got["days"]) == 4
    for entry in got["days"]:
        assert (entry["entered"], entry["exited"]) == (
            moved[entry["day"]]["enter"],
            moved[entry["day"]]["exit"],
        )
    assert sum(e["exited"] for e in got["days"]) == 2

    only = client.get(
        f"{API}/monitoring/memberships-daily", params={"days": 4, "persona": "apac"}
    ).json()
    apac_moves = Counter()
    for at, change, bulk, persona_pk in rows:
        if persona_pk == apac and day(at) == day(utcnow()):
            apac_moves[change] += bulk or 1
    assert (only["days"][-1]["entered"], only["days"][-1]["exited"]) == (
        apac_moves["enter"],
        apac_moves["exit"],
    )
    missing = client.get(f"{API}/monitoring/memberships-daily", params={"persona": "nope"})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]
    bad = client.get(f"{API}/monitoring/memberships-daily", params={"days": 0})
    assert bad.status_code == 422


def test_persona_sizes_are_the_memberships(
    store: Store, activity: None, client: TestClient
) -> None:
    m = store.tables.memberships
    p = store.tables.personas
    with store.read() as conn:
        keys = {pk: key for pk, key in conn.execute(select(p.c.pk, p.c.key))}
        members = Counter(
            keys[pk] for pk, _ in set(conn.execute(select(m.c.persona_pk, m.c.contact_pk)))
        )
    got = client.get(f"{API}/monitoring/persona-sizes").json()["personas"]
    assert {g["key"]: g["members"] for g in got} == {k: members[k] for k in keys.values()}
    assert [g["members"] for g in got] == sorted((g["members"] for g in got), reverse=True)
    assert got[-1] == {"key": "empty", "name": "Nobody yet", "category": "region", "members": 0}


def test_the_stream_keeps_a_bounded_history(
    store: Store, store_url: str, settings: Settings, client: TestClient
) -> None:
    add_contacts(store, population(20))
    add_persona(store, "emea", name="EMEA", category="region")
    add_criterion(
        store,
        "emea-live",
        persona="emea",
        expr='region = "EMEA"',
        mode="ongoing",
        exit_policy="remove",
    )
    # Nothing sampled yet: the stream has never run here.
    first = client.get(f"{API}/monitoring/stream-history").json()
    assert (first["running"], first["last_sample_at"], first["samples"]) == (False, None, [])

    ss = store.tables.stream_samples
    with store.write() as conn:  # a sample from before the retention bound
        conn.execute(
            ss.insert().values(
                name="stream",
                at=utcnow() - timedelta(days=8),
                offset_seq=0,
                head=0,
                lag_changes=0,
                lag_seconds=0.0,
                changes=0,
                evaluations=0,
                span_s=30.0,
            )
        )
    proc = StreamProcessor(store, settings.model_copy(update={"stream_sample_s": 0.001}))
    proc.catch_up()
    set_contact(store, "c0003", {"region": "APAC"}, actor="test")
    set_contact(store, "c0004", {"region": "EMEA"}, actor="test")
    proc.catch_up()
    with store.read() as conn:
        rows = list(conn.execute(select(ss).order_by(ss.c.seq)))
    assert rows and all(r.at > utcnow() - timedelta(days=7) for r in rows)  # the old one went
    assert sum(r.changes for r in rows) >= 2  # the two updates were consumed and counted

    got = client.get(f"{API}/monitoring/stream-history", params={"hours": 1}).json()
    assert got["running"] is True and got["sample_s"] == settings.stream_sample_s
    assert [s["offset"] for s in got["samples"]] == [r.offset_seq for r in rows]
    assert [s["lag_changes"] for s in got["samples"]] == [r.lag_changes for r in rows]
    assert [s["changes_per_s"] for s in got["samples"]] == [
        round(r.changes / r.span_s, 3) for r in rows
    ]
    assert got["samples"][-1]["offset"] == got["samples"][-1]["head"]  # caught up

    # The CLI says the same.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")},
        "PERSONATAG_STORE_URL": store_url,
        "PERSONATAG_DATA_DIR": str(settings.data_dir),
    }
    done = subprocess.run(
        [sys.executable, "-m", "personatag.cli", "stream", "history", "--hours", "1", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    shown = json.loads(done.stdout)
    assert [s["changes_per_s"] for s in shown["samples"]] == [
        s["changes_per_s"] for s in got["samples"]
    ]


def test_gauges_sample_no_more_often_than_asked(store: Store) -> None:
    gauges = Gauges(store, default_metrics(), sample_s=3600.0)
    for _ in range(5):
        gauges.lag(0)
    assert len(history(store, utcnow() - timedelta(hours=1))) == 1  # the first step only


def test_cluster_route_says_why_it_is_not_reachable(settings: Settings, client: TestClient) -> None:
    got = client.get(f"{API}/flink/cluster")
    assert got.status_code == 200
    body = got.json()
    address = settings.flink_url.removeprefix("http://")  # type: ignore[union-attr]
    assert body["reachable"] is False
    assert body["reason"] == (
        f"nothing listens on {address} — check that the cluster runs and that "
        "PERSONATAG_FLINK_URL names it"
    )
    assert "Connection refused" in body["error"]
    assert body["task_managers"] == [] and body["dashboard"] == "/flink/"


def test_cluster_route_for_a_local_cluster_that_is_not_started(
    store: Store, tmp_path: Path
) -> None:
    port = free_port()
    local = Settings(data_dir=tmp_path / "local", flink_url=None, flink_rest_port=port)
    app = create_app(local, store)
    accounts.create_user(store, "vic", "Correct-Horse-42", "viewer", actor="test")
    token, _ = accounts.create_token(store, "vic", "tests", actor="test")
    with TestClient(app) as c:
        body = c.get(f"{API}/flink/cluster", headers={"Authorization": f"Bearer {token}"}).json()
    assert body["reason"] == (
        f"nothing listens on 127.0.0.1:{port} — start it with `personatag flink start`"
    )
    assert body["dashboard"] is None  # no cluster configured: no proxy either


@pytest.mark.skipif(
    not os.environ.get("PERSONATAG_TEST_FLINK_URL"),
    reason="PERSONATAG_TEST_FLINK_URL is not set (`make test` starts a local cluster)",
)
def test_cluster_route_with_the_test_cluster(store: Store, tmp_path: Path) -> None:
    from personatag.engines.flink.runtime.rest import FlinkRest

    url = os.environ["PERSONATAG_TEST_FLINK_URL"]
    real = Settings(data_dir=tmp_path / "real", flink_url=url)
    accounts.create_user(store, "vic", "Correct-Horse-42", "viewer", actor="test")
    token, _ = accounts.create_token(store, "vic", "tests", actor="test")
    with TestClient(create_app(real, store)) as c:
        body: dict[str, Any] = c.get(
            f"{API}/flink/cluster", headers={"Authorization": f"Bearer {token}"}
        ).json()
    with FlinkRest(url) as rest:
        overview = rest.overview()
        tms = rest.taskmanagers()
    assert body["reachable"] is True and body["reason"] is None
    assert body["slots_total"] == overview["slots-total"]
    assert {tm["id"] for tm in body["task_managers"]} == {tm["id"] for tm in tms}
    assert all(tm["memory_bytes"] and tm["last_heartbeat"] for tm in body["task_managers"])
    assert body["dashboard"] == "/flink/"


def test_the_dashboards_recent_requests_and_jobs_today(store: Store, activity: None) -> None:
    from personatag.jobs import stats

    recent = stats.recent_requests(store, limit=3)
    t = store.tables
    with store.read() as conn:
        newest = list(
            conn.execute(
                select(t.requests.c.request_id, t.requests.c.pk)
                .order_by(t.requests.c.pk.desc())
                .limit(3)
            )
        )
    assert [r["request_id"] for r in recent] == [r.request_id for r in newest]
    assert recent[0]["request_id"] == "r-failed" and recent[0]["status"] == "failed"
    assert recent[0]["persona"] is None and recent[0]["submitted_by"] == "erin"
    assert recent[1]["persona"] == "emea" and recent[1]["dry_run"] is True
    assert recent[2]["persona"] == "apac" and recent[2]["action"] == "untag"
    now = stats.jobs_now(store)
    # today: the apac tag and untag and the dry run; the first job ended two days ago
    shown = (now["succeeded"], now["partial"], now["failed"], now["queued"], now["running"])
    assert shown == (3, 0, 1, 0, 0)
