"""The local cluster's autoscaler: the policy on its own clock, the supervisor
adding and retiring task managers over stand-in scripts, and (slow) a real
cluster growing to its maximum under queued requests and a stream backlog and
shrinking back after the delay while a job runs on it.

Ports: the real clusters here use REST 19300 (19300-19302, 19400-19420) and
19500 (19500-19502, 19600-19620).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select, update

from personatag import accounts
from personatag.config import Settings
from personatag.contacts import set_contact
from personatag.definitions.criteria import add_criterion
from personatag.definitions.personas import add_persona
from personatag.domain import utcnow
from personatag.engines.flink.jobs import JOB_ID_RE, client_env
from personatag.engines.flink.runtime import supervisor as sv
from personatag.engines.flink.runtime.autoscale import (
    Autoscaler,
    Load,
    LoadMeter,
    Look,
    ScalePolicy,
    Scaling,
    recommend,
    stream_parallelism,
)
from personatag.engines.flink.runtime.cluster import start, status, stop
from personatag.engines.flink.runtime.home import FlinkHome, locate
from personatag.engines.flink.runtime.rest import FlinkRest
from personatag.engines.flink.stream import FlinkStream
from personatag.errors import PersonatagError
from personatag.metrics import Metrics
from personatag.store import changefeed, open_store
from personatag.store.changefeed import head, set_offset
from personatag.store.db import absolute_url
from personatag.web import create_app
from tests.flink.conftest import cli_env, local_settings, run_cli, wait_until
from tests.helpers import add_contacts, population

POLICY = ScalePolicy(
    minimum=1,
    maximum=4,
    target_utilisation=0.7,
    stabilisation_s=30,
    down_delay_s=120,
    rescales_per_hour=3,
    backlog_per_tm=1000,
)


# -- what the load calls for ---------------------------------------------------------


def test_recommend_takes_the_largest_signal_within_the_bounds() -> None:
    assert recommend(POLICY, Load(), 2) == (1, "idle: no backlog, no queued or running job")
    # busy time: 3.6 busy slots, 2 a task manager, at most 70% each: ceil(3.6 / 1.4) = 3
    n, why = recommend(POLICY, Load(busy=3.6, running=1, slots_per_tm=2), 2)
    assert (n, why) == (3, "3.6 slots' worth of busy time (each slot 70% busy at most)")
    # exactly at the target is enough
    assert recommend(POLICY, Load(busy=1.4, slots_per_tm=2), 2)[0] == 1
    # every running and queued job gets its parallelism in slots
    n, why = recommend(POLICY, Load(running=1, queued=4, slots_per_tm=2, parallelism=1), 1)
    assert (n, why) == (3, "5 jobs (1 running, 4 queued) need 5 slots")
    # the backlog: a task manager per backlog_per_tm changes
    n, why = recommend(POLICY, Load(backlog=2500), 1)
    assert (n, why) == (3, "2,500 changes wait in the stream's backlog")
    # capped at the maximum, with the reason saying so
    n, why = recommend(POLICY, Load(backlog=10_000, queued=1), 1)
    assert n == 4 and why.endswith("(capped at the maximum, 4)")
    low = ScalePolicy(minimum=2, maximum=3)
    n, why = recommend(low, Load(queued=1), 2)
    assert n == 2 and why.endswith("(the minimum is 2)")


def test_policy_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="minimum <= maximum"):
        ScalePolicy(minimum=3, maximum=2)
    with pytest.raises(ValueError, match="target utilisation"):
        ScalePolicy(target_utilisation=1.5)
    with pytest.raises(ValueError, match="at least flink_autoscale_min"):
        Settings(flink_autoscale_min=3, flink_autoscale_max=2)
    s = Settings(flink_autoscale=True, flink_task_managers=9, flink_autoscale_max=3)
    assert s.flink_start_task_managers == 3
    assert Settings(flink_task_managers=9).flink_start_task_managers == 9


# -- decisions over time -------------------------------------------------------------------


def test_up_at_once_then_settles_and_down_only_after_the_delay() -> None:
    a = Autoscaler(POLICY)
    burst = Load(backlog=3500)  # wants 4
    d = a.decide(0, burst, 1, idle=1)
    assert (d.action, d.current, d.target) == ("up", 1, 4)
    # stabilisation: another change waits, and says how long
    d = a.decide(10, Load(), 4, idle=4)
    assert d.action == "hold" and "settling after the last rescale (20 s)" in d.reason
    # the load is gone: a smaller size must be enough for the whole delay,
    # counted from when it was first enough (10 s)
    d = a.decide(40, Load(backlog=1500), 4, idle=4)  # wants 2
    assert d.action == "hold" and "shrinking in 90 s" in d.reason
    d = a.decide(100, Load(), 4, idle=4)  # wants 1
    assert d.action == "hold" and "shrinking in 30 s" in d.reason
    # after the delay: down to the largest size wanted in it (2, not 1)
    d = a.decide(131, Load(), 4, idle=4)
    assert (d.action, d.target) == ("down", 2)
    # a further shrink waits the delay again
    d = a.decide(200, Load(), 2, idle=2)
    assert d.action == "hold"
    d = a.decide(252, Load(), 2, idle=2)
    assert (d.action, d.target) == ("down", 1)
    assert a.decide(300, Load(), 1, idle=1).action == "steady"
    state = a.state()
    assert [(x["current"], x["target"]) for x in state["decisions"]] == [(1, 4), (4, 2), (2, 1)]
    assert state["rescales_last_hour"] == 3 and state["target"] == 1


def test_load_returning_during_the_delay_cancels_the_shrink() -> None:
    a = Autoscaler(POLICY)
    a.decide(0, Load(queued=3, slots_per_tm=1), 1, idle=1)  # up to 3
    a.decide(40, Load(), 3, idle=3)
    a.decide(100, Load(queued=3, slots_per_tm=1), 3, idle=0)  # back: steady
    d = a.decide(170, Load(), 3, idle=3)  # the delay starts again here
    assert d.action == "hold" and "shrinking in 120 s" in d.reason


def test_busy_time_is_averaged_over_its_window() -> None:
    a = Autoscaler(ScalePolicy(maximum=4, busy_window_s=10))
    slot = {"slots_per_tm": 1, "running": 1}
    # a job starting up is busy for a moment: one sample of 1.0 among idle ones
    for t, busy in enumerate([0.1, 0.1, 1.0, 0.1]):
        d = a.decide(t, Load(busy=busy, **slot), 1, idle=0)
    assert d.action == "steady" and d.load.busy == pytest.approx(0.325)
    # busy from then on: it grows once the mean passes 0.7 (six samples later)
    for t in range(4, 20):
        d = a.decide(t, Load(busy=1.0, **slot), 1, idle=0)
        if d.action == "up":
            break
    assert (t, d.action, d.target) == (9, "up", 2) and d.load.busy == pytest.approx(0.73)


def test_only_idle_task_managers_go() -> None:
    a = Autoscaler(ScalePolicy(maximum=4, stabilisation_s=0, down_delay_s=0))
    d = a.decide(0, Load(running=1), 4, idle=0)
    assert d.action == "hold" and "no task manager is idle" in d.reason
    d = a.decide(1, Load(running=1), 4, idle=2)
    assert (d.action, d.target) == ("down", 2)


def test_a_shrink_that_waits_for_idle_task_managers_says_to_what() -> None:
    a = Autoscaler(ScalePolicy(maximum=4, stabilisation_s=0, down_delay_s=5))
    d = a.decide(0, Load(running=1), 3, idle=0)  # within the delay: nothing waits yet
    assert d.action == "hold" and a.state()["shrink_to"] is None
    d = a.decide(5, Load(running=1), 3, idle=0)  # after it: the shrink waits for idle ones
    assert d.action == "hold" and a.state()["shrink_to"] == 1
    d = a.decide(6, Load(running=1), 3, idle=1)  # one can go, the shrink goes on waiting
    assert (d.action, d.target) == ("down", 2) and a.state()["shrink_to"] == 1
    a.decide(7, Load(running=1), 2, idle=0)  # the delay again: nothing waits
    assert a.state()["shrink_to"] is None
    a.decide(20, Load(queued=3), 2, idle=2)  # load again: nothing waits
    assert a.state()["shrink_to"] is None


def test_running_jobs_count_the_slots_they_hold() -> None:
    # the stream's job at parallelism 4 holds 4 slots, a queued request wants 1 more
    n, why = recommend(POLICY, Load(running=1, running_slots=4, queued=1, slots_per_tm=2), 3)
    assert (n, why) == (3, "2 jobs (1 running, 1 queued) need 5 slots")


def test_the_stream_job_follows_its_own_backlog() -> None:
    on = {"enabled": True, "shrink_to": None}
    assert stream_parallelism(2, 4, None, 3, 10**6, 1000) == 2  # not scaling: as configured
    assert stream_parallelism(2, 4, {"enabled": False}, 3, 10**6, 1000) == 2
    assert stream_parallelism(2, 4, on, 3, 0, 1000) == 2  # no backlog: one task manager's worth
    assert stream_parallelism(2, 4, on, 3, 1500, 1000) == 4  # two task managers' worth
    assert stream_parallelism(2, 4, on, 3, 10**6, 1000) == 6  # no more than are registered
    assert stream_parallelism(2, 1, on, 3, 10**6, 1000) == 3  # never more than their slots
    assert stream_parallelism(2, 4, on | {"shrink_to": 1}, 3, 10**6, 1000) == 2  # a shrink waits
    assert stream_parallelism(2, 4, on, 0, 10**6, 1000) == 2  # none registered (yet)


def test_the_hourly_budget_holds_rescales() -> None:
    a = Autoscaler(ScalePolicy(maximum=4, stabilisation_s=0, down_delay_s=0, rescales_per_hour=2))
    assert a.decide(0, Load(queued=2), 1, idle=1).action == "up"
    assert a.decide(10, Load(), 2, idle=2).action == "down"
    d = a.decide(20, Load(queued=2), 1, idle=1)
    assert d.action == "hold" and "budget of 2 rescales an hour is used" in d.reason
    # an hour after the first, one rescale is free again
    assert a.decide(3600, Load(queued=2), 1, idle=1).action == "up"


# -- what the store adds to the load ------------------------------------------------------


def test_the_store_gives_queued_flink_requests_and_the_stream_backlog(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url, create=True)
    meter = LoadMeter(
        FlinkRest("http://127.0.0.1:9"), url, parallelism=1, slots_per_tm=1, backlog=True
    )
    assert meter.store_load() == (0, 0)  # no stream has read the feed: no backlog
    _queue_jobs(store, 3)
    jobs = store.tables.jobs
    with store.write() as conn:  # another engine's request does not count
        conn.execute(
            insert(jobs).values(request_pk=1, status="queued", engine="local", queued_at=utcnow())
        )
        set_offset(conn, store, "stream", 0)
    _backlog(store, 7)
    assert meter.store_load() == (3, 7)
    with store.write() as conn:
        set_offset(conn, store, "stream", head(conn, store) - 2)
        set_offset(conn, store, "webhooks", 0)  # a consumer of the log, not the feed
    assert meter.store_load() == (3, 2)
    # a change naming many contacts (an import) counts each of them
    with store.write() as conn:
        changefeed.record(conn, store, changefeed.KIND_CONTACT, list(range(1, 101)), ["region"])
    assert meter.store_load() == (3, 102)
    # without the flink stream the backlog is not the cluster's work
    meter.backlog = False
    assert meter.store_load() == (3, 0)
    store.engine.dispose()
    # no store (yet): the look says so instead of failing
    gone = LoadMeter(
        FlinkRest("http://127.0.0.1:9"),
        f"sqlite:///{tmp_path / 'none.db'}",
        parallelism=1,
        slots_per_tm=1,
        backlog=True,
    )
    with pytest.raises(PersonatagError, match="there is no store"):
        gone.store_load()


def test_a_relative_sqlite_path_is_made_absolute_for_the_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_url("sqlite:///rel/store.db") == f"sqlite:///{tmp_path}/rel/store.db"
    assert absolute_url("sqlite:////abs/store.db") == "sqlite:////abs/store.db"
    pg = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    assert absolute_url(pg) == pg


# -- the supervisor adds and retires task managers (stand-in scripts) ----------------------


def _fake_home(tmp_path: Path) -> FlinkHome:
    home = tmp_path / "fake-flink"
    (home / "bin").mkdir(parents=True)
    for name in ("jobmanager.sh", "taskmanager.sh"):
        script = home / "bin" / name
        script.write_text("#!/bin/sh\nexec sleep 300\n")
        script.chmod(0o755)
    return FlinkHome(python=Path(sys.executable), home=home)


def test_supervisor_adds_and_retires_idle_task_managers(tmp_path: Path) -> None:
    looks: list[Look] = []
    idle_now: set[str] = set()
    policy = ScalePolicy(minimum=1, maximum=3, stabilisation_s=0, down_delay_s=0)
    scaling = Scaling(Autoscaler(policy), lambda: looks.pop(0), lambda: frozenset(idle_now))

    def look(load: Load, idle: set[str], problem: str | None = None) -> None:
        ids = {sv.resource_id(c) for c in s.task_managers()}
        looks.append(Look(load, frozenset(ids), frozenset(idle), problem))

    s = sv.Supervisor(
        _fake_home(tmp_path),
        tmp_path / "conf",
        tmp_path / "log",
        tmp_path / "run",
        1,
        sv.RestartPolicy(term_timeout_s=5),
        autoscale=scaling,
    )
    s.run_dir.mkdir(parents=True)
    s.log_dir.mkdir(parents=True)
    try:
        for child in s.children:
            s._start(child)
        assert sv.resource_id(s.children[1]) == "taskmanager-1-r0"
        look(Load(queued=5, slots_per_tm=2), set())  # wants 3
        assert s._autoscale()
        assert [c.name for c in s.task_managers()] == [f"taskmanager-{i}" for i in (1, 2, 3)]
        assert all(c.proc is not None and c.proc.poll() is None for c in s.task_managers())
        # idle at the look: taskmanager-1, -2 and -3, but asked again just before
        # retiring, -2 has been given a job: -1 and -3 go (1 is wanted), -2 stays
        look(Load(running=1, slots_per_tm=2), {f"taskmanager-{i}-r0" for i in (1, 2, 3)})
        idle_now.update({"taskmanager-1-r0", "taskmanager-3-r0"})
        assert s._autoscale()
        retiring = [c for c in s.children if c.state == "retiring"]
        assert sorted(c.name for c in retiring) == ["taskmanager-1", "taskmanager-3"]
        wait_until(lambda: (s._tick(), len(s.children) == 2)[1], 10, "the retired to exit")
        assert [c.name for c in s.task_managers()] == ["taskmanager-2"]
        # a retired child is not restarted; new ones take new numbers
        look(Load(queued=3, slots_per_tm=1), set())
        s._autoscale()
        assert [c.name for c in s.task_managers()] == [f"taskmanager-{i}" for i in (2, 4, 5)]
        # a look that cannot read the store, or fails, says so and changes nothing
        look(Load(), set(), "the store could not be read: there is no store at x")
        assert s._autoscale() and scaling.problem == looks_problem(scaling)
        assert len(s.task_managers()) == 3
        assert s._autoscale()  # `looks` is empty: the measure raises
        assert scaling.problem is not None and "could not be measured" in scaling.problem
        assert len(s.task_managers()) == 3
        s._write_state()
        state = json.loads((s.run_dir / sv.STATE_FILE).read_text())["autoscale"]
        assert state["counts"] == {"up": 2, "down": 1}
        assert (state["current"], state["retiring"]) == (3, 0)
        assert state["problem"].startswith("the load could not be measured")
        # the metrics read the same state
        m = Metrics()
        m.watch_autoscaler(lambda: state)
        text = _render(m)
        assert 'personatag_flink_autoscale_task_managers{size="current"} 3.0' in text
        assert 'personatag_flink_autoscale_decisions_total{action="up"} 2.0' in text
        assert 'personatag_flink_autoscale_load{signal="queued"} 3.0' in text
    finally:
        s._shutdown()
    assert all(c.proc is None for c in s.children)


def looks_problem(scaling: Scaling) -> str:
    assert scaling.problem is not None and scaling.problem.startswith("the store could not")
    return scaling.problem


def _render(m: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(m.registry).decode()


# -- a real cluster ----------------------------------------------------------------------


def _queue_jobs(store: Any, n: int) -> list[int]:
    jobs = store.tables.jobs
    with store.write() as conn:
        return [
            conn.execute(
                insert(jobs).values(
                    request_pk=1000 + i,
                    status="queued",
                    engine="flink",
                    queued_at=utcnow(),
                )
            ).inserted_primary_key[0]
            for i in range(n)
        ]


def scaling_settings(
    tmp_path: Path,
    port: int,
    flink_python: Path,
    *,
    maximum: int,
    down_delay_s: float,
    backlog: int,
    **extra: Any,
) -> Settings:
    """A local cluster of 1-slot task managers that scales itself from 1 to
    `maximum` on short windows, with its store (SQLite) and the flink stream."""
    knobs: dict[str, Any] = {
        "flink_slots": 1,
        "flink_parallelism": 1,
        "flink_submitter": False,
        "flink_autoscale": True,
        "flink_autoscale_min": 1,
        "flink_autoscale_max": maximum,
        "flink_autoscale_interval_s": 0.5,
        "flink_autoscale_stabilisation_s": 2.0,
        "flink_autoscale_down_delay_s": down_delay_s,
        "flink_autoscale_backlog_per_tm": backlog,
        # The busy-time signal is the unit tests'; here a starting job's moment
        # of busy time must not ask for another task manager.
        "flink_autoscale_target": 1.0,
        "store_url": f"sqlite:///{tmp_path / 'store.db'}",
        "stream_engine": "flink",
    }
    return local_settings(tmp_path, port, flink_python, **(knobs | extra))


def _last_load(s: Settings) -> dict[str, Any]:
    last: dict[str, Any] = status(s)["autoscale"].get("last") or {}
    return last.get("load") or {}


def _tm_ids(s: Settings) -> list[str]:
    return sorted(str(t["id"]) for t in status(s)["task_managers"])


@pytest.mark.slow
def test_a_burst_grows_the_cluster_to_its_maximum_and_it_shrinks_back(
    tmp_path: Path, flink_python: Path
) -> None:
    port = 19300
    s = scaling_settings(tmp_path, port, flink_python, maximum=3, down_delay_s=6.0, backlog=10)
    store_url = str(s.store_url)
    store = open_store(store_url, create=True)
    try:
        up = start(s, wait_s=120)
        assert len(up["task_managers"]) == 1
        assert up["autoscale"]["enabled"] is True
        wait_until(
            lambda: status(s)["autoscale"].get("reason", "").startswith("idle"),
            30,
            "the first look at an idle cluster",
        )
        # A job that keeps running through the rescales (unbounded).
        job = _run_forever_job(s, tmp_path)
        wait_until(lambda: _running(s, job), 60, "the long job to run")
        # its busy time is measured (REST busyTimeMsPerSecond), a share of one slot
        wait_until(
            lambda: isinstance(_last_load(s).get("busy"), float) and _last_load(s)["running"],
            30,
            "a busy-time measurement of the running job",
        )
        assert 0.0 <= _last_load(s)["busy"] <= 1.0

        # The burst: a queued flink request beside the running job asks for a
        # second task manager; then a stream backlog of 45 changes for 5 (10
        # changes each), capped at the maximum, 3.
        queued = _queue_jobs(store, 1)
        wait_until(lambda: len(_tm_ids(s)) == 2, 90, "a second task manager")
        seen = status(s)["autoscale"]
        first = seen["decisions"][-1]
        assert (first["current"], first["target"]) == (1, 2), seen
        assert first["reason"] == "2 jobs (1 running, 1 queued) need 2 slots"
        with store.write() as conn:
            set_offset(conn, store, "stream", 0)
        _backlog(store, 45)
        wait_until(lambda: len(_tm_ids(s)) == 3, 90, "the cluster to grow to 3 task managers")
        grown = status(s)["autoscale"]["decisions"][-1]
        assert (grown["current"], grown["target"]) == (2, 3)
        assert grown["reason"] == (
            "45 changes wait in the stream's backlog (capped at the maximum, 3)"
        )
        assert _tm_ids(s) == ["taskmanager-1-r0", "taskmanager-2-r0", "taskmanager-3-r0"]
        # What a person sees: the API, the workbench's Flink page, the metrics
        # (once the supervisor's next look has seen the third one registered).
        wait_until(
            lambda: status(s)["autoscale"].get("registered") == 3, 30, "the state to say 3 are in"
        )
        api, page, metrics = _views(s, store)
        assert (api["autoscale"]["current"], api["autoscale"]["target"]) == (3, 3)
        assert 'id="autoscale-reason"' in page and "capped at the maximum, 3" in page
        assert page.count('class="scale-box on') == 3
        assert "1 → 2 (up)" in page and "2 → 3 (up)" in page
        assert 'personatag_flink_autoscale_task_managers{size="current"} 3.0' in metrics
        assert 'personatag_flink_autoscale_decisions_total{action="up"} 2.0' in metrics

        # The load goes: the requests ran, the stream caught up.
        with store.write() as conn:
            conn.execute(
                update(store.tables.jobs)
                .where(store.tables.jobs.c.pk.in_(queued))
                .values(status="succeeded")
            )
            set_offset(conn, store, "stream", head(conn, store))
        t_idle = time.monotonic()
        wait_until(lambda: len(_tm_ids(s)) == 1, 120, "the cluster to shrink to 1")
        assert time.monotonic() - t_idle >= 6.0  # not before the delay
        st = status(s)
        assert st["autoscale"]["current"] == 1
        assert [d["action"] for d in st["autoscale"]["decisions"]][-1] == "down"
        # the long job was never touched: it runs on the task manager that stayed
        assert _running(s, job)
        with FlinkRest(st["url"]) as rest:
            assert rest.job(job)["state"] == "RUNNING"
            assert rest.exceptions(job).get("exceptionHistory", {}).get("entries", []) == []

        shown = run_cli(
            ["flink", "status"],
            cli_env(
                data_dir=str(tmp_path),
                flink_rest_port=str(port),
                flink_python=str(flink_python),
                flink_autoscale="true",
            ),
        )
        assert shown.returncode == 0, shown.stderr
        assert "  autoscale 1-3 task managers: now 1, target 1" in shown.stdout
    finally:
        stop(s)
        store.engine.dispose()


@pytest.mark.slow
def test_the_flink_stream_follows_the_cluster_through_savepoints(
    tmp_path: Path, flink_python: Path
) -> None:
    port = 19500
    s = scaling_settings(
        tmp_path,
        port,
        flink_python,
        maximum=2,
        down_delay_s=5.0,
        backlog=50,
        flink_autoscale_stabilisation_s=3.0,
        stream_reconcile_s=0,
        stream_flink_checkpoint_s=0.3,
        stream_flink_monitor_s=0.2,
        stream_flink_timeout_s=90,
    )
    store_url = str(s.store_url)
    store = open_store(store_url, create=True)
    add_contacts(store, population(200))
    add_persona(store, "emea", name="EMEA", category="test")
    add_criterion(
        store, "emea", persona="emea", expr='region = "EMEA"', mode="ongoing", exit_policy="remove"
    )
    proc = FlinkStream(store, s)
    try:
        start(s, wait_s=120)
        proc.catch_up(timeout_s=180)  # the backfill, in the store
        assert _emea(store) == _expected(store) and len(_expected(store)) == 50
        # A first change starts the job, at one slot on the one task manager.
        set_contact(store, "c0001", {"region": "EMEA"})
        proc.catch_up(timeout_s=180)
        first = proc.job_id
        assert first is not None and json.loads(proc.state_file.read_text())["parallelism"] == 1
        assert _emea(store) == _expected(store)

        # A backlog of 120 changes (wants 3 task managers, capped at 2).
        for i in range(120):
            set_contact(store, f"c{i:04d}", {"region": "EMEA" if i % 2 else "AMER"})
        wait_until(lambda: len(_tm_ids(s)) == 2, 90, "a second task manager")
        # The stream's job moves onto both (its backlog asks for 3) and works
        # through it.
        wait_until(lambda: (proc.step(), proc.rescales)[1], 180, "the stream job to rescale")
        assert proc.rescales == [(1, 2)] and proc.job_id != first
        proc.catch_up(timeout_s=120)
        assert _emea(store) == _expected(store)

        # Idle: the job moves back to one slot; the task manager it leaves is
        # idle, and after the delay the cluster shrinks to 1.
        wait_until(
            lambda: (proc.step(), len(_tm_ids(s)) == 1)[1], 180, "the stream and cluster to shrink"
        )
        assert proc.rescales == [(1, 2), (2, 1)]
        st = status(s)["autoscale"]
        assert [(d["current"], d["target"]) for d in st["decisions"]] == [(1, 2), (2, 1)]
        shrunk = json.loads(proc.state_file.read_text())
        assert shrunk["parallelism"] == 1 and shrunk["savepoint"].startswith("file:")
        # only the savepoint in use is kept
        kept = list((tmp_path / "flink" / "savepoints" / "stream-stream").iterdir())
        assert [k.name for k in kept] == [Path(shrunk["savepoint"]).name]
        with FlinkRest(status(s)["url"]) as rest:
            assert rest.job(str(proc.job_id))["state"] == "RUNNING"
        # and it still answers right
        set_contact(store, "c0199", {"region": "EMEA"})
        proc.catch_up(timeout_s=120)
        assert _emea(store) == _expected(store)
    finally:
        proc.close()
        stop(s)
        store.engine.dispose()


def _emea(store: Any) -> set[str]:
    t = store.tables
    with store.read() as conn:
        return set(
            conn.scalars(
                select(t.contacts.c.id)
                .join(t.memberships, t.memberships.c.contact_pk == t.contacts.c.pk)
                .join(t.personas, t.personas.c.pk == t.memberships.c.persona_pk)
                .where(t.personas.c.key == "emea")
            )
        )


def _expected(store: Any) -> set[str]:
    t = store.tables
    with store.read() as conn:
        return set(conn.scalars(select(t.contacts.c.id).where(t.contacts.c.region == "EMEA")))


def _views(s: Settings, store: Any) -> tuple[dict[str, Any], str, str]:
    """The cluster as /api/v1/flink/cluster, the /cluster page and /metrics show it."""
    accounts.create_user(store, "vic", "Correct-Horse-42", "viewer", actor="test")
    token, _ = accounts.create_token(store, "vic", "tests", actor="test")
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(s, store)) as c:
        api = c.get("/api/v1/flink/cluster", headers=auth)
        page = c.get("/cluster", headers=auth)
        metrics = c.get("/metrics")
    assert (api.status_code, page.status_code, metrics.status_code) == (200, 200, 200)
    return api.json(), page.text, metrics.text


def _backlog(store: Any, n: int) -> None:
    with store.write() as conn:
        for i in range(n):
            changefeed.record(conn, store, changefeed.KIND_CONTACT, [i + 1], ["region"])


def _running(s: Settings, jid: str) -> bool:
    return any(j["id"] == jid and j["state"] == "RUNNING" for j in status(s)["running_jobs"])


# An unbounded job that runs in the JVMs only (datagen into blackhole): it holds
# one slot of one task manager for as long as the test wants.
FOREVER_JOB = """
from pyflink.table import EnvironmentSettings, TableEnvironment

t = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
t.execute_sql("CREATE TABLE s (n BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '50')")
t.execute_sql("CREATE TABLE k (n BIGINT) WITH ('connector' = 'blackhole')")
t.execute_sql("INSERT INTO k SELECT n FROM s")
"""


def _run_forever_job(s: Settings, tmp_path: Path) -> str:
    """Submit FOREVER_JOB (detached); its JobID."""
    home = locate(s)
    script = tmp_path / "forever_job.py"
    script.write_text(FOREVER_JOB)
    argv = [str(home.bin / "flink"), "run", "-d", "-m", f"127.0.0.1:{s.flink_rest_port}"]
    argv += ["-pyclientexec", str(home.python), "-pyexec", str(home.python), "-py", str(script)]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=client_env(s, home),
        cwd=tmp_path,
    )
    found = JOB_ID_RE.search(done.stdout + done.stderr)
    assert done.returncode == 0 and found is not None, done.stdout + done.stderr
    return found.group(1)
