"""The stream processor in partitions (engines/local/stream/partitions.py), on
real stores: partitions give the memberships and per-contact log a single
processor gives, offsets line up when the number of partitions changes, a
criterion swapped in while other partitions step misses nothing, and
`personatag stream --partitions N` starts its processes again when one is
killed with SIGKILL under load."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from personatag.cli import app
from personatag.config import Settings
from personatag.contacts import add_events, set_contact
from personatag.definitions.criteria import add_criterion
from personatag.definitions.personas import add_persona
from personatag.domain import utcnow
from personatag.engines.local.stream import ongoing, partitions
from personatag.engines.local.stream.processor import CriteriaMoved, StreamProcessor
from personatag.engines.local.stream.status import OFFSET_NAME, status
from personatag.errors import PersonatagError
from personatag.metrics import Metrics
from personatag.store import Store, changefeed, open_store
from tests.stream import load
from tests.stream.test_crash import (
    SETTINGS,
    prepare,
    start_load,
    start_stream,
    verify,
    wait_caught_up,
)

runner = CliRunner()


def offsets(store: Store) -> dict[str, int]:
    with store.read() as conn:
        return partitions.family(conn, store, OFFSET_NAME)


def memberships(store: Store) -> set[tuple[int, int, int | None]]:
    m = store.tables.memberships
    with store.read() as conn:
        return {
            (int(a), int(b), None if c is None else int(c))
            for a, b, c in conn.execute(select(m.c.persona_pk, m.c.contact_pk, m.c.source))
        }


def log_by_contact(store: Store) -> dict[tuple[int, int], list[str]]:
    lg = store.tables.membership_log
    out: dict[tuple[int, int], list[str]] = {}
    with store.read() as conn:
        for ppk, cpk, change in conn.execute(
            select(lg.c.persona_pk, lg.c.contact_pk, lg.c.change).order_by(lg.c.seq)
        ):
            out.setdefault((int(ppk), int(cpk)), []).append(change)
    return out


def some_changes(stores: list[Store], seed: int, count: int) -> None:
    """`count` random changes (tests/stream/load.py's), the same to each store."""
    rng = random.Random(seed)
    for i in range(count):
        what, args = load.change(rng)
        at = utcnow() - timedelta(days=int(args.get("days", 0)), microseconds=i)  # type: ignore[call-overload]
        for store in stores:
            cid = str(args["contact_id"])
            if what == "set":
                set_contact(store, cid, args["values"])  # type: ignore[arg-type]
            elif what == "read":
                add_events(store, cid, reads=[(str(args["pub"]), at)])
            else:
                add_events(store, cid, logins=[at])


def step_all(procs: list[StreamProcessor], rounds: int = 200) -> None:
    """Step the partitions in turn until none has work."""
    for _ in range(rounds):
        if not any(p.step().busy for p in procs):
            return
    raise AssertionError("the partitions did not catch up")


def test_two_partitions_give_what_one_processor_gives(store_url: str, tmp_path: Path) -> None:
    one = open_store(store_url)
    twin_url = f"sqlite:///{tmp_path / 'twin.db'}"
    twin = open_store(twin_url, create=True)
    try:
        for s in (one, twin):
            prepare(s)
        partitions.align(twin, OFFSET_NAME, 2)
        parts = [StreamProcessor(twin, SETTINGS, partition=(p, 2)) for p in range(2)]
        single = StreamProcessor(one, SETTINGS)
        for round_ in range(3):
            some_changes([one, twin], seed=round_, count=150)
            single.catch_up()
            step_all(parts)
        assert memberships(one) == memberships(twin)
        assert log_by_contact(one) == log_by_contact(twin)
        verify(twin)
        got = offsets(twin)
        assert set(got) == {"stream.p0of2", "stream.p1of2"}
        with twin.read() as conn:
            assert set(got.values()) == {changefeed.head(conn, twin)}
        shown = status(twin)
        assert [p["name"] for p in shown["partitions"]] == ["stream.p0of2", "stream.p1of2"]
        assert shown["lag_changes"] == 0
    finally:
        one.dispose()
        twin.dispose()


def test_offsets_line_up_when_the_number_of_partitions_changes(store: Store) -> None:
    prepare(store)
    some_changes([store], seed=1, count=30)
    StreamProcessor(store, SETTINGS).catch_up()  # offset "stream" at the head
    with store.read() as conn:
        head = changefeed.head(conn, store)
    assert partitions.align(store, OFFSET_NAME, 3) == {f"stream.p{p}of3": head for p in range(3)}
    with store.write() as conn:  # the partitions went different ways
        changefeed.set_offset(conn, store, "stream.p1of3", head - 2)
        changefeed.set_offset(conn, store, "stream.p2of3", head + 5)
    # The same layout keeps its offsets.
    assert partitions.align(store, OFFSET_NAME, 3)["stream.p2of3"] == head + 5
    # Another starts where the one furthest behind was; the old names are gone.
    partitions.align(store, OFFSET_NAME, 2)
    assert offsets(store) == {"stream.p0of2": head - 2, "stream.p1of2": head - 2}
    # A single processor folds them back into its own offset at its start.
    proc = StreamProcessor(store, SETTINGS)
    proc.cycle()
    proc.teardown()
    assert offsets(store) == {"stream": head}  # stepped on from head - 2


def seniors_hold_what_they_should(store: Store) -> None:
    from personatag.engines.local.stream.evaluate import evaluate_set

    with store.read() as conn:
        crits = ongoing.load(conn, store, (ongoing.ACTIVE,))
    new = next(c for c in crits if c.label == "seniors@1")
    m = store.tables.memberships
    with store.read() as conn:
        full = set(evaluate_set(conn, store, new, store.catalog(conn), utcnow()).tolist())
        held = set(conn.scalars(select(m.c.contact_pk).where(m.c.source == new.pk)))
    assert full, "the changes made no senior"
    assert held == full, sorted(held ^ full)


def add_seniors(store: Store) -> None:
    add_persona(store, "seniors", name="seniors", category="test")
    add_criterion(
        store,
        "seniors",
        persona="seniors",
        expr="seniority >= 8",
        mode="ongoing",
        exit_policy="remove",
    )


def promote(store: Store, partition: int, count: int) -> None:
    """Make `count` contacts of partition `partition` of 2 seniors."""
    c = store.tables.contacts
    with store.read() as conn:
        ids = [
            str(i)
            for i, pk in conn.execute(select(c.c.id, c.c.pk).order_by(c.c.pk))
            if pk % 2 == partition
        ]
    for cid in ids[:count]:
        set_contact(store, cid, {"seniority": 9})


def backfilled(store: Store) -> list[StreamProcessor]:
    """Two partitions of `store` once partition 0 has backfilled a new criterion
    (seniors) and, after the backfill read the store, contacts of partition 1
    became seniors."""
    prepare(store)
    partitions.align(store, OFFSET_NAME, 2)
    procs = [StreamProcessor(store, SETTINGS, partition=(p, 2)) for p in range(2)]
    add_seniors(store)
    procs[0].step()  # partition 0 starts the backfill
    bf = procs[0].lifecycle.backfill
    assert bf is not None
    bf.thread.join(60)
    promote(store, 1, 12)
    return procs


def test_a_swap_catches_up_on_what_a_partition_ahead_applied(store_url: str) -> None:
    store = open_store(store_url)
    try:
        procs = backfilled(store)
        # Partition 1 applies that before the new criterion is active.
        assert procs[1].step().changes
        assert "seniors@1" not in {c.label for c in procs[1].criteria().criteria}
        step_all(procs)  # the swap, then the rest
        seniors_hold_what_they_should(store)
        verify(store)
    finally:
        store.dispose()


def test_a_partition_that_evaluated_before_a_swap_steps_again(store_url: str) -> None:
    store = open_store(store_url)
    try:
        procs = backfilled(store)
        # Partition 1 evaluates with the old criteria; partition 0 swaps the
        # new one in before partition 1 commits.
        evaluate = procs[1].evaluate
        swapped: list[str] = []

        def evaluate_then_swap(*args, **kwargs):  # type: ignore[no-untyped-def]
            out = evaluate(*args, **kwargs)
            if not swapped:
                swapped.extend(procs[0].step().lifecycle)
            return out

        procs[1].evaluate = evaluate_then_swap  # type: ignore[method-assign]
        with pytest.raises(CriteriaMoved):
            procs[1].step()
        assert any("swapped in" in line for line in swapped), swapped
        step_all(procs)
        seniors_hold_what_they_should(store)
        verify(store)
    finally:
        store.dispose()


def test_partitions_are_the_local_engines_and_need_a_shared_store(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}", create=True)
    with pytest.raises(PersonatagError, match="flink_parallelism"):
        partitions.check(Settings(stream_partitions=2, stream_engine="flink"), store)
    store.dispose()
    memory = open_store("sqlite://", create=True)
    with pytest.raises(PersonatagError, match="in-memory"):
        partitions.check(Settings(stream_partitions=2), memory)
    with pytest.raises(ValueError, match="1 to 64"):
        Settings(stream_partitions=0)


def test_stream_once_with_partitions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = open_store(url, create=True)
    prepare(store)
    some_changes([store], seed=3, count=120)
    monkeypatch.setenv("PERSONATAG_STORE_URL", url)
    monkeypatch.setenv("PERSONATAG_STREAM_RECONCILE_S", "0")
    res = runner.invoke(app, ["stream", "--once", "--partitions", "2"])
    assert res.exit_code == 0, res.output
    with store.read() as conn:
        head = changefeed.head(conn, store)
    # Each partition reads every change: the count is the feed's, not twice it.
    (line,) = [x for x in res.output.splitlines() if x.startswith("stream: ")]
    assert 0 < int(line.split()[1]) <= head, res.output
    verify(store)
    res = runner.invoke(app, ["stream", "status", "--json"])
    data = json.loads(res.output)
    assert [p["name"] for p in data["partitions"]] == ["stream.p0of2", "stream.p1of2"]
    assert data["lag_changes"] == 0
    res = runner.invoke(app, ["stream", "--once", "--partitions", "0"])
    assert res.exit_code == 2 and "greater than or equal to 1" in res.output
    store.dispose()


STARTED = re.compile(rb"stream partition (\d+) of (\d+) started \(pid (\d+)\)")


def running_pids(log: Path) -> dict[int, int]:
    """Each partition's newest pid, from the supervisor's log."""
    found: dict[int, int] = {}
    for m in STARTED.finditer(log.read_bytes()):
        found[int(m.group(1))] = int(m.group(3))
    return found


@pytest.mark.slow
def test_kill_9_of_one_partition_under_load_loses_and_repeats_nothing(
    store_url: str, tmp_path: Path
) -> None:
    store = open_store(store_url)
    prepare(store)
    rng = random.Random(3)
    done = tmp_path / "load.done"
    log = tmp_path / "stream.log"
    load = start_load(store_url, seed=21, count=1200, done=done)
    stream = start_stream(store_url, log, "--partitions", "2")
    kills = 0
    try:
        deadline = time.monotonic() + 240
        while load.poll() is None or kills < 8:
            assert time.monotonic() < deadline, log.read_text()
            pids = running_pids(log)
            if len(pids) < 2:
                time.sleep(0.1)
                continue
            time.sleep(rng.uniform(0.3, 1.5))
            victim = rng.randrange(2)
            pid = running_pids(log)[victim]
            try:
                import os

                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            kills += 1
            # Wait for the supervisor to start it again.
            wait_until = time.monotonic() + 60
            while running_pids(log).get(victim) == pid:
                assert time.monotonic() < wait_until, log.read_text()
                time.sleep(0.05)
        assert load.wait(300) == 0 and done.read_text() == "1200"
        wait_caught_up(store, 180, log.read_text())
        assert stream.poll() is None, log.read_text()
        verify(store)
        text = log.read_text()
        assert text.count("starting it again") >= kills, text
    finally:
        stream.send_signal(signal.SIGTERM)
        try:
            stream.wait(60)
        finally:
            if load.poll() is None:
                load.kill()
    # The partitions ended with their supervisor.
    for pid in running_pids(log).values():
        assert (
            not Path(f"/proc/{pid}").exists()
            or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
        ), f"partition pid {pid} outlived its supervisor"
    store.dispose()


def test_serve_runs_the_partitions_as_its_stream_service(tmp_path: Path) -> None:
    from personatag.engines.local.stream.partitioned import Partitions
    from personatag.streaming import runner as stream_runner

    url = f"sqlite:///{tmp_path / 's.db'}"
    store = open_store(url, create=True)
    prepare(store)
    with store.read() as conn:
        head_before = changefeed.head(conn, store)
    settings = Settings(stream_partitions=2, stream_reconcile_s=0)
    metrics = Metrics()  # what the service's /metrics would show
    (service,) = stream_runner.services(store, settings, metrics=metrics, webhooks=False)
    assert isinstance(service, Partitions)
    service.start()
    try:
        some_changes([store], seed=9, count=60)
        wait_caught_up(store, 120, "the partitions did not catch up")
        pids = service.pids()
        assert sorted(pids) == [0, 1] and all(pids.values()), pids
        # A single processor on the same store waits while the partitions run.
        single = StreamProcessor(store, SETTINGS)
        assert single.cycle() > 0 and not single.held_offset
        single.teardown()
        # The partitions' metrics, gathered by the service: the feed rows
        # partition 0 read (each partition reads them all), the work of both.
        with store.read() as conn:
            rows = changefeed.head(conn, store) - head_before
        wait_for(lambda: sample(metrics, "personatag_stream_changes_total") == rows)
        lag = "personatag_stream_partition_lag_changes"
        wait_for(lambda: all(sample(metrics, lag, partition=p) == 0 for p in ("0", "1")))
        wait_for(lambda: sample(metrics, "personatag_stream_lag_changes") == 0)
        for p in ("0", "1"):
            assert sample(metrics, "personatag_stream_partition_up", partition=p) == 1
        assert sample(metrics, "personatag_stream_lag_changes") == 0
        assert (sample(metrics, "personatag_stream_evaluations_total") or 0) > 0
        # Each change's latency, observed by each partition that applied it
        # (partition 0 also observes those of no contact).
        latencies = "personatag_stream_latency_seconds_count"
        wait_for(lambda: (sample(metrics, latencies) or 0) >= rows)
        # A partition killed: it is down, then up again, and counted.
        killed = pids[1]
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: service.pids()[1] not in (None, pids[1]))
        wait_for(lambda: sample(metrics, "personatag_stream_partition_up", partition="1") == 1)
        restarts = "personatag_stream_partition_restarts_total"
        assert sample(metrics, restarts, partition="1") == 1
        assert sample(metrics, restarts, partition="0") is None
        pids = service.pids()
    finally:
        assert service.stop(60)
    for pid in pids.values():
        assert pid is not None and not Path(f"/proc/{pid}").exists(), f"pid {pid} outlived it"
    for p in ("0", "1"):
        assert sample(metrics, "personatag_stream_partition_up", partition=p) == 0
    verify(store)
    assert service.restarts == {0: 0, 1: 1}
    store.dispose()


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels or None)


def wait_for(test: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not test():
        if time.monotonic() > deadline:
            raise AssertionError("not so within the time allowed")
        time.sleep(0.1)


def test_a_set_based_step_a_criterion_at_a_time_gives_what_per_contact_steps_give(
    store_url: str, tmp_path: Path
) -> None:
    """Without persona(...) criteria a step of many changed contacts runs each
    criterion once in the store and writes a persona at a time (never a set of
    criteria per contact); the memberships and each contact's log equal those
    of per-contact steps on the same changes, windows and exits included."""
    crits = [
        ("emea", "emea-senior", 'region = "EMEA" and seniority >= 5', "remove"),
        ("energy", "energy", 'count(read where sector = "Energy", 365 d) >= 2', "remove"),
        ("logins", "engaged", "count(login, 365 d) >= 1", "remove"),
        ("seniors", "engaged", "seniority >= 7", "remove"),
        ("americas", "americas", 'region in ("AMER", "APAC")', "keep"),
    ]
    stores = [open_store(store_url), open_store(f"sqlite:///{tmp_path / 'twin.db'}", create=True)]
    try:
        for s in stores:
            prepare(s, crits, catch_up=False)
        grouped = StreamProcessor(
            stores[0], Settings(stream_reconcile_s=0, stream_set_based_contacts=3)
        )
        single = StreamProcessor(stores[1], SETTINGS)
        for round_ in range(3):
            some_changes(stores, seed=40 + round_, count=120)
            grouped.catch_up()
            single.catch_up()
        assert memberships(stores[0]) == memberships(stores[1])
        assert log_by_contact(stores[0]) == log_by_contact(stores[1])
        with stores[0].read() as conn:
            rc = stores[0].tables.stream_rechecks
            assert conn.execute(select(rc.c.contact_pk).limit(1)).first() is not None
    finally:
        for s in stores:
            s.dispose()
