"""Fill an empty store with a synthetic population, chunk by chunk."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.schema import CreateIndex, DropIndex

from personatag.errors import InputError
from personatag.generate.population import (
    CONTACT_COLUMNS,
    PUBLICATION_COLUMNS,
    build_contacts,
    build_firms,
    build_publications,
    publication_count,
)
from personatag.generate.readership import build_cells, build_events, last_login
from personatag.store import Store, changefeed, versions
from personatag.store.bulk import bulk_writer
from personatag.store.types import to_micros

# Contacts per chunk. Fixed, so a seed gives the same population however the
# work is timed or batched; each chunk has its own seeded Generator.
CHUNK = 20_000
MAX_CONTACTS = 99_999_999  # ids are c + 8 digits
MAX_REPORTS = 999_999  # ids are p + 6 digits

Progress = Callable[[str], None]


@dataclass(frozen=True)
class GenerateResult:
    contacts: int
    publications: int
    reads: int
    logins: int
    seconds: float


def default_end() -> datetime:
    """Today 00:00 UTC: the default end of the generated history."""
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


def _eta(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _refuse_non_empty(store: Store) -> None:
    t = store.tables
    with store.read() as conn:
        for table in (t.contacts, t.publications):
            if conn.execute(select(func.count()).select_from(table)).scalar_one():
                raise InputError(
                    f"the store already has {table.name}: generate only fills an empty store; "
                    "point PERSONATAG_STORE_URL (or PERSONATAG_DATA_DIR) at a new one and run "
                    "`personatag init` first"
                )


def generate(
    store: Store,
    *,
    contacts: int,
    seed: int = 0,
    end: datetime | None = None,
    progress: Progress | None = None,
    persona_share: float | None = None,
    reports: int | None = None,
) -> GenerateResult:
    """Write `contacts` synthetic contacts with publications, reads and logins.

    Deterministic for a given (contacts, seed, end); `end` defaults to today
    00:00 UTC and bounds every timestamp (history covers the year before it).
    Refuses a store that already has contacts or publications. Each chunk is
    committed on its own: an interrupted run leaves a partial population, so
    start again on a fresh store. `persona_share` (0 to 1): how much of a
    reader's interests job title, firm type and region explain; None (the
    default) keeps the original population.
    """
    if persona_share is not None and not 0.0 <= persona_share <= 1.0:
        raise InputError(f"--persona-share must be between 0 and 1, got {persona_share}")
    if not 1 <= contacts <= MAX_CONTACTS:
        raise InputError(f"--contacts must be between 1 and {MAX_CONTACTS:,}, got {contacts}")
    if reports is not None and not 1 <= reports <= MAX_REPORTS:
        raise InputError(f"--reports must be between 1 and {MAX_REPORTS:,}, got {reports}")
    if seed < 0:
        raise InputError(f"--seed must be 0 or more, got {seed}")
    end = default_end() if end is None else end
    end_s = to_micros(end) // 1_000_000
    _refuse_non_empty(store)
    started = time.monotonic()

    def say(message: str) -> None:
        if progress is not None:
            progress(message)

    firms = build_firms(np.random.default_rng([seed, 0, 1]))
    pubs = build_publications(
        np.random.default_rng([seed, 0, 0]),
        publication_count(contacts) if reports is None else reports,
        end_s,
    )
    cells = build_cells(pubs)
    tables = store.tables
    with store.write() as conn:
        writer = bulk_writer(conn)
        writer.insert(tables.publications, PUBLICATION_COLUMNS, pubs.rows())
        writer.sync_sequence(tables.publications)
        versions.bump(conn, tables, ["publications"])
    say(f"publications {len(pubs.ids):,}")

    # Secondary indexes on reads and the contact search indexes would take
    # inserts in random order (rows are written in contact order): build them
    # once at the end instead.
    indexes = [ix for ix in tables.reads.indexes if not ix.unique] + [
        ix for ix in tables.contacts.indexes if str(ix.name).startswith("ix_contacts_search_")
    ]
    with store.write() as conn:
        for ix in indexes:
            # IF EXISTS, not checkfirst: SQLite reflects no expression index
            conn.execute(DropIndex(ix, if_exists=True))
    try:
        reads, logins = _write_chunks(
            store, contacts, seed, end_s, firms, pubs, cells, say, started, persona_share
        )
    finally:
        say("indexing reads and contacts ...")
        with store.write() as conn:
            for ix in indexes:
                conn.execute(CreateIndex(ix, if_not_exists=True))
    with store.write() as conn:
        bulk_writer(conn).sync_sequence(tables.contacts)
    store.analyze()
    return GenerateResult(
        contacts=contacts,
        publications=len(pubs.ids),
        reads=reads,
        logins=logins,
        seconds=time.monotonic() - started,
    )


def _write_chunks(
    store: Store,
    contacts: int,
    seed: int,
    end_s: int,
    firms: Any,
    pubs: Any,
    cells: Any,
    say: Progress,
    started: float,
    persona_share: float | None = None,
) -> tuple[int, int]:
    tables = store.tables
    reads = logins = 0
    last_report = started
    for index, first in enumerate(range(0, contacts, CHUNK)):
        n = min(CHUNK, contacts - first)
        rng = np.random.default_rng([seed, 1, index])
        columns, latent = build_contacts(rng, first + 1, n, end_s, firms, persona_share)
        events = build_events(rng, latent, pubs, cells, end_s)
        columns["last_login_at"] = last_login(n, events)
        rows = list(zip(*(columns[c] for c in CONTACT_COLUMNS), strict=True))
        with store.write() as conn:
            writer = bulk_writer(conn)
            writer.insert(tables.contacts, CONTACT_COLUMNS, rows)
            reads += writer.insert_int_arrays(
                tables.reads,
                ("contact_pk", "read_at", "publication_pk"),
                (events.read_contact + first + 1, events.read_s * 1_000_000, events.read_pub + 1),
            )
            logins += writer.insert_int_arrays(
                tables.logins,
                ("contact_pk", "login_at"),
                (events.login_contact + first + 1, events.login_s * 1_000_000),
            )
            # New contacts with their history: every field and event is new.
            changefeed.record(conn, store, changefeed.KIND_CONTACT, range(first + 1, first + n + 1))
            versions.bump(conn, tables, ["contacts", "reads", "logins"])
        done = first + n
        now = time.monotonic()
        if now - last_report >= 2.0 or done == contacts:
            last_report = now
            rate = done / max(now - started, 1e-9)
            say(
                f"contacts {done:,}/{contacts:,}  reads {reads:,}  logins {logins:,}  "
                f"{rate:,.0f} contacts/s  ETA {_eta((contacts - done) / rate)}"
            )
    return reads, logins
