"""A small reading world written straight into a store: 40 contacts, 13
reports in three series (one published in the future), reads, two personas."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from personatag.contacts import add_events
from personatag.definitions.personas import add_persona
from personatag.domain import PinKind, utcnow
from personatag.memberships.pins import pin
from personatag.store import Store, versions
from tests.helpers import add_contacts, population

SERIES = (
    ("Energy Weekly", "Energy", "EMEA"),
    ("Rates Daily", None, "AMER"),
    ("Credit Monthly", "Credit", "APAC"),
)


def publications(now: datetime) -> list[dict[str, Any]]:
    """p01..p12, p01 the newest (1 h old), then one hour older each; pfuture tomorrow."""
    rows = []
    for i in range(1, 13):
        series, sector, region = SERIES[(i - 1) % 3]
        rows.append(
            {
                "id": f"p{i:02d}",
                "title": f"{series} #{i}",
                "published_at": now - timedelta(hours=i),
                "asset_class": "Commodities" if sector == "Energy" else "Rates",
                "sector": sector,
                "region": region,
                "series": series,
            }
        )
    rows.append(
        {
            "id": "pfuture",
            "title": "Not yet",
            "published_at": now + timedelta(days=1),
            "asset_class": "Rates",
            "sector": None,
            "region": "AMER",
            "series": "Rates Daily",
        }
    )
    return rows


def build_world(store: Store) -> datetime:
    """Fill `store`; returns the 'now' the publication times hang from."""
    now = utcnow()
    add_contacts(store, population(40))
    with store.write() as conn:
        conn.execute(store.tables.publications.insert(), publications(now))
        versions.bump(conn, store.tables, ["publications"])
    # Popularity: many contacts read p02, p03 and p04.
    for i in range(10, 30):
        add_events(
            store,
            f"c{i:04d}",
            reads=[(f"p{j:02d}", now - timedelta(minutes=30 + j)) for j in (2, 3, 4)],
        )
    add_events(
        store,
        "c0001",
        reads=[("p01", now - timedelta(minutes=20)), ("p05", now - timedelta(hours=4, minutes=30))],
    )
    add_persona(store, "treas", name="Corporate Treasurers", category="role")
    add_persona(store, "energy", name="Energy readers", category="sector")
    pin(store, "treas", "c0002", PinKind.IN, actor="test")
    return now
