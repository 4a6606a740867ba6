"""The dispatcher as a real process: files dropped while it runs, and kill -9."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from personatag.buckets import Buckets, open_buckets
from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.store import Store, open_store
from tests.helpers import add_contacts, population


def start(url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")}
    env |= {"PERSONATAG_STORE_URL": url, "PERSONATAG_DATA_DIR": str(data_dir)}
    log = (data_dir / "dispatcher.log").open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "personatag.cli",
            "dispatcher",
            "--poll",
            "0.1",
            "--metrics-port",
            "0",
            "--log-json",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def metrics_url(data_dir: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in (data_dir / "dispatcher.log").read_text().splitlines():
            if line.startswith("metrics on "):
                return line.removeprefix("metrics on ")
        time.sleep(0.05)
    raise AssertionError("the dispatcher did not say where its metrics are")


def wait_for(b: Buckets, rid: str, timeout: float = 60) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b["results"].exists(f"{rid}/summary.json"):
            return json.loads(b["results"].get(f"{rid}/summary.json"))
        time.sleep(0.05)
    raise AssertionError(f"no summary for {rid} within {timeout} s")


@pytest.fixture
def env(store_url: str, tmp_path: Path) -> tuple[Store, Buckets, str, Path]:
    store = open_store(store_url)
    add_contacts(store, population(400))
    add_persona(store, "emea", name="EMEA", category="region")
    return store, open_buckets(Settings(data_dir=tmp_path)), store_url, tmp_path


def requests_counted(data_dir: Path) -> dict[str, float]:
    """personatag_requests_total by status, scraped from the dispatcher's /metrics."""
    with urllib.request.urlopen(metrics_url(data_dir)) as resp:  # noqa: S310 - loopback
        scraped = resp.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(scraped)}
    return {
        s.labels["status"]: s.value
        for s in families["personatag_requests"].samples
        if s.name == "personatag_requests_total"
    }


def request(rid: str, expr: str = 'region = "EMEA"') -> bytes:
    body = {"version": 1, "request_id": rid, "persona": "emea", "action": "tag", "expr": expr}
    return json.dumps(body).encode()


def test_files_dropped_while_it_runs_and_before_it_starts(
    env: tuple[Store, Buckets, str, Path],
) -> None:
    store, b, url, data_dir = env
    b["requests"].put("early.json", request("early"))  # dropped while no dispatcher ran
    proc = start(url, data_dir)
    try:
        assert wait_for(b, "early")["status"] == "succeeded"
        b["requests"].put("late.json", request("late", "seniority >= 5"))
        b["requests"].put("junk.csv", b"contact_id;persona\n")
        assert wait_for(b, "late")["status"] == "succeeded"
        assert wait_for(b, "junk")["status"] == "failed"
        assert proc.poll() is None  # a bad file never stops the dispatcher
        # A job is counted just after its summary.json is written: scrape until
        # the last one is in (or the deadline passes and the assertion says what).
        deadline = time.monotonic() + 30
        while True:
            requests = requests_counted(data_dir)
            if requests == {"succeeded": 2, "failed": 1} or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert requests["succeeded"] == 2 and requests["failed"] == 1
        logged = [
            json.loads(line)
            for line in (data_dir / "dispatcher.log").read_text().splitlines()
            if line.startswith("{")
        ]
        assert any(e.get("request_id") == "late" and e.get("status") == "succeeded" for e in logged)
    finally:
        proc.kill()
        proc.wait()
    store.dispose()


def test_kill_9_at_random_points_loses_nothing_and_applies_once(
    env: tuple[Store, Buckets, str, Path],
) -> None:
    store, b, url, data_dir = env
    rnd = random.Random(7)
    exprs = ['region = "EMEA"', "seniority >= 5", 'region = "APAC"', "seniority < 2"]
    for i in range(4):
        b["requests"].put(f"k{i}.json", request(f"k{i}", exprs[i]))
    # Ten dispatchers in a row, each killed at a random moment: during start-up,
    # a claim, a job, its result files. Whatever each left must be recoverable.
    for _ in range(10):
        proc = start(url, data_dir)
        time.sleep(rnd.uniform(0.2, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = start(url, data_dir)  # the survivor finishes whatever was left
    try:
        try:
            summaries = [wait_for(b, f"k{i}", timeout=90) for i in range(4)]
        except AssertionError:
            t = store.tables
            with store.read() as conn:
                state = [
                    conn.execute(select(t.request_files)).all(),
                    conn.execute(
                        select(t.jobs.c.pk, t.jobs.c.status, t.jobs.c.owner, t.jobs.c.error)
                    ).all(),
                ]
            raise AssertionError(f"stuck: {state}") from None
    finally:
        proc.kill()
        proc.wait()
    assert all(s["status"] == "succeeded" for s in summaries)
    t = store.tables
    with store.read() as conn:
        statuses = list(conn.scalars(select(t.jobs.c.status)))
        held = conn.scalar(select(func.count()).select_from(t.memberships))
        enters = conn.scalar(
            select(
                func.coalesce(func.sum(func.coalesce(t.membership_log.c.bulk_count, 1)), 0)
            ).where(t.membership_log.c.change == "enter")
        )
    assert set(statuses) <= {"succeeded", "failed"}  # failed: a run cut short, then redone
    assert statuses.count("succeeded") == 4
    # the union of the four criteria, each contact entered exactly once
    union = {i for i in range(400) if i % 4 == 0 or i % 10 >= 5 or i % 4 == 2 or i % 10 < 2}
    assert held == enters == len(union)
    store.dispose()


def test_submit_wait_as_a_user_runs_it(env: tuple[Store, Buckets, str, Path]) -> None:
    store, b, url, data_dir = env
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")}
    cli_env |= {"PERSONATAG_STORE_URL": url, "PERSONATAG_DATA_DIR": str(data_dir)}

    def submit(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "personatag.cli",
                "submit",
                str(path),
                "--wait",
                "--json",
                "--timeout",
                "60",
            ],
            env=cli_env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    good = data_dir / "good.json"
    good.write_bytes(request("w1"))
    bad = data_dir / "bad.json"
    bad.write_text('{"version": 1, "request_id": "w1", "persona": "nope", "expr": "seniority > 1"}')
    proc = start(url, data_dir)
    try:
        first = submit(good)
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["counts"]["tagged"] == 100
        again = submit(good)  # stored as w1.2.json: a duplicate, reports the recorded result
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["counts"]["tagged"] == 100
        refused = submit(bad)  # another request under the used id
        assert refused.returncode == 1
        out = json.loads(refused.stdout)
        assert out["status"] == "failed" and "different request" in out["error"]
        assert out["results"] == "w1_3+refused"
    finally:
        proc.kill()
        proc.wait()
    assert sorted(b["requests"].list()) == ["w1.2.json", "w1.3.json", "w1.json"]
    store.dispose()
