"""Small, explicit populations for tests (written straight into the store)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine, text

from personatag.store import Store

NOW = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)


def add_contacts(store: Store, rows: list[dict[str, Any]]) -> None:
    """Insert contacts; each row needs an 'id', other standard fields optional."""
    with store.write() as conn:
        conn.execute(store.tables.contacts.insert(), [{**r} for r in rows])


def population(n: int) -> list[dict[str, Any]]:
    regions = ["EMEA", "AMER", "APAC", None]
    titles = ["CIO", "Chief Investment Officer", "Credit Analyst", "Treasurer", None]
    return [
        {
            "id": f"c{i:04d}",
            "region": regions[i % 4],
            "job_title": titles[i % 5],
            "seniority": i % 10,
            "interests": ["Energy", "Credit"] if i % 3 == 0 else ([] if i % 3 == 1 else None),
        }
        for i in range(n)
    ]


def terminate_other_backends(store: Store) -> int:
    """End every other session on the store's database, as an administrator
    (or a restarting server) would; returns how many were ended."""
    killer = create_engine(store.engine.url, isolation_level="AUTOCOMMIT")
    try:
        with killer.connect() as conn:
            return len(
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).all()
            )
    finally:
        killer.dispose()
