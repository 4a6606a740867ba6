"""A running job's progress, read from the store while the job waits at each
step, on real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import ColumnElement, Connection, update

from personatag.buckets import Buckets, LocalBucket, open_buckets
from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.domain import Action, JobStatus
from personatag.engines import register_engine, unregister_engine
from personatag.engines.base import Engine, Match, MatchSpec
from personatag.engines.local.batch import LocalEngine
from personatag.jobs.progress import EVALUATING, Progress, describe
from personatag.jobs.repository import cancel_job, get_job, open_request
from personatag.requests.dispatcher import Dispatcher
from personatag.store import Store
from personatag.tagging.plan import Item, resolve
from personatag.tagging.runner import execute
from tests.helpers import NOW, add_contacts, population


class Stops:
    """Points where the job waits for the test: each one is announced, then held
    until the test releases it."""

    def __init__(self) -> None:
        self._reached: queue.Queue[tuple[str, threading.Event]] = queue.Queue()
        self._held: list[threading.Event] = []
        self._open = False

    def wait_here(self, name: str) -> None:
        go = threading.Event()
        self._held.append(go)
        if self._open:
            return
        self._reached.put((name, go))
        if not go.wait(60):
            raise RuntimeError(f"the test never released the job at {name!r}")

    def next(self) -> tuple[str, threading.Event]:
        return self._reached.get(timeout=60)

    def release_all(self) -> None:
        """Let the job run through (a test that failed must not leave it waiting)."""
        self._open = True
        for go in self._held:
            go.set()


@pytest.fixture
def stops() -> Iterator[Stops]:
    """A `gated` engine: the local engine, stopping when it computes and when
    the applier asks for its condition (inside the apply transaction)."""
    held = Stops()

    class GatedMatch(Match):
        def __init__(self, inner: Match) -> None:
            self.inner = inner

        def condition(self, conn: Connection, store: Store) -> ColumnElement[bool]:
            held.wait_here("applying")
            return self.inner.condition(conn, store)

    class GatedEngine(Engine):
        name = "gated"

        def compute(self, spec: MatchSpec) -> Match:
            held.wait_here("evaluating")
            return GatedMatch(LocalEngine(self.store, self.settings).compute(spec))

    register_engine("gated", lambda: GatedEngine)
    yield held
    held.release_all()
    unregister_engine("gated")


def _open(store: Store, request_id: str, engine: str, **kw: Any) -> tuple[int, int, Any]:
    """A request and its job with no persona, criterion or expression of their own."""
    return open_request(
        store,
        request_id=request_id,
        submitted_by="t",
        persona_pk=None,
        action="tag",
        engine=engine,
        criterion_pk=None,
        expr=None,
        as_of=NOW,
        dry_run=False,
        **kw,
    )


@pytest.fixture
def pop(store: Store) -> Store:
    add_contacts(store, population(40))
    add_persona(store, "emea", name="EMEA", category="region")
    add_persona(store, "cio", name="CIO", category="job title")
    return store


def progress_of(store: Store, ref: str) -> dict[str, Any]:
    job = get_job(store, ref).as_json()
    progress = job["progress"]
    assert progress is not None, job
    datetime.fromisoformat(progress.pop("updated_at"))  # present, and a timestamp
    return {"status": job["status"], **progress}


def figure(status: str, phase: str, done: int | None, total: int | None, unit: str | None) -> Any:
    return {"status": status, "phase": phase, "done": done, "total": total, "unit": unit}


class StopBeforeSummary(Buckets):
    """The configured buckets, with the results area stopping before summary.json."""

    def __init__(self, settings: Settings, stops: Stops) -> None:
        super().__init__(settings)
        self._results = _StoppingResults(settings.data_dir / "buckets" / "results", stops)

    def __getitem__(self, area: str) -> Any:
        return self._results if area == "results" else super().__getitem__(area)


class _StoppingResults(LocalBucket):
    def __init__(self, root: Path, stops: Stops) -> None:
        super().__init__("results", root)
        self.stops = stops

    def put(self, key: str, data: bytes) -> None:
        if key.endswith("/summary.json"):
            self.stops.wait_here("writing results")
        super().put(key, data)


def test_a_request_file_job_shows_each_phase_while_it_runs(
    pop: Store, stops: Stops, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path)
    buckets = StopBeforeSummary(settings, stops)
    body = {"version": 1, "request_id": "p1", "persona": "emea", "expr": 'region = "EMEA"'}
    buckets["requests"].put("p1.json", json.dumps({**body, "engine": "gated"}).encode())
    d = Dispatcher(pop, buckets, settings, progress_s=0)
    try:
        assert d.scan() == 1
        name, go = stops.next()
        assert name == "evaluating"
        assert progress_of(pop, "p1") == figure("running", "evaluating", 0, 1, "items")
        go.set()

        name, go = stops.next()
        assert name == "applying"
        # Inside the apply transaction: SQLite has one writer, so no count.
        done = None if pop.one_writer else 0
        assert progress_of(pop, "p1") == figure("running", "applying", done, 1, "items")
        go.set()

        name, go = stops.next()
        assert name == "writing results"
        # The outcome committed with the memberships; the files are still to come.
        assert progress_of(pop, "p1") == figure("succeeded", "writing results", None, None, None)
        assert not buckets["results"].exists("p1/summary.json")
        go.set()
        d.drain(timeout=60)
    finally:
        stops.release_all()
        d.close()
    assert progress_of(pop, "p1") == figure("succeeded", "done", None, None, None)
    assert buckets["results"].exists("p1/summary.json")
    assert describe(get_job(pop, "p1").as_json()["progress"], "succeeded") == "done"


def test_item_counts_move_as_items_are_evaluated_and_applied(pop: Store, stops: Stops) -> None:
    items = [
        Item("emea", Action.TAG, expr='region = "EMEA"'),
        Item("cio", Action.TAG, expr='job_title = "CIO"'),
    ]
    plan = resolve(pop, items)
    request_pk, job_pk, _ = _open(pop, "two", "gated", spec={"items": 2}, status=JobStatus.QUEUED)
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(
                execute(
                    pop,
                    Settings(),
                    plan,
                    request_id="two",
                    request_pk=request_pk,
                    job_pk=job_pk,
                    as_of=NOW,
                    dry_run=False,
                    actor="t",
                    engine_name="gated",
                    progress=Progress(pop, job_pk, every_s=0),
                ).status
            )
        except BaseException as exc:
            outcome.append(exc)

    assert get_job(pop, "two").as_json()["progress"] is None  # queued: nothing to show yet
    worker = threading.Thread(target=run)
    worker.start()
    names, seen = [], []
    try:
        for _ in range(4):
            name, go = stops.next()
            names.append(name)
            seen.append(progress_of(pop, "two"))
            go.set()
    finally:
        stops.release_all()
        worker.join(60)
    assert names == ["evaluating", "evaluating", "applying", "applying"]
    counted = not pop.one_writer  # see the first test
    assert seen == [
        figure("running", "evaluating", 0, 2, "items"),
        figure("running", "evaluating", 1, 2, "items"),
        figure("running", "applying", 0 if counted else None, 2, "items"),
        figure("running", "applying", 1 if counted else None, 2, "items"),
    ]
    assert outcome == ["succeeded"]
    # Given a Progress, execute leaves `done` to its caller (results may follow).
    assert progress_of(pop, "two") == figure(
        "succeeded", "applying", 2 if counted else None, 2, "items"
    )


def test_a_cancelled_job_keeps_the_progress_it_stopped_at(
    pop: Store, stops: Stops, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path)
    buckets = open_buckets(settings)
    body = {"version": 1, "request_id": "c1", "persona": "emea", "expr": 'region = "EMEA"'}
    buckets["requests"].put("c1.json", json.dumps({**body, "engine": "gated"}).encode())
    d = Dispatcher(pop, buckets, settings, progress_s=0)
    try:
        d.scan()
        name, _ = stops.next()
        assert name == "evaluating"
        assert cancel_job(pop, "c1").as_json()["status"] == "running"  # asked to stop
        d.heartbeat()  # where the dispatcher passes the request on to the job
        d.drain(timeout=60)  # the job leaves the engine behind, still held
    finally:
        stops.release_all()
        d.close()
    job = get_job(pop, "c1").as_json()
    assert job["status"] == "cancelled"
    assert progress_of(pop, "c1") == figure("cancelled", "evaluating", 0, 1, "items")
    assert describe(job["progress"], job["status"]) == "stopped while evaluating 0/1 item"


def test_a_local_job_without_a_dispatcher_ends_done(pop: Store) -> None:
    from personatag.tagging.adhoc import AdhocRequest, run_adhoc

    req = AdhocRequest(
        persona="emea", action=Action.TAG, expr='region = "EMEA"', as_of=NOW, request_id="cli-1"
    )
    assert run_adhoc(pop, req, Settings()).status == "succeeded"
    assert progress_of(pop, "cli-1") == figure("succeeded", "done", None, None, None)


def test_a_write_that_would_wait_for_a_lock_is_retried_not_waited_for(
    pop: Store, caplog: pytest.LogCaptureFixture
) -> None:
    _, job_pk, _ = _open(pop, "busy", "local", spec={})
    progress = Progress(pop, job_pk, every_s=0.1, wait_s=0.1)
    j = pop.tables.jobs
    # Another writer holds SQLite's write lock, or on PostgreSQL the job's row.
    with pop.write() as conn:
        conn.execute(update(j).where(j.c.pk == job_pk).values(heartbeat_at=NOW))
        progress.phase(EVALUATING, done=0, total=1, unit="items")  # returns: nothing raised
        assert "progress of job" in caplog.text and "not recorded" in caplog.text
    deadline = time.monotonic() + 30  # a bound for a hang, not a speed
    while get_job(pop, "busy").as_json()["progress"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    progress.close()
    assert progress_of(pop, "busy") == figure("running", "evaluating", 0, 1, "items")


def test_describe() -> None:
    at = {"updated_at": "2026-06-30T12:00:00Z"}
    applying = {"phase": "applying", "done": 3, "total": 10, "unit": "items", **at}
    assert describe(applying, "running") == "applying 3/10 items"
    assert describe(applying, "failed") == "stopped while applying 3/10 items"
    held = {"phase": "applying", "done": None, "total": 1, "unit": "items", **at}
    assert describe(held, "running") == "applying 1 item"
    tasks = {"phase": "evaluating", "done": 1200, "total": 4000, "unit": "tasks", **at}
    assert describe(tasks, "running") == "evaluating 1,200/4,000 tasks"
    bare = {"phase": "writing results", "done": None, "total": None, "unit": None, **at}
    assert describe(bare, "succeeded") == "writing results"
    assert describe(None, "queued") == ""
