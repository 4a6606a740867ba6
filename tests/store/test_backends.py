"""Store backends: what differs between SQLite and PostgreSQL, run on both."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import Column, literal, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from personatag.definitions.attributes import add_attribute
from personatag.domain import FieldType
from personatag.errors import ConfigError
from personatag.store import Store, changefeed
from personatag.store.backends import backend_for_url, backend_names, get_backend
from personatag.store.backends.base import LOCK_SPACE_ACCOUNTS
from personatag.store.db import normalise_url
from personatag.store.matchset import fresh, temp_table
from tests.helpers import add_contacts


def test_registry_names_and_urls() -> None:
    assert backend_names() == ["postgresql", "sqlite"]
    assert backend_for_url(make_url("postgres://u@h/d")) is get_backend("postgresql")
    assert backend_for_url(make_url("postgresql+psycopg://u@h/d")).name == "postgresql"
    assert backend_for_url(make_url("sqlite:///x.db")) is get_backend("sqlite")
    assert normalise_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert normalise_url("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(ConfigError, match="unsupported store 'mysql'"):
        get_backend("mysql")


def test_store_has_its_backend(store: Store) -> None:
    assert store.backend is get_backend(store.engine.dialect.name)
    assert store.dialect == store.backend.name
    assert store.one_writer is (store.backend.name == "sqlite")
    assert store.shared  # a file or a server: other processes can open it


def test_int_list_binding_reads_back(store: Store) -> None:
    b = store.backend
    pks = [3, 1, 2**40, 2]
    with store.read() as conn:
        got = conn.execute(
            text(f"SELECT pk FROM ({b.int_rows_sql('pks')}) AS t ORDER BY pk"),
            {"pks": b.bind_ints(pks)},
        ).scalars()
        assert list(got) == sorted(pks)


def test_temp_pks_load_and_analyze(store: Store) -> None:
    b = store.backend
    with store.write() as conn:
        table = fresh(
            conn,
            temp_table(f"pt_test_{b.name}", Column("pk", b.temp_pk_type, primary_key=True)),
        )
        conn.execute(
            text(f"INSERT INTO {table.name} (pk) {b.int_rows_sql('pks')}"),
            {"pks": b.bind_ints([5, 7, 9])},
        )
        b.analyze_temp(conn, table)
        assert list(conn.execute(select(table.c.pk).order_by(table.c.pk)).scalars()) == [5, 7, 9]
        table.drop(conn)


def test_json_rows_and_lines(store: Store) -> None:
    """The snapshot's JSON: lists as arrays, booleans as true/false, NULL as null."""
    add_attribute(store, "tags", FieldType.LIST)
    add_attribute(store, "vip", FieldType.BOOL)
    add_contacts(
        store,
        [
            {"id": "a", "job_title": "CIO", "cx_tags": ["x", "y"], "cx_vip": True},
            {"id": "b", "job_title": "ÉCOLE", "cx_tags": None, "cx_vip": False},
            {"id": "c", "job_title": None, "cx_tags": [], "cx_vip": None},
        ],
    )
    b = store.backend
    c = store.tables.contacts.c
    row = b.json_object(
        literal("id"),
        c.id,
        literal("tags"),
        b.json_field(c.cx_tags, FieldType.LIST),
        literal("vip"),
        b.json_field(c.cx_vip, FieldType.BOOL),
        literal("title"),
        b.fold(c.job_title),
        literal("first"),
        b.json_bool(c.id == "a"),  # a test that is never NULL, as exists() is
    )
    with store.read() as conn:
        text_ = conn.execute(select(b.lines(row))).scalar()
    got = sorted((json.loads(line) for line in text_.split("\n")), key=lambda d: d["id"])
    assert got == [
        {"id": "a", "tags": ["x", "y"], "vip": True, "title": "cio", "first": True},
        {"id": "b", "tags": None, "vip": False, "title": "école", "first": False},
        {"id": "c", "tags": [], "vip": None, "title": None, "first": False},
    ]


def test_id_aggregation(store: Store) -> None:
    add_contacts(store, [{"id": i} for i in ("a", "b,c", 'd"e', "f")])
    b = store.backend
    c = store.tables.contacts
    with store.read() as conn:
        pks = {i: pk for i, pk in conn.execute(select(c.c.id, c.c.pk))}
        listed = conn.execute(select(b.id_list(c.c.pk))).scalar()
        assert sorted(int(x) for x in listed.split(",")) == sorted(pks.values())
        lines = b.contact_id_lines(conn, [pks["b,c"], pks['d"e'], pks["a"]], ",enter")
    assert lines is not None
    if b.id_lines_nul_separated:
        assert sorted(lines.split("\x00")) == ["a", "b,c", 'd"e']
    else:
        assert lines.split("\n") == ["a,enter", '"b,c",enter', '"d""e",enter']


def test_serial_last_value_and_writers(store: Store) -> None:
    b = store.backend
    with store.engine.connect() as conn:
        assert b.serial_last_value(conn, "changes", "seq") == 0
        assert b.running_writers(conn) == frozenset()
    with store.write() as conn:
        changefeed.record(conn, store, changefeed.KIND_CONTACT, [1])
        changefeed.record(conn, store, changefeed.KIND_CONTACT, [2])
    with store.engine.connect() as conn:
        assert b.serial_last_value(conn, "changes", "seq") == 2


def test_running_writers_lists_an_open_writer(pg_store: Store) -> None:
    """PostgreSQL: a transaction that has written is listed until it ends."""
    b = pg_store.backend
    with pg_store.write() as conn:
        changefeed.record(conn, pg_store, changefeed.KIND_CONTACT, [1])
        with pg_store.engine.connect() as other:
            assert len(b.running_writers(other)) == 1
    with pg_store.engine.connect() as other:
        assert b.running_writers(other) == frozenset()


def test_brief_write_fails_instead_of_waiting(store: Store) -> None:
    """A write that may be skipped gives up on a lock another writer holds."""
    locked = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with store.write() as conn:
            store.backend.lock(conn, LOCK_SPACE_ACCOUNTS, 1)
            conn.execute(store.tables.changes.delete())
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        with pytest.raises(OperationalError), store.write_briefly(0.05) as conn:
            store.backend.lock(conn, LOCK_SPACE_ACCOUNTS, 1)
            conn.execute(store.tables.changes.delete())
    finally:
        release.set()
        holder.join()
    with store.write_briefly(0.05) as conn:  # free again: it goes through
        store.backend.lock(conn, LOCK_SPACE_ACCOUNTS, 1)
