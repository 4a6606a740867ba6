"""Leases: one holder at a time of a named role on a store, across processes.

A lease lasts as long as its holder's process (or its database session): a
holder that stops, crashes or loses its connection lets the lease go at once,
with no timeout to wait out. PostgreSQL holds it as a session advisory lock
on a connection kept for it; SQLite (one machine) as an exclusive lock on a
file beside the database.
"""

from __future__ import annotations

import contextlib
import os
import re
import zlib

from sqlalchemy import Connection, text

from personatag.store.db import Store

# First key of PostgreSQL advisory locks on leases ("PL" in ASCII).
_LOCK_SPACE_LEASE = 0x504C


class Lease:
    """A held lease; release() lets it go (also done by the holder's end)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def held(self) -> bool:
        """Still held by this holder (a PostgreSQL session may have ended)."""
        return True

    def release(self) -> None:
        """Let the lease go (idempotent)."""


class _PgLease(Lease):
    def __init__(self, name: str, conn: Connection, key: int) -> None:
        super().__init__(name)
        self._conn: Connection | None = conn
        self._key = key

    def held(self) -> bool:
        if self._conn is None:
            return False
        try:
            return bool(
                self._conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                        "AND pid = pg_backend_pid() AND classid = :space AND objid = :key "
                        "AND objsubid = 2"
                    ),
                    {"space": _LOCK_SPACE_LEASE, "key": self._key},
                )
            )
        except Exception:  # the session ended: the lock went with it
            self.release()
            return False

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):  # a dead session has let it go already
            conn.execute(
                text("SELECT pg_advisory_unlock(:space, :key)"),
                {"space": _LOCK_SPACE_LEASE, "key": self._key},
            )
        with contextlib.suppress(Exception):
            conn.invalidate()  # never back to the pool holding a session lock
            conn.close()


class _FileLease(Lease):
    def __init__(self, name: str, fd: int) -> None:
        super().__init__(name)
        self._fd: int | None = fd

    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the file lets its lock go


def _key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


def try_lease(store: Store, name: str) -> Lease | None:
    """Take the lease `name` on `store` if nobody holds it; None if someone does.
    Store errors (the database does not answer) are raised."""
    if store.dialect == "postgresql":
        return _try_pg(store, name)
    db = store.engine.url.database
    if not store.is_shared_file or db is None:
        return Lease(name)  # an in-memory store: nobody else can reach it
    return _try_file(f"{db}.{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.lease", name)


def _try_pg(store: Store, name: str) -> Lease | None:
    conn = store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        got = conn.scalar(
            text("SELECT pg_try_advisory_lock(:space, :key)"),
            {"space": _LOCK_SPACE_LEASE, "key": _key(name)},
        )
    except BaseException:
        conn.close()
        raise
    if not got:
        conn.close()
        return None
    return _PgLease(name, conn, _key(name))


def _try_file(path: str, name: str) -> Lease | None:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        # flock locks belong to the open file, not the process: two holders
        # in one process exclude each other too.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return _FileLease(name, fd)
