"""The membership rules, and the row-wise writer's compiled statements."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from personatag.domain import SOURCE_ADHOC, SOURCE_MANUAL, Change
from personatag.memberships import rules
from personatag.memberships.rows import Holders, Writer
from personatag.store import Store
from personatag.store.rowwise import Prepared
from personatag.store.schema import build_tables
from tests.helpers import NOW, add_contacts


def test_enter_and_exit_only_when_the_persona_as_a_whole_moves() -> None:
    sources: set[int] = set()
    assert rules.answer(sources, 7, True, True, False) is Change.ENTER
    assert rules.answer(sources, 8, True, True, False) is None  # a second source
    assert rules.answer(sources, 7, True, True, False) is None  # already held through 7
    assert rules.answer(sources, 7, False, True, False) is None  # 8 still holds it
    assert rules.answer(sources, 8, False, True, False) is Change.EXIT
    assert sources == set()


def test_pins_win() -> None:
    out: set[int] = set()
    assert rules.answer(out, 7, True, True, pinned_out=True) is None
    assert out == set() and not rules.may_gain(True)
    pinned_in = {SOURCE_MANUAL}
    assert rules.answer(pinned_in, 7, True, True, False) is None
    assert rules.answer(pinned_in, 7, False, True, False) is None  # still held: the pin
    assert pinned_in == {SOURCE_MANUAL}


def test_a_non_match_keeps_the_source_without_exit_remove() -> None:
    sources = {7}
    assert rules.answer(sources, 7, False, False, False) is None
    assert sources == {7}


def test_rows_by_rules_spare_a_pin_in() -> None:
    t = build_tables()
    sql = str(
        select(t.membership_rows.c.contact_pk)
        .where(rules.removable_by_rules(t))
        .compile(dialect=sqlite.dialect())
    )
    assert "membership_rows.source != ?" in sql


def test_statements_are_compiled_from_the_tables_per_dialect() -> None:
    m = build_tables().membership_rows
    delete = Prepared(
        m.delete().where(m.c.contact_pk == bindparam("c"), m.c.persona_pk == bindparam("p")),
        ("p", "c"),
    )
    lite = delete.sql(sqlite.dialect())
    assert lite == (
        "DELETE FROM membership_rows "
        "WHERE membership_rows.contact_pk = ? AND membership_rows.persona_pk = ?"
    )
    pg = delete.sql(postgresql.dialect())  # type: ignore[no-untyped-call]
    assert pg.startswith("DELETE FROM membership_rows WHERE membership_rows.contact_pk = %s")
    assert pg.count("%s") == 2 and "?" not in pg


def test_the_writer_applies_and_logs_by_the_rules(store: Store) -> None:
    add_contacts(store, [{"id": f"k{i}"} for i in range(4)])
    t = store.tables
    with store.read() as conn:
        pks = sorted(conn.scalars(select(t.contacts.c.pk)))
    holders = Holders()
    holders.sources[(1, pks[0])] = {SOURCE_ADHOC}  # held already through a request
    holders.pinned_out.add((1, pks[1]))
    writer = Writer(store, NOW, bulk_threshold=100)
    changed = writer.decide(holders, 1, 9, True, pks, set(pks))
    assert changed == [pks[2], pks[3]]  # k0 held it already, k1 is pinned out
    with store.write() as conn:
        out = writer.flush(conn)
    assert (out.rows_added, len(out.entered)) == (3, 2)
    with store.read() as conn:
        rows = set(conn.execute(select(t.memberships.c.contact_pk, t.memberships.c.source)))
        log = conn.execute(
            select(t.membership_log.c.contact_pk, t.membership_log.c.change, t.membership_log.c.at)
        ).all()
    assert rows == {(pks[0], 9), (pks[2], 9), (pks[3], 9)}
    assert sorted((c, ch) for c, ch, _ in log) == [(pks[2], "enter"), (pks[3], "enter")]
    assert {at for _, _, at in log} == {NOW}
