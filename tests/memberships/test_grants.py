"""Memberships as key rows and grants, read through the `memberships` view.

The view has the columns the table had; a tag, a pin-in and a stream flush
each write one grant for all their rows; the view's triggers take SQL writes;
unused grants are pruned; and migration 0011 splits an old table's rows
without changing what the view reads.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, func, select, text

from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.domain import SOURCE_ADHOC, SOURCE_MANUAL, Action, PinKind
from personatag.memberships import grants
from personatag.memberships.pins import pin
from personatag.memberships.rows import Holders, Writer
from personatag.store import Store
from personatag.store.db import _alembic_config
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from tests.helpers import NOW, add_contacts
from tests.memberships.guard import outside_writes

VIEW_COLUMNS = ["persona_pk", "contact_pk", "source", "since", "request_pk", "criterion_pk"]


def _view(store: Store) -> list[tuple[object, ...]]:
    m = store.tables.memberships
    with store.read() as conn:
        return [tuple(r) for r in conn.execute(select(m).order_by(*m.primary_key.columns))]


def _added(store: Store, ids: list[str]) -> list[int]:
    """Add contacts with these ids; their pks, in order."""
    add_contacts(store, [{"id": i} for i in ids])
    c = store.tables.contacts
    with store.read() as conn:
        by_id = dict(conn.execute(select(c.c.id, c.c.pk)).tuples().all())
    return [int(by_id[i]) for i in ids]


def _count(store: Store, table: str) -> int:
    with store.read() as conn:
        return int(conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


def test_the_view_has_the_old_columns(store: Store) -> None:
    assert [c.name for c in store.tables.memberships.columns] == VIEW_COLUMNS
    with store.read() as conn:
        names = list(conn.execute(text("SELECT * FROM memberships")).keys())
    assert names == VIEW_COLUMNS


def test_a_tag_writes_one_grant_for_all_its_rows(store: Store, tmp_path: Path) -> None:
    add_contacts(store, [{"id": f"c{i}", "region": "EMEA"} for i in range(30)])
    add_persona(store, "emea", name="EMEA", category="region")
    settings = Settings(data_dir=tmp_path)
    out = run_adhoc(
        store, AdhocRequest(persona="emea", action=Action.TAG, expr='region = "EMEA"'), settings
    )
    assert out.counts.tagged == 30
    assert _count(store, "membership_grants") == 1
    rows = _view(store)
    assert len(rows) == 30
    t = store.tables
    with store.read() as conn:
        request_pk = conn.scalar(select(t.requests.c.pk))
    assert {(r[2], r[4], r[5]) for r in rows} == {(SOURCE_ADHOC, request_pk, None)}
    assert len({r[3] for r in rows}) == 1  # one since
    # A tag that adds nobody leaves no grant behind.
    run_adhoc(
        store, AdhocRequest(persona="emea", action=Action.TAG, expr='region = "EMEA"'), settings
    )
    run_adhoc(
        store, AdhocRequest(persona="emea", action=Action.TAG, expr='region = "AMER"'), settings
    )
    assert _count(store, "membership_grants") == 1


def test_a_pin_in_and_a_stream_flush_write_their_grants(store: Store) -> None:
    pks = _added(store, [f"k{i}" for i in range(3)])
    persona = add_persona(store, "p", name="P", category="c")
    pin(store, "p", "k0", PinKind.IN)
    writer = Writer(store, NOW, bulk_threshold=100)
    writer.decide(Holders(), persona.pk, 42, True, pks, set(pks[1:]))
    with store.write() as conn:
        writer.flush(conn)
    rows = {r[1]: r for r in _view(store)}
    assert rows[pks[0]][2] == SOURCE_MANUAL and rows[pks[0]][5] is None
    # An ongoing criterion's rows name it as their source and criterion.
    assert {rows[p][2] for p in pks[1:]} == {42}
    assert {rows[p][5] for p in pks[1:]} == {42}
    assert {rows[p][3] for p in pks[1:]} == {NOW}
    assert _count(store, "membership_grants") == 2


def test_sql_writes_through_the_view(store: Store) -> None:
    pks = _added(store, [f"w{i}" for i in range(2)])
    later = NOW + timedelta(hours=1)
    m = store.tables.memberships
    with store.write() as conn, outside_writes():
        conn.execute(
            m.insert(),
            [
                {
                    "persona_pk": 1,
                    "contact_pk": pks[0],
                    "source": 0,
                    "since": NOW,
                    "request_pk": 7,
                    "criterion_pk": 8,
                },
                {
                    "persona_pk": 1,
                    "contact_pk": pks[1],
                    "source": 5,
                    "since": NOW,
                    "request_pk": None,
                    "criterion_pk": 5,
                },
            ],
        )
    assert [r[1:] for r in _view(store)] == [
        (pks[0], 0, NOW, 7, 8),
        (pks[1], 5, NOW, None, 5),
    ]
    with store.write() as conn, outside_writes():
        conn.execute(m.update().where(m.c.contact_pk == pks[0]).values(since=later, source=3))
        conn.execute(m.delete().where(m.c.contact_pk == pks[1]))
    assert [r[1:] for r in _view(store)] == [(pks[0], 3, later, 7, 3)]
    with store.read() as conn:
        assert conn.scalar(select(func.count()).select_from(store.tables.membership_rows)) == 1


def test_prune_removes_only_unused_grants(store: Store) -> None:
    pks = _added(store, [f"u{i}" for i in range(2)])
    add_persona(store, "p", name="P", category="c")
    pin(store, "p", "u0", PinKind.IN)
    pin(store, "p", "u1", PinKind.IN)
    assert _count(store, "membership_grants") == 2
    r = store.tables.membership_rows
    with store.write() as conn, outside_writes():
        conn.execute(r.delete().where(r.c.contact_pk == pks[0]))
    with store.write() as conn:
        assert grants.prune(conn, store) == 1
        assert grants.prune(conn, store) == 0
    assert [row[1] for row in _view(store)] == [pks[1]]
    assert _count(store, "membership_grants") == 1


def test_migration_splits_old_rows_and_the_view_reads_them_back(store_url: str) -> None:
    """A store at 0010 with memberships in its table; after 0011 the view reads
    exactly those rows, and downgrading gives the table back."""
    engine = create_engine(store_url)
    rows = [
        (1, 10, 0, 1_700_000_000_000_000, 3, None),
        (1, 11, 0, 1_700_000_000_000_000, 3, None),
        (1, 12, -1, 1_700_000_100_000_000, None, None),
        (2, 10, 9, 1_700_000_200_000_000, None, 9),
        (2, 11, 0, 1_700_000_000_000_000, 4, 6),
    ]
    try:
        with engine.begin() as conn, outside_writes():
            command.downgrade(_alembic_config(conn), "0010_memberships_skip_scan")
            conn.execute(
                text(
                    "INSERT INTO memberships (persona_pk, contact_pk, source, since, request_pk, "
                    "criterion_pk) VALUES (:p, :c, :s, :t, :r, :k)"
                ),
                [dict(zip("pcstrk", row, strict=True)) for row in rows],
            )
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "head")
        with engine.connect() as conn:
            got = [
                tuple(r)
                for r in conn.execute(
                    text(
                        "SELECT persona_pk, contact_pk, source, since, request_pk, criterion_pk "
                        "FROM memberships ORDER BY persona_pk, contact_pk, source"
                    )
                )
            ]
            assert got == rows
            # Rows that shared (since, request, criterion) share a grant.
            assert conn.scalar(text("SELECT count(*) FROM membership_grants")) == 4
        with engine.begin() as conn:
            command.downgrade(_alembic_config(conn), "0010_memberships_skip_scan")
        with engine.connect() as conn:
            back = [
                tuple(r)
                for r in conn.execute(
                    text(
                        "SELECT persona_pk, contact_pk, source, since, request_pk, criterion_pk "
                        "FROM memberships ORDER BY persona_pk, contact_pk, source"
                    )
                )
            ]
            assert back == rows
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "head")
    finally:
        engine.dispose()
