"""SQLite's WAL copied back into the database beside the writers, not in them.

By default the connection whose commit takes the write-ahead log past 1,000
pages copies the log into the database there and then (a checkpoint, with its
fsyncs) before its commit returns. For a stream step that writes thousands of
scattered membership rows that was most of the commit: 3.7 of 4.6 s over four
5,000-change steps on a 1M-contact store, all of it under the write lock that
every other writer (the other stream partitions too) waits for.

While a `Checkpointer` runs, the engine's connections do not checkpoint
(`wal_autocheckpoint=0`, set as each is checked out), and a thread of the
checkpointer runs a PASSIVE checkpoint on a connection of its own whenever the
log has grown past `MIN_BYTES`. A passive checkpoint waits for no reader and no
writer and blocks none; what it cannot copy yet (a reader still needs it) it
copies on a later turn, and a writer starts the log from the beginning again
once everything was copied. When the last checkpointer of an engine stops, its
connections checkpoint as before.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import weakref
from typing import Any

from sqlalchemy import Engine, event

log = logging.getLogger(__name__)

# SQLite's own default: a checkpoint once the log holds 1,000 pages.
AUTO_PAGES = 1000
# The checkpointer's turn: every INTERVAL_S, once the log has this many bytes.
INTERVAL_S = 0.2
MIN_BYTES = 4 * 1024 * 1024

# The checkpointers started for each engine and not stopped.
_running: weakref.WeakKeyDictionary[Engine, list[Checkpointer]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _checkpointed(engine: Engine) -> bool:
    """Whether a checkpointer's thread runs for `engine` (one that died no longer
    counts: the connections checkpoint again)."""
    return any(c.alive for c in _running.get(engine, ()))


def follow(engine: Engine) -> None:
    """Make `engine`'s connections checkpoint unless a Checkpointer runs for it
    (called once, when the engine is made)."""

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        want = 0 if _checkpointed(engine) else AUTO_PAGES
        if record.info.get("wal_autocheckpoint", AUTO_PAGES) != want:
            dbapi_conn.execute(f"PRAGMA wal_autocheckpoint={want}")
            record.info["wal_autocheckpoint"] = want


class Checkpointer:
    """Checkpoints the WAL of `path` on a thread of its own (see the module doc)."""

    def __init__(self, engine: Engine, path: str) -> None:
        self.engine = engine
        self.path = path
        self.checkpoints = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoints", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> Checkpointer:
        self._thread.start()
        with _lock:
            _running.setdefault(self.engine, []).append(self)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        with _lock:
            mine = _running.get(self.engine, [])
            if self in mine:
                mine.remove(self)

    def _run(self) -> None:
        wal = f"{self.path}-wal"
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, timeout=1, check_same_thread=False)
            while not self._stop.wait(INTERVAL_S):
                try:
                    if os.path.getsize(wal) < MIN_BYTES:
                        continue
                except OSError:  # no log yet, or it was just removed
                    continue
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error as exc:  # another checkpoint runs: next turn
                    log.debug("checkpoint of %s not done: %s", self.path, exc)
            # A last one, so the log is short for whoever comes next.
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except Exception:
            log.exception("the WAL checkpoints of %s stopped", self.path)
        finally:
            if conn is not None:
                conn.close()
