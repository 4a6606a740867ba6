"""Which store errors are transient, from real SQLite and PostgreSQL failures."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError, OperationalError

from personatag.definitions.personas import add_persona
from personatag.store import Store, open_store
from personatag.store.transient import BUSY, CONNECTION_LOST, DEADLOCK, retrying, transient
from personatag.tagging.outcome import reason_of
from tests.helpers import terminate_other_backends


def test_sqlite_busy_is_transient(tmp_path: Path) -> None:
    """Issue 17 item 6: SQLite's busy lock is a transient store error."""
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", create=True)
    try:
        with store.write(), pytest.raises(OperationalError) as caught:  # noqa: SIM117
            with store.write_briefly(0.05) as other:
                other.execute(text("SELECT 1"))
        found = transient(caught.value)
        assert found is not None and found.kind == BUSY
    finally:
        store.dispose()


def _cross(
    store: Store, first: int, second: int, out: list[BaseException], ready: threading.Barrier
) -> None:
    """Lock `first`, wait for the other thread to lock its own, then lock
    `second`; on a failure, run one more statement in the same transaction (as
    a cleanup would), which PostgreSQL refuses: the transaction is aborted."""
    try:
        with store.write() as conn:
            _lock(conn, first)
            ready.wait(10)
            try:
                _lock(conn, second)
            finally:
                conn.execute(text("SELECT 1"))
    except Exception as exc:
        out.append(exc)


def _lock(conn: Connection, key: int) -> None:
    conn.execute(text("SELECT pg_advisory_xact_lock(1, :k)"), {"k": key})


def test_a_deadlock_is_named_even_when_a_later_statement_hides_it(pg_store: Store) -> None:
    """Issue 17 item 7: a deadlock surfaced as `current transaction is aborted`
    (a cleanup statement after it failed again). It is named a deadlock and
    counts as transient."""
    errors: list[BaseException] = []
    ready = threading.Barrier(2)
    threads = [
        threading.Thread(target=_cross, args=(pg_store, a, b, errors, ready))
        for a, b in ((1, 2), (2, 1))
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert len(errors) == 1  # PostgreSQL ends one of the two
    found = transient(errors[0])
    assert found is not None and found.kind == DEADLOCK
    assert "current transaction is aborted" in str(errors[0])  # what used to be reported
    assert reason_of(errors[0]).startswith("the store failed (deadlock): deadlock detected")


def test_a_terminated_connection_is_retried_on_a_live_one(pg_store: Store) -> None:
    """Issue 17 item 6: after an administrator ends the store's sessions, the
    unit of work runs again on a fresh connection and succeeds."""
    add_persona(pg_store, "emea", name="EMEA", category="region")
    attempts: list[int] = []
    kinds: list[str] = []

    def work(attempt: int) -> int:
        attempts.append(attempt)
        with pg_store.write() as conn:
            if attempt == 1:
                conn.execute(text("SELECT 1"))
                assert terminate_other_backends(pg_store) >= 1
            return int(conn.execute(text("SELECT count(*) FROM personas")).scalar_one())

    def first_failure(attempt: int) -> int:
        try:
            return work(attempt)
        except Exception as exc:
            found = transient(exc)
            kinds.append(found.kind if found else "not transient")
            raise

    assert retrying(first_failure, what="test", wait=lambda _s: None) == 1
    assert attempts == [1, 2] and kinds == [CONNECTION_LOST]


def test_other_store_errors_are_not_retried(store: Store) -> None:
    """Issue 17 item 6: only transient errors run again; a constraint fails at once."""
    attempts: list[int] = []

    def work(attempt: int) -> None:
        attempts.append(attempt)
        with store.write() as conn:
            conn.execute(
                text(
                    "INSERT INTO stream_offsets (name, seq, updated_at) "
                    "VALUES ('x', 1, 0), ('x', 2, 0)"
                )
            )

    with pytest.raises(IntegrityError) as caught:
        retrying(work, what="test", wait=lambda _s: None)
    assert attempts == [1]
    assert transient(caught.value) is None
