"""The store's bulk integer column reader (store.columns), which the columnar
copy reads reads, logins and the contacts' integer fields with: exact on
SQLite and PostgreSQL, with NULLs, empty tables, large and negative values,
chunked by key ranges or not."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, text

from personatag.store import Store
from personatag.store.backends.columns import BulkReadError, parse_decimal_list, parse_pg_copy
from personatag.store.columns import read_int_columns

BIG = 2**63 - 1


@pytest.fixture
def probe(store: Store) -> Iterator[Table]:
    """A scratch table (key, nullable value, not-null value) in the store."""
    md = MetaData()
    table = Table(
        "bulk_probe",
        md,
        Column("k", BigInteger, primary_key=True, autoincrement=False),
        Column("v", BigInteger),
        Column("w", Integer, nullable=False),
    )
    with store.engine.begin() as conn:
        table.create(conn)
    yield table
    with store.engine.begin() as conn:
        table.drop(conn)


def _fill(store: Store, table: Table, rows: list[tuple[int, int | None, int]]) -> None:
    with store.engine.begin() as conn:
        conn.execute(table.insert(), [{"k": k, "v": v, "w": w} for k, v, w in rows])


def _as_rows(cols: list, n: int) -> list[tuple]:  # type: ignore[type-arg]
    out = []
    for i in range(n):
        row = []
        for col in cols:
            null = col.nulls is not None and bool(col.nulls[i])
            row.append(None if null else int(col.values[i]))
        out.append(tuple(row))
    return sorted(out, key=lambda r: r[0])


def test_empty_table_gives_empty_arrays(store: Store, probe: Table) -> None:
    with store.read() as conn:
        for key in (None, probe.c.k):
            cols = read_int_columns(conn, [probe.c.k, probe.c.v, probe.c.w], key=key)
            assert [len(c) for c in cols] == [0, 0, 0]
            assert all(c.values.dtype == np.int64 and c.nulls is None for c in cols)


@pytest.mark.parametrize("rows_per_chunk", [1, 3, 1_000_000])
def test_values_nulls_and_extremes_are_exact(
    store: Store, probe: Table, rows_per_chunk: int
) -> None:
    rows: list[tuple[int, int | None, int]] = [
        (-7, -(2**63), 0),
        (1, None, -1),
        (2, -5, 2**31 - 1),
        (3, None, 7),
        (2**40, 0, 1),
        (2**62, 2**62, -(2**31)),
        (BIG, BIG, 5),
    ]
    _fill(store, probe, rows)
    with store.read() as conn:
        for key in (None, probe.c.k):
            cols = read_int_columns(
                conn, [probe.c.k, probe.c.v, probe.c.w], key=key, rows_per_chunk=rows_per_chunk
            )
            assert _as_rows(cols, len(rows)) == sorted(rows)
            assert cols[0].nulls is None and cols[2].nulls is None  # declared NOT NULL
            assert cols[1].nulls is not None and int(cols[1].nulls.sum()) == 2
            assert int(cols[1].values[cols[1].nulls].sum()) == 0  # NULL reads as 0


def test_where_selects_rows_and_chunks_agree(store: Store, probe: Table) -> None:
    rng = random.Random(3)
    keys = sorted(rng.sample(range(1, 10**12), 2_000))
    rows = [
        (k, None if rng.random() < 0.2 else rng.randrange(-(10**15), 10**15), i)
        for i, k in enumerate(keys)
    ]
    _fill(store, probe, rows)
    wanted = set(rng.sample(keys, 300))
    with store.read() as conn:
        whole = read_int_columns(conn, [probe.c.k, probe.c.v, probe.c.w])
        chunked = read_int_columns(
            conn, [probe.c.k, probe.c.v, probe.c.w], key=probe.c.k, rows_per_chunk=97
        )
        some = read_int_columns(
            conn,
            [probe.c.k, probe.c.v],
            where=probe.c.k.in_(sorted(wanted)),
            key=probe.c.k,
            rows_per_chunk=10,
        )
    assert _as_rows(whole, len(rows)) == rows
    assert _as_rows(chunked, len(rows)) == rows
    assert _as_rows(some, len(wanted)) == [(k, v) for k, v, _ in rows if k in wanted]


def test_all_null_column(store: Store, probe: Table) -> None:
    _fill(store, probe, [(1, None, 1), (2, None, 2)])
    with store.read() as conn:
        (v,) = read_int_columns(conn, [probe.c.v])
    assert v.nulls is not None and v.nulls.tolist() == [True, True]


def test_reads_and_logins_of_the_store(store: Store) -> None:
    """The tables the copy reads this way: reads (three NOT NULL keys)."""
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO publications (pk, id, title) VALUES (9, 'p', 't')"))
        conn.execute(text("INSERT INTO contacts (pk, id) VALUES (5, 'a'), (6, 'b')"))
        conn.execute(
            text(
                "INSERT INTO reads (contact_pk, read_at, publication_pk)"
                " VALUES (5, 1, 9), (6, -2, 9)"
            )
        )
    r = store.tables.reads
    with store.read() as conn:
        cols = read_int_columns(
            conn, [r.c.contact_pk, r.c.read_at, r.c.publication_pk], key=r.c.contact_pk
        )
    assert _as_rows(cols, 2) == [(5, 1, 9), (6, -2, 9)]


def test_malformed_transfers_are_clear_errors() -> None:
    with pytest.raises(BulkReadError, match="2 values for 3 rows"):
        parse_decimal_list("1,2", 3, "column 1")
    with pytest.raises(BulkReadError, match="no values for 1 rows"):
        parse_decimal_list(None, 1, "column 1")
    with pytest.raises(BulkReadError, match="not a binary COPY stream"):
        parse_pg_copy(b"nonsense", [False], "a read")
