"""Deadlines and cancel stop a running statement, on both stores."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from personatag.engines.control import JobControl, JobStopped
from personatag.store import Store

LONG = {
    "sqlite": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
    "WHERE i < 5000000000) SELECT count(*) FROM n",
    "postgresql": "SELECT pg_sleep(60)",
}


def test_deadline_interrupts_a_running_statement(store: Store) -> None:
    control = JobControl(deadline_s=0.3)
    with (
        pytest.raises(JobStopped, match=r"deadline of 0.3 s exceeded") as info,
        store.read() as conn,
        control.guard(conn),
    ):
        conn.execute(text(LONG[store.dialect]))
    assert info.value.status == "failed"
    with store.read() as conn:  # the connection is usable again
        assert conn.execute(text("SELECT 1")).scalar() == 1


def test_cancel_interrupts_a_running_statement(store: Store) -> None:
    control = JobControl()
    threading.Timer(0.3, control.cancel).start()
    with (
        pytest.raises(JobStopped, match="cancelled") as info,
        store.read() as conn,
        control.guard(conn),
    ):
        conn.execute(text(LONG[store.dialect]))
    assert info.value.status == "cancelled"


def test_check_before_work() -> None:
    control = JobControl(deadline_s=0)
    with pytest.raises(JobStopped):
        control.check()
    JobControl(deadline_s=60).check()
