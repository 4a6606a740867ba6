"""Memberships by contact: PostgreSQL seeks its index; SQLite, without one,
skip-scans the primary key from the statistics the writer keeps."""

from __future__ import annotations

from sqlalchemy import select, text

from personatag.config import Settings
from personatag.contacts import show_contact
from personatag.definitions.personas import add_persona
from personatag.domain import Action
from personatag.memberships.apply import STATISTICS_ROWS
from personatag.store import Store
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from tests.helpers import NOW, add_contacts, population


def test_a_large_tag_leaves_lookups_by_contact_planned_as_seeks(store: Store) -> None:
    n = STATISTICS_ROWS + 200
    add_contacts(store, population(n))
    for key in ("all", "emea"):
        add_persona(store, key, name=key, category="test")
    settings = Settings(bulk_log_threshold=100)
    for key, expr in (("all", "id is not null"), ("emea", 'region = "EMEA"')):
        run_adhoc(
            store,
            AdhocRequest(persona=key, action=Action.TAG, expr=expr, as_of=NOW, actor="t"),
            settings,
        )
    m = store.tables.memberships
    by_contact = select(m.c.persona_pk).where(m.c.contact_pk == 5)
    with store.read() as conn:
        if store.dialect == "sqlite":
            sql = str(by_contact.compile(conn, compile_kwargs={"literal_binds": True}))
            plan = " ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
            assert "ANY(persona_pk)" in plan, plan
        assert len(conn.execute(by_contact).all()) == 2  # c0004: region EMEA (i % 4 == 0)
    shown = show_contact(store, "c0004")
    assert sorted(p["persona"] for p in shown["personas"]) == ["all", "emea"]
