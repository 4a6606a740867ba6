"""Leases: one holder at a time of a named role on a store, across processes.

A lease lasts as long as its holder's process (or its database session): a
holder that stops, crashes or loses its connection lets the lease go at once,
with no timeout to wait out. How a lease is held is the backend's: PostgreSQL
holds it as a session advisory lock on a connection kept for it; SQLite (one
machine) as an exclusive lock on a file beside the database.
"""

from __future__ import annotations

from personatag.store.backends.leases import Lease
from personatag.store.db import Store

__all__ = ["Lease", "try_lease"]


def try_lease(store: Store, name: str) -> Lease | None:
    """Take the lease `name` on `store` if nobody holds it; None if someone does.
    Store errors (the database does not answer) are raised."""
    return store.backend.try_lease(store.engine, name)
