"""The flink stream engine when a task manager dies mid-stream (slow, a real
cluster of its own on REST port 19700; 19700-19703 and 19800-19820).

The job restores itself from its last completed checkpoint (the same job, not a
new one) once the supervisor has started the task manager again, and the store
ends with the same memberships and the same membership log as the embedded
processor given the same changes: nothing lost, nothing doubled.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from personatag.config import Settings
from personatag.domain import utcnow
from personatag.engines.flink.runtime.cluster import start, status, stop
from personatag.engines.flink.stream import FlinkStream
from tests.flink.conftest import local_settings, wait_until
from tests.flink.test_stream_flink import (
    _restored_from,
    apply,
    log_sequence,
    memberships,
    same_round,
    script,
    stream_errors,
    twins,
)

PORT = 19700


def _task_manager(s: Settings) -> dict[str, Any]:
    """The supervisor's one task manager child (name, pid, restarts)."""
    (tm,) = [c for c in status(s).get("processes", []) if c["name"].startswith("taskmanager")]
    return tm


@pytest.mark.slow
def test_a_task_manager_killed_mid_stream_restores_the_job_from_its_checkpoint(
    tmp_path: Path, flink_python: Path
) -> None:
    s = local_settings(
        tmp_path / "flink",
        PORT,
        flink_python,
        flink_slots=2,
        flink_parallelism=2,
        flink_submitter=False,
        store_url=f"sqlite:///{tmp_path / 'flink' / 'store.db'}",
        stream_reconcile_s=0,
        stream_flink_checkpoint_s=0.3,
        stream_flink_monitor_s=0.2,
        stream_flink_timeout_s=150,
        stream_flink_restarts=3,
    )
    embedded_store, flink_store, embedded = twins(tmp_path)
    rounds = script(seed=23, rounds=3, now=utcnow())
    flink = FlinkStream(flink_store, s)
    try:
        start(s, wait_s=120)
        embedded.catch_up()
        flink.catch_up(timeout_s=180)
        same_round(embedded, flink, rounds[0], "round 0")
        jid = flink.job_id
        assert jid is not None
        # Checkpoints complete before the kill, so there is one to restore.
        wait_until(
            lambda: (
                (flink.rest.get(f"/jobs/{jid}/checkpoints").get("counts") or {}).get("completed", 0)
                >= 2
            ),
            60,
            "two completed checkpoints",
        )
        tm = _task_manager(s)
        # The job's own restart strategy, over the cluster's `none`.
        strategy = flink.rest.get(f"/jobs/{jid}/config")["execution-config"]["restart-strategy"]
        assert strategy == (
            "Failure rate restart with maximum of 3 failures within interval PT10M "
            "and fixed delay PT2S."
        )

        # Round 1's changes go out, and the task manager is killed while the
        # batch is in flight (or, if it was quicker, before the next one).
        apply(embedded_store, rounds[1])
        apply(flink_store, rounds[1])
        embedded_step = embedded.catch_up()
        done: dict[str, Any] = {}

        def catch_up() -> None:
            try:
                done["step"] = flink.catch_up(timeout_s=240)
            except BaseException as exc:  # reported by the assertion below
                done["error"] = exc

        worker = threading.Thread(target=catch_up)
        worker.start()
        # The kill lands once the batch's work file is out (the engine deletes
        # it when all its answers are in): the batch is in flight.
        deadline = time.monotonic() + 60
        while not any(p.name.startswith("batch-") for p in flink.changes_dir.iterdir()):
            assert time.monotonic() < deadline, "no batch went out"
            time.sleep(0.005)
        os.kill(int(tm["pid"]), signal.SIGKILL)
        worker.join(300)
        assert not worker.is_alive(), "the flink stream did not finish round 1"
        assert "error" not in done, done.get("error")
        step = done["step"]
        assert (step.changes, step.entered, step.exited, step.errors) == (
            embedded_step.changes,
            embedded_step.entered,
            embedded_step.exited,
            embedded_step.errors,
        )

        # The same job went on: restored from a checkpoint, not replaced. (The
        # supervisor's state file and the job's statistics catch up on their
        # own schedules.)
        assert flink.job_id == jid
        wait_until(
            lambda: _task_manager(s)["restarts"] == tm["restarts"] + 1,
            90,
            "the supervisor to start the task manager again",
        )
        assert _task_manager(s)["pid"] != tm["pid"]
        found = _restored_from(flink, str(jid), timeout=120)
        assert found.get("is_savepoint") is False, found
        wait_until(
            lambda: flink.rest.job(str(jid))["state"] == "RUNNING", 120, "the job to run again"
        )

        # And it keeps answering right after the restore.
        same_round(embedded, flink, rounds[2], "round 2")
        assert memberships(flink_store) == memberships(embedded_store)
        assert log_sequence(flink_store) == log_sequence(embedded_store)
        assert stream_errors(flink_store) == stream_errors(embedded_store) == []
    finally:
        flink.close()
        stop(s)
        embedded_store.dispose()
        flink_store.dispose()
