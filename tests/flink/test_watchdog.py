"""The stall watchdog and the deadline on a cluster of their own: a task manager
paused (SIGSTOP) or killed under a Flink job ends that job `failed` with a clear
reason within the bound, a metric and a log line say why, and the dispatcher
keeps serving `local` requests meanwhile; a job past its deadline is cancelled
in Flink; two jobs share the cluster's slots at once.

The jobs run over 200,000 contacts and their ~2M reads, so a job is still
running when its task manager is disturbed. The deadline test holds its job
instead, by pausing the only task manager before the job is submitted: the job
is accepted and cannot start, whatever it computes."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from personatag.buckets import Buckets, open_buckets
from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.engines.flink.deploy import deploy
from personatag.engines.flink.runtime import cluster
from personatag.engines.flink.runtime.rest import FlinkRest
from personatag.generate.run import generate
from personatag.metrics import default_metrics
from personatag.requests.dispatcher import Dispatcher
from personatag.store import Store, open_store

from .engine_support import flink_python

pytestmark = pytest.mark.slow

# The module's cluster. pytest-xdist may run its tests on two workers, each
# with the module fixture: each worker gets its own port, or the second
# cluster would find the first on its ports.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
PORT = 18300 + 2000 * (int(_WORKER) if _WORKER.isdigit() else 0)
STALL_S = 20.0
# A readership window over every read: a job that runs for a while.
SLOW = 'count(read where sector = "Energy", 3650d) >= 2 and job_title like "%a%"'


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, Buckets, Settings]]:
    data = tmp_path_factory.mktemp("watchdog")
    settings = Settings(
        data_dir=data,
        flink_python=flink_python(),
        flink_rest_port=PORT,
        flink_slots=2,
        flink_parallelism=1,
        flink_stall_s=STALL_S,
        flink_poll_s=0.5,
        job_deadline_s=600.0,
    )
    cluster.start(settings)
    store = open_store(settings.resolved_store_url, create=True)
    try:
        generate(store, contacts=200_000, seed=3)
        for key in ("slow", "fast"):
            add_persona(store, key, name=key, category="test", actor="test")
        buckets = open_buckets(settings)
        deploy(buckets, properties={}, actor="test")
        yield store, buckets, settings
    finally:
        store.dispose()
        cluster.stop(settings)


def task_manager_pid(settings: Settings) -> int:
    state = json.loads(cluster.ClusterLayout.of(settings).state_file.read_text())
    pids = [c["pid"] for c in state["children"] if "task" in c["name"] and c["pid"]]
    assert pids, state
    return int(pids[0])


def wait_running(rest: FlinkRest, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [
            j for j in rest.jobs_overview() if j["state"] == "RUNNING" and j["tasks"]["running"]
        ]
        if running:
            return str(running[0]["jid"])
        time.sleep(0.2)
    raise AssertionError("no Flink job started running")


def stalls(reason: str) -> float:
    value = default_metrics().registry.get_sample_value(
        "personatag_flink_stalls_total", {"reason": reason}
    )
    return value or 0.0


def drop(
    buckets: Buckets,
    request_id: str,
    persona: str,
    engine: str,
    expr: str,
    as_of: str | None = None,
) -> None:
    body = {
        "version": 1,
        "request_id": request_id,
        "persona": persona,
        "engine": engine,
        "expr": expr,
        "as_of": as_of,
    }
    buckets["requests"].put(f"{request_id}.json", json.dumps(body).encode())


def summary(buckets: Buckets, request_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    key = f"{request_id}/summary.json"
    while not buckets["results"].exists(key):
        assert time.monotonic() < deadline, f"no summary for {request_id} within {timeout} s"
        time.sleep(0.2)
    return json.loads(buckets["results"].get(key))


def run_with(
    env: tuple[Store, Buckets, Settings],
    request_id: str,
    disturb: str,
    caplog: pytest.LogCaptureFixture,
) -> tuple[dict, float]:
    store, buckets, settings = env
    rest = FlinkRest(f"http://127.0.0.1:{PORT}")
    d = Dispatcher(store, buckets, settings, workers=2)
    stop = threading.Event()
    loop = threading.Thread(target=d.serve, args=(stop,), daemon=True)
    loop.start()
    try:
        drop(buckets, request_id, "slow", "flink", SLOW)
        wait_running(rest)
        tm = task_manager_pid(settings)
        os.kill(tm, signal.SIGSTOP if disturb == "pause" else signal.SIGKILL)
        disturbed = time.monotonic()
        try:
            # the dispatcher still serves local requests while Flink is stuck
            drop(buckets, f"{request_id}-local", "fast", "local", 'region = "EMEA"')
            local = summary(buckets, f"{request_id}-local", 30)
            assert local["status"] == "succeeded", local
            result = summary(buckets, request_id, STALL_S + 60)
            took = time.monotonic() - disturbed
        finally:
            if disturb == "pause":
                os.kill(tm, signal.SIGCONT)
    finally:
        stop.set()
        loop.join(60)
    return result, took


def test_a_paused_task_manager_fails_the_job_within_the_bound(
    env: tuple[Store, Buckets, Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="personatag.engines.flink.watchdog")
    before = sum(stalls(r) for r in ("no_progress", "unreachable", "no_task_managers"))
    result, took = run_with(env, "paused", "pause", caplog)
    assert result["status"] == "failed", result
    error = result["error"]
    # Either our watchdog saw no progress, or Flink's heartbeat declared the
    # task manager lost first, or an RPC to it timed out; all name the cause.
    assert "stall watchdog" in error or "TaskManager" in error or "heartbeat" in error, error
    assert took < STALL_S + 45, took
    if "stall watchdog" in error:
        after = sum(stalls(r) for r in ("no_progress", "unreachable", "no_task_managers"))
        assert after > before
        assert any("flink stall" in r.getMessage() for r in caplog.records)


def test_a_killed_task_manager_fails_the_job_and_the_cluster_recovers(
    env: tuple[Store, Buckets, Settings], caplog: pytest.LogCaptureFixture
) -> None:
    _, buckets, settings = env
    result, took = run_with(env, "killed", "kill", caplog)
    assert result["status"] == "failed", result
    assert result["error"].startswith(("Flink job", "no free task slot", "the Flink cluster")), (
        result
    )
    assert took < STALL_S + 45, took
    # The supervisor restarts the task manager: the next Flink request runs.
    rest = FlinkRest(f"http://127.0.0.1:{PORT}")
    deadline = time.monotonic() + 90
    while rest.overview().get("taskmanagers", 0) < 1:
        assert time.monotonic() < deadline, "the task manager did not come back"
        time.sleep(1)
    store = env[0]
    d = Dispatcher(store, buckets, settings, workers=1)
    drop(buckets, "after-kill", "fast", "flink", "seniority >= 2")
    d.scan()
    d.drain()
    d.close()
    assert summary(buckets, "after-kill", 5)["status"] == "succeeded"


def test_the_deadline_cancels_the_flink_job(env: tuple[Store, Buckets, Settings]) -> None:
    """A request past its deadline fails saying so, and its job is cancelled in
    Flink (not left running on the cluster)."""
    store, buckets, settings = env
    rest = FlinkRest(f"http://127.0.0.1:{PORT}")
    # The deadline comes before the stall bound and Flink's own heartbeat timeout.
    short = Settings(**{**settings.model_dump(), "job_deadline_s": 15.0, "flink_stall_s": 120.0})
    tm = task_manager_pid(settings)
    os.kill(tm, signal.SIGSTOP)  # holds the job (see the module's docstring)
    try:
        drop(buckets, "r-deadline", "slow", "flink", SLOW)
        d = Dispatcher(store, buckets, short, workers=1)
        started = time.monotonic()
        d.scan()
        d.drain()
        d.close()
        took = time.monotonic() - started
    finally:
        os.kill(tm, signal.SIGCONT)
    result = summary(buckets, "r-deadline", 5)
    assert result["status"] == "failed"
    assert "deadline of 15 s" in result["error"], result
    assert took < 15 + 30, took
    t = store.tables
    with store.read() as conn:
        ref = conn.scalar(select(t.jobs.c.engine_ref).order_by(t.jobs.c.pk.desc()).limit(1))
    assert ref is not None
    deadline = time.monotonic() + 60
    while rest.job(ref)["state"] not in ("CANCELED", "FAILED", "FINISHED"):
        assert time.monotonic() < deadline, "the Flink job was not cancelled"
        time.sleep(0.5)
    assert rest.job(ref)["state"] == "CANCELED"


def task_span(rest: FlinkRest, jid: str) -> tuple[int, int]:
    """(first task deployed, last task ended) of a finished Flink job, in ms.

    A vertex's start-time is when its first subtask was deployed, which needs a
    slot; the job's own start-time is its submission, slot or not."""
    vertices = rest.job(jid)["vertices"]
    starts = [v["start-time"] for v in vertices if v["start-time"] > 0]
    ends = [v["end-time"] for v in vertices if v["end-time"] > 0]
    assert starts and len(ends) == len(vertices), vertices
    return min(starts), max(ends)


def run_dispatcher(d: Dispatcher) -> threading.Thread:
    def work() -> None:
        d.scan()
        d.drain()
        d.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_several_flink_jobs_run_at_once(env: tuple[Store, Buckets, Settings]) -> None:
    """Two workers run two Flink requests on the cluster's two slots at once.

    Left alone, the two jobs reach the cluster seconds apart (each request
    exports its own snapshot, and the warm submitter submits one job at a time)
    and each runs about a second, so they need not overlap. The task manager is
    therefore paused until both jobs are on the cluster: released, the two
    jobs can only run side by side if the dispatcher submitted both while
    neither had finished and the cluster gives each a slot of its own. Their
    tasks' deploy and end times then overlap; with one slot the second job's
    tasks would start after the first's ended. A first run of the same
    requests (fixed as-of) writes their snapshots and warms the submitter, so
    the pause lasts two submissions, well within Flink's heartbeat timeout."""
    store, buckets, settings = env
    rest = FlinkRest(f"http://127.0.0.1:{PORT}")
    as_of = "2026-06-30T12:00:00Z"
    exprs = {
        "par-a": f'region = "EMEA" and seniority >= 2 or {SLOW}',
        "par-b": f'count(login, 60d) >= 3 or firm_type = "Hedge Fund" or {SLOW}',
    }
    for key, expr in exprs.items():
        add_persona(store, key, name=key, category="test", actor="test")
        drop(buckets, f"{key}-warm", key, "flink", expr, as_of)
    run_dispatcher(Dispatcher(store, buckets, settings, workers=2)).join(300)
    for key in exprs:
        assert summary(buckets, f"{key}-warm", 5)["status"] == "succeeded"

    known = {j["jid"] for j in rest.jobs_overview()}
    # Below the cluster's heartbeat timeout, after which a paused task manager is lost.
    hold_s = cluster.HEARTBEAT_TIMEOUT_MS / 1000 - 3
    tm = task_manager_pid(settings)
    os.kill(tm, signal.SIGSTOP)
    paused = time.monotonic()
    try:
        for key, expr in exprs.items():
            drop(buckets, key, key, "flink", expr, as_of)
        worker = run_dispatcher(Dispatcher(store, buckets, settings, workers=2))
        on_cluster: list[dict] = []
        while len(on_cluster) < 2 and time.monotonic() - paused < hold_s:
            time.sleep(0.1)
            on_cluster = [j for j in rest.jobs_overview() if j["jid"] not in known]
        waiting = [j for j in on_cluster if j["state"] not in cluster.TERMINAL_JOB_STATES]
    finally:
        os.kill(tm, signal.SIGCONT)
    assert len(waiting) == 2, (
        f"the dispatcher did not have both Flink jobs on the cluster within {hold_s:g} s: "
        f"{on_cluster}"
    )
    worker.join(300)
    assert not worker.is_alive(), "the dispatcher did not finish the two requests"
    spans = {}
    t = store.tables
    for key in exprs:
        result = summary(buckets, key, 5)
        assert result["status"] == "succeeded", result
        with store.read() as conn:
            ref = conn.scalar(
                select(t.jobs.c.engine_ref)
                .join(t.requests, t.requests.c.pk == t.jobs.c.request_pk)
                .where(t.requests.c.request_id == key)
            )
        assert ref in {j["jid"] for j in waiting}, (ref, waiting)
        spans[key] = task_span(rest, str(ref))
    (a0, a1), (b0, b1) = spans.values()
    assert a0 < b1 and b0 < a1, f"the two Flink jobs' tasks did not run at once: {spans}"
