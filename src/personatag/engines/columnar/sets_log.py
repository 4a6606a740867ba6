"""Reading the membership log for the persona sets: how far it has settled,
and what identifies one of its entries."""

from __future__ import annotations

import time

from sqlalchemy import Connection

from personatag.store import Store


class Horizon:
    """The highest seq at or below which every log entry is visible (see
    membership_events.reader.Horizon, which the webhooks use: the same rule)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: tuple[int, frozenset[tuple[int, str]]] | None = None

    def _observe(self, conn: Connection) -> tuple[int, frozenset[tuple[int, str]]]:
        last = self.store.backend.serial_last_value(conn, "membership_log", "seq")
        conn.rollback()
        return last, self._writers(conn)

    def _writers(self, conn: Connection) -> frozenset[tuple[int, str]]:
        found = self.store.backend.running_writers(conn)
        conn.rollback()
        return found

    def _running(self, conn: Connection, running: frozenset[tuple[int, str]]) -> bool:
        return bool(running) and bool(running & self._writers(conn))

    def advance(self, settled: int) -> int:
        """The settled seq now, never less than `settled`."""
        with self.store.engine.connect() as conn:
            if self._pending is not None and not self._running(conn, self._pending[1]):
                settled = max(settled, self._pending[0])
                self._pending = None
            last, running = self._observe(conn)
            if not self._running(conn, running):
                settled = max(settled, last)
                self._pending = None
            elif self._pending is None:
                self._pending = (last, running)
        return settled

    def wait(self, settled: int, timeout_s: float) -> int:
        """advance() until what is observed now has settled, or `timeout_s` passed."""
        deadline = time.monotonic() + timeout_s
        settled = self.advance(settled)
        target = self._pending[0] if self._pending is not None else None
        while target is not None and settled < target and time.monotonic() < deadline:
            time.sleep(0.02)
            settled = self.advance(settled)
        return settled


def fingerprint(
    at: int, persona_pk: int, change: str, contact_pk: int | None, bulk_count: int | None
) -> str:
    """What identifies a log entry (with its seq): a log that holds another
    entry under the same seq is not the log the sets were read from."""
    return f"{int(at)}:{int(persona_pk)}:{change}:{contact_pk}:{bulk_count}"
