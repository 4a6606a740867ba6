"""Matched contact pks held in a temp table for the length of one transaction.

A criterion with `count(...)` or `persona(...)` evaluates a subquery over
readership or memberships (seconds on 100M reads); the applier and preview
use the match set in several statements, so such criteria are evaluated once
into a temp table and every later statement reads that instead.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, ColumnElement, Connection, MetaData, Table, select

from personatag.store import Store
from personatag.store.backends import get_backend

# Temp tables are private to their connection, and a connection works on one
# request at a time: fixed names (and Table objects) let SQLAlchemy reuse its
# compiled statements instead of compiling new ones for every request.
_TEMP = MetaData()


def temp_table(name: str, *columns: Column[Any]) -> Table:
    """The temp table `name` (defined once per process)."""
    if name in _TEMP.tables:
        return _TEMP.tables[name]
    return Table(name, _TEMP, *columns, prefixes=["TEMPORARY"])


def fresh(conn: Connection, table: Table) -> Table:
    """Create `table` on `conn`, empty (dropping a leftover of a failed request)."""
    table.drop(conn, checkfirst=True)
    table.create(conn)
    return table


class TempPks:
    """A temp table of contact pks on one connection; drop() when done."""

    def __init__(self, conn: Connection, name: str = "pt_pks") -> None:
        self.backend = get_backend(conn.dialect.name)
        self.table = fresh(conn, temp_table(name, Column("pk", BigInteger, primary_key=True)))

    def fill(self, conn: Connection, query: Any) -> int:
        """Insert the pks `query` returns; returns how many."""
        n = conn.execute(
            self.table.insert().from_select(["pk"], query),
            execution_options={"preserve_rowcount": True},
        ).rowcount
        self.backend.analyze_temp(conn, self.table)
        return int(n)

    def contains(self, pk: ColumnElement[Any]) -> ColumnElement[bool]:
        return pk.in_(select(self.table.c.pk))

    def drop(self, conn: Connection) -> None:
        self.table.drop(conn, checkfirst=True)


def is_heavy(references: Any) -> bool:
    """Does a criterion read readership or memberships (worth evaluating once)?"""
    return bool(references.events or references.personas)


def materialize(conn: Connection, store: Store, condition: ColumnElement[bool]) -> TempPks:
    """Evaluate `condition` once into a temp table of matched contact pks."""
    pks = TempPks(conn, "pt_match")
    c = store.tables.contacts
    pks.fill(conn, select(c.c.pk).where(condition))
    return pks
