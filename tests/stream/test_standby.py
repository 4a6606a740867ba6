"""Two stream processors on one store: one steps, the other waits as a standby."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from personatag.config import Settings
from personatag.contacts import set_contact
from personatag.definitions.criteria import add_criterion
from personatag.definitions.personas import add_persona
from personatag.engines.local.stream.processor import StreamProcessor
from personatag.engines.local.stream.standby import lease_name
from personatag.engines.local.stream.status import OFFSET_NAME
from personatag.store import Store
from personatag.store.leases import try_lease
from tests.helpers import add_contacts, population, terminate_other_backends
from tests.stream.test_processor import log_of, members
from tests.test_cli import CLI

# The processor, its parts and the standby lease log under these names.
STREAM_LOGGERS = ("personatag.engines.local.stream", "personatag.streaming")
SETTINGS = Settings(stream_reconcile_s=0, stream_poll_s=0.02)


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)


class Running:
    """A processor's run() on its own thread, stopped by stop()."""

    def __init__(self, store: Store) -> None:
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=StreamProcessor(store, SETTINGS).run, args=(self.stop_event,), daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive()


def test_a_second_processor_waits_as_a_standby_and_takes_over(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17 item 13: a second stream processor on the same store logged an
    ERROR traceback ("offset moved under this processor") on every step it
    lost. It waits as a standby, says so once, and takes over when the first
    one stops."""
    add_contacts(store, population(40))
    add_persona(store, "emea-senior", name="EMEA senior", category="region")
    add_criterion(
        store,
        "emea",
        persona="emea-senior",
        expr='region = "EMEA" and seniority >= 5',
        mode="ongoing",
        exit_policy="remove",
    )
    caplog.set_level(logging.INFO, logger="personatag")
    first = Running(store)
    backfilled = {f"c{i:04d}" for i in range(40) if i % 4 == 0 and i % 10 >= 5}
    wait_for(lambda: members(store, "emea-senior") == backfilled, "the first processor's backfill")
    second = Running(store)
    try:
        wait_for(lambda: "standby" in caplog.text, "the standby line")
        # Both keep running while changes flow: only the first steps.
        for i in (1, 2, 3):
            set_contact(store, f"c{i:04d}", {"region": "EMEA", "seniority": "7"})
            wait_for(lambda i=i: f"c{i:04d}" in members(store, "emea-senior"), f"c{i:04d}")
        first.stop()
        set_contact(store, "c0005", {"region": "EMEA", "seniority": "9"})
        wait_for(lambda: "c0005" in members(store, "emea-senior"), "the standby took over")
    finally:
        first.stop_event.set()
        second.stop()
        first.stop()
    assert members(store, "emea-senior") == backfilled | {"c0001", "c0002", "c0003", "c0005"}
    records = [r for r in caplog.records if r.name.startswith(STREAM_LOGGERS)]
    assert [r for r in records if r.levelno >= logging.ERROR] == []
    standby = [r for r in records if "standby" in r.getMessage()]
    assert len(standby) == 1 and standby[0].levelno == logging.WARNING
    assert any("took over" in r.getMessage() for r in records)


def test_stream_once_is_refused_while_a_processor_runs(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    """Issue 17 item 13: `stream --once` beside a running processor raced it for
    the offset; it says another processor runs and changes nothing."""
    cli = CLI(store_url, tmp_path)
    running = Running(store)
    try:
        wait_for(lambda: not try_lease_free(store), "the processor's lease")
        proc = cli("stream", "--once", ok=False)
    finally:
        running.stop()
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: another stream processor is running on this store and keeps it current: "
        "stop it before `personatag stream --once`"
    )
    assert "offset" in cli("stream", "--once").stdout  # free again once it stopped


def try_lease_free(store: Store) -> bool:
    lease = try_lease(store, lease_name(OFFSET_NAME))
    if lease is None:
        return False
    lease.release()
    return True


def test_a_processor_steps_on_after_its_sessions_are_terminated(
    pg_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17 item 6: a dropped PostgreSQL connection under the stream
    processor (its step's and its lease's sessions ended by an administrator)
    costs a warning and a retry, not a traceback, and every change still takes
    effect exactly once."""
    store = pg_store
    add_contacts(store, population(400))
    add_persona(store, "senior", name="Senior", category="seniority")
    add_criterion(
        store, "sen", persona="senior", expr="seniority >= 9", mode="ongoing", exit_policy="remove"
    )
    caplog.set_level(logging.INFO, logger="personatag")
    running = Running(store)
    try:
        start = {f"c{i:04d}" for i in range(400) if i % 10 == 9}
        wait_for(lambda: members(store, "senior") == start, "the backfill")
        for round_no in range(3):
            for i in range(round_no, 400, 3):
                set_contact(store, f"c{i:04d}", {"seniority": str(9 if i % 2 else 1)})
            terminate_other_backends(store)
        expected = {f"c{i:04d}" for i in range(400) if i % 2}
        wait_for(lambda: members(store, "senior") == expected, "every change applied")
    finally:
        running.stop()
    records = [r for r in caplog.records if r.name.startswith(STREAM_LOGGERS)]
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []
    assert not [r for r in records if "standby" in r.getMessage()]
    entries = log_of(store, "senior")
    for cid in {c for c, _ in entries}:
        changes = [ch for c, ch in entries if c == cid]
        assert all(a != b for a, b in itertools.pairwise(changes)), (cid, changes)


def test_a_flink_standby_that_stops_leaves_the_active_processors_job_alone(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17 item 13 (its family, with PERSONATAG_STREAM_ENGINE=flink): a
    standby processor that was stopped (Ctrl-C) ran the Flink processor's
    close(), which read the streaming job's id from the state file the
    *active* processor keeps, cancelled that job and deleted the file. A
    standby that never held the offset touches neither."""
    import socket

    from personatag.engines.flink.stream import FlinkStream

    with socket.socket() as s:  # a port nothing listens on: no Flink is needed
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    settings = Settings(
        data_dir=tmp_path, stream_reconcile_s=0, stream_poll_s=0.02, flink_rest_port=port
    )
    active = try_lease(store, lease_name(OFFSET_NAME))  # the active processor
    assert active is not None
    try:
        standby = FlinkStream(store, settings)
        standby.state_file.parent.mkdir(parents=True, exist_ok=True)
        standby.state_file.write_text('{"jid": "00000000000000000000000000000001"}')
        stop = threading.Event()
        thread = threading.Thread(target=standby.run, args=(stop,), daemon=True)
        with caplog.at_level(logging.INFO):
            thread.start()
            wait_for(lambda: "waits as a standby" in caplog.text, "the standby line")
            stop.set()
            thread.join(60)
        assert not thread.is_alive()
        assert standby.state_file.exists()  # the active processor's job is still known
        assert "cancel" not in caplog.text
    finally:
        active.release()
