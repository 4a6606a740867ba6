"""Bulk writes: the store's backend's writer for a connection.

SQLite uses executemany on the raw driver cursor; PostgreSQL uses COPY (see
store/backends/bulk.py for the interface every writer follows).
"""

from __future__ import annotations

from sqlalchemy import Connection

from personatag.store.backends import get_backend
from personatag.store.backends.bulk import BulkWriter, Row

__all__ = ["BulkWriter", "Row", "bulk_writer"]


def bulk_writer(conn: Connection) -> BulkWriter:
    """The bulk writer for this connection's database."""
    return get_backend(conn.dialect.name).bulk_writer(conn)
