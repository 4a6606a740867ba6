"""How a lease is held: the base every backend's lease follows, and a file lock.

A lease lasts as long as its holder's process (or its database session): a
holder that stops, crashes or loses its connection lets the lease go at once.
"""

from __future__ import annotations

import os


class Lease:
    """A held lease; release() lets it go (also done by the holder's end)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def held(self) -> bool:
        """Still held by this holder (a PostgreSQL session may have ended)."""
        return True

    def release(self) -> None:
        """Let the lease go (idempotent)."""


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


def try_file_lease(path: str, name: str) -> Lease | None:
    """The lease `name` as an exclusive lock on the file `path` (made if missing)."""
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
