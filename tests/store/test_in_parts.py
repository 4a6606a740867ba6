"""store.rowwise.in_parts: `column IN keys` in parts, as each database reads
a long list best (an IN of bound values on SQLite, one array on PostgreSQL),
and PostgreSQL's locks of many keys in one statement."""

from __future__ import annotations

from sqlalchemy import func, select, text

from personatag.store import Store
from personatag.store.rowwise import fetch_tuples, in_parts
from tests.helpers import add_contacts, population


def test_in_parts_finds_exactly_the_keys_across_parts(store: Store) -> None:
    add_contacts(store, population(30))
    c = store.tables.contacts
    with store.read() as conn:
        pks = sorted(conn.scalars(select(c.c.pk)))
    # Keys that exist and keys that do not, more than one part's worth.
    keys = sorted({*pks[::2], *range(10_000, 10_000 + 2 * store.backend.in_chunk + 7)})
    found: list[int] = []
    parts = 0
    with store.read() as conn:
        for within in in_parts(store.backend, c.c.pk, keys):
            found += [pk for (pk,) in fetch_tuples(conn, select(c.c.pk).where(within))]
            parts += 1
    assert sorted(found) == pks[::2]
    assert parts == -(-len(keys) // store.backend.in_chunk)
    assert list(in_parts(store.backend, c.c.pk, [])) == []


def test_postgresql_binds_the_array_untyped(pg_store: Store) -> None:
    """Typed as text (`::VARCHAR`), the CAST around it was an expression the
    planner could not fold: a sequential scan parsed the array for every row."""
    c = pg_store.tables.contacts
    (within,) = in_parts(pg_store.backend, c.c.pk, [3, 1, 2])
    with pg_store.read() as conn:
        sql = str(select(c.c.pk).where(within).compile(dialect=conn.dialect))
    assert "CAST(%(param_1)s AS BIGINT[])" in sql and "VARCHAR" not in sql


def test_postgresql_locks_many_keys_in_one_statement(pg_store: Store) -> None:
    with pg_store.write() as conn:
        pg_store.backend.lock_all(conn, 7, [9, 3, 5, 3])
        held = conn.execute(
            text(
                "SELECT classid, objid FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid() ORDER BY objid"
            )
        ).all()
        pg_store.backend.lock_all(conn, 7, [])  # nothing to lock
    assert held == [(7, 3), (7, 5), (7, 9)]
    with pg_store.read() as conn:  # released with the transaction
        assert (
            conn.scalar(
                select(func.count())
                .select_from(text("pg_locks"))
                .where(text("locktype = 'advisory' AND pid = pg_backend_pid()"))
            )
            == 0
        )
