"""Opening, migrating and describing stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import literal, select

from personatag.config import load_settings
from personatag.definitions.attributes import add_attribute
from personatag.domain import FieldType
from personatag.errors import ConfigError, ConflictError, InputError, PersonatagError
from personatag.store import Store, open_store
from personatag.store.db import HEAD_REVISION, is_current, migrate, migration_head
from personatag.store.schema import SEARCH_FIELDS


def test_head_constant_matches_migrations() -> None:
    assert migration_head() == HEAD_REVISION


def test_uninitialised_store_says_run_init(tmp_path: Path) -> None:
    with pytest.raises(PersonatagError, match="personatag init"):
        open_store(f"sqlite:///{tmp_path / 'new.db'}")


def test_migrate_is_idempotent(store: Store) -> None:
    migrate(store.engine)
    assert is_current(store.engine)


def test_sqlite_is_wal(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path / 'x' / 'store.db'}", create=True)
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    s.dispose()


def test_custom_attribute_adds_a_typed_column(store: Store) -> None:
    add_attribute(store, "aum_musd", "float", actor="t")
    add_attribute(store, "tags", FieldType.LIST)
    cat = store.catalog()
    assert cat.contact_fields["aum_musd"] is FieldType.FLOAT
    assert "cx_tags" in store.tables.contacts.c
    with store.write() as conn:
        conn.execute(store.tables.contacts.insert().values(id="a", cx_aum_musd=1.5, cx_tags=["x"]))
    with pytest.raises(ConflictError):
        add_attribute(store, "aum_musd", "int")
    with pytest.raises(ConflictError):
        add_attribute(store, "region", "string")
    with pytest.raises(InputError, match="unknown attribute type"):
        add_attribute(store, "x1", "decimal")
    with pytest.raises(InputError, match="invalid attribute name"):
        add_attribute(store, "Bad Name", "int")


def test_bad_store_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unsupported store"):
        open_store("mysql://x@y/z")


def test_unknown_and_invalid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONATAG_BATCH_SIZE", "0")
    with pytest.raises(ConfigError, match="PERSONATAG_BATCH_SIZE"):
        load_settings()
    monkeypatch.delenv("PERSONATAG_BATCH_SIZE")
    monkeypatch.setenv("PERSONATAG_NOPE", "1")
    with pytest.raises(ConfigError, match="unknown setting PERSONATAG_NOPE"):
        load_settings()


def test_schema_description_matches_migrations(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from personatag.store.schema import build_tables

    # As a store describes them (its database's options only), and with every
    # database's options.
    for dialect in (store.dialect, None):
        with store.engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn), build_tables(dialect=dialect).metadata
            )
        _check_schema_diff(store, diff)


def _check_schema_diff(store: Store, diff: list[Any]) -> None:
    from personatag.store.schema import build_tables

    # Types are compared loosely (UTCTimestamp is a BIGINT, StringList TEXT/text[]).
    # Alembic cannot compare the contact search indexes (SQLite reflects no
    # expression index; PostgreSQL's COLLATE is reflected apart from the
    # expression): test_contact_search_indexes checks them instead.
    searched = {f"ix_contacts_search_{f}" for f in SEARCH_FIELDS}
    # Alembic ignores ddl_if: an index made for one dialect only is not missing
    # from the others.
    elsewhere = {
        index.name
        for table in build_tables().metadata.tables.values()
        for index in table.indexes
        if getattr(index, "_ddl_if", None) is not None
        and index._ddl_if.dialect not in (None, store.engine.dialect.name)
    }
    assert [
        d
        for d in diff
        if d[0] != "modify_type"
        and not (d[0].endswith("_index") and d[1].name in searched | elsewhere)
    ] == []


def test_a_store_describes_its_tables_with_its_own_database_options(store: Store) -> None:
    """Only the store's database's table and index options (an option of another
    database would load that database's SQLAlchemy dialect)."""
    t = store.tables
    bulk = next(i for i in t.membership_log.indexes if i.name == "ix_membership_log_bulk")
    assert set(bulk.dialect_kwargs) == {f"{store.dialect}_where"}
    assert str(bulk.dialect_options[store.dialect]["where"]) == "bulk_count IS NOT NULL"
    rowid = {"sqlite_with_rowid": False} if store.dialect == "sqlite" else {}
    for table in (t.reads, t.logins, t.membership_rows):
        assert dict(table.dialect_kwargs) == rowid, table.name
    # Described once, from the attributes the catalog read.
    assert store.tables is t
    store.catalog()
    assert store.tables is t


def test_contact_search_indexes(store: Store) -> None:
    from sqlalchemy import select

    from personatag.store.backends.base import search_key

    c = store.tables.contacts
    with store.engine.connect() as conn:
        for field in SEARCH_FIELDS:
            query = select(c.c.pk).where(store.backend.prefix_match(c.c[field], "ab"))
            query = query.order_by(search_key(c.c[field])).limit(5)
            compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
            if store.backend.name == "sqlite":
                plan = " ".join(
                    str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
                )
                assert f"USING INDEX ix_contacts_search_{field}" in plan, plan
            else:
                (definition,) = conn.exec_driver_sql(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = %(name)s",
                    {"name": f"ix_contacts_search_{field}"},
                ).one()
                assert f'(lower({field}) COLLATE "C", pk)' in definition
                conn.exec_driver_sql("SET enable_seqscan = off")
                plan = " ".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
                assert f"ix_contacts_search_{field}" in plan and "Sort" not in plan, plan


def test_a_pk_range_of_contacts_reads_only_a_pk_index(store: Store) -> None:
    """The rows of a large tag's INSERT ... SELECT need only the pks of a range: they come
    from a narrow pk index, not the table's wide rows (SQLite: ix_contacts_pk;
    PostgreSQL: an index-only scan of the primary key)."""
    c = store.tables.contacts
    rows = select(literal(1), c.c.pk, literal(0), literal(1)).where(c.c.pk.between(1, 10))
    with store.engine.connect() as conn:
        compiled = rows.compile(conn, compile_kwargs={"literal_binds": True})
        if store.backend.name == "sqlite":
            plan = " ".join(
                str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
            )
            assert "COVERING INDEX ix_contacts_pk" in plan, plan
        else:
            conn.exec_driver_sql("SET enable_seqscan = off")  # a tiny table scans otherwise
            plan = " ".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
            assert "Index Only Scan using contacts_pkey" in plan, plan


def test_opening_a_missing_sqlite_store_says_init_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "store.db"
    with pytest.raises(PersonatagError, match=r"there is no store at .*: run `personatag init`"):
        open_store(f"sqlite:///{path}")
    assert not path.exists() and not path.parent.exists()
