"""SQLite's WAL checkpointed beside the writers (store/backends/wal.py), on a
real store file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import text

from personatag.store import open_store
from personatag.store.backends import wal


def autocheckpoint(store) -> int:  # type: ignore[no-untyped-def]
    with store.read() as conn:
        return int(conn.execute(text("PRAGMA wal_autocheckpoint")).scalar())


def test_writers_leave_checkpoints_to_the_thread_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal, "MIN_BYTES", 64 * 1024)
    monkeypatch.setattr(wal, "INTERVAL_S", 0.02)
    path = tmp_path / "s.db"
    store = open_store(f"sqlite:///{path}", create=True)
    assert autocheckpoint(store) == wal.AUTO_PAGES
    cp = store.checkpoint_beside()
    assert cp is not None
    try:
        assert autocheckpoint(store) == 0
        with store.write() as conn:
            conn.execute(text("CREATE TABLE pad (x TEXT)"))
            conn.execute(
                text("INSERT INTO pad VALUES (:x)"), [{"x": "y" * 500} for _ in range(4000)]
            )
        wal_file = Path(f"{path}-wal")
        assert wal_file.stat().st_size > 1024 * 1024  # the commit copied nothing back
        deadline = time.monotonic() + 10
        while cp.checkpoints == 0:
            assert time.monotonic() < deadline, "the thread did not checkpoint"
            time.sleep(0.02)
        # Everything was copied back. The thread may hold the checkpoint lock
        # at that moment (busy: it checkpoints every INTERVAL_S): ask again.
        while True:
            with store.read() as conn:
                busy, pages, copied = conn.execute(text("PRAGMA wal_checkpoint(PASSIVE)")).one()
            if not busy:
                break
            assert time.monotonic() < deadline, "the checkpoint lock stayed busy"
            time.sleep(0.02)
        assert pages == copied
    finally:
        cp.stop()
    assert autocheckpoint(store) == wal.AUTO_PAGES  # the writers checkpoint again
    with store.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM pad")).scalar() == 4000
    store.dispose()


def test_postgresql_and_memory_stores_need_no_checkpointer(pg_store) -> None:  # type: ignore[no-untyped-def]
    assert pg_store.checkpoint_beside() is None
    memory = open_store("sqlite://", create=True)
    assert memory.checkpoint_beside() is None
    memory.dispose()
