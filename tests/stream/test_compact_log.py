"""The stream's compact log entries (PERSONATAG_STREAM_LOG_COMPACT) read as
the row-per-change log does: `contact show`, the events export (and so the
webhooks, which read the same entries) and the persona's history tell the same
story per contact as a twin store that logs a row per change. Runs on SQLite
and PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from personatag.config import Settings
from personatag.contacts import set_contact, show_contact
from personatag.definitions.criteria import add_criterion
from personatag.definitions.personas import add_persona, persona_pks
from personatag.domain import utcnow
from personatag.engines.local.stream.processor import StreamProcessor
from personatag.membership_events.export import export_events
from personatag.memberships.log import log_for_contact
from personatag.memberships.persona_view import recent_changes, size_history
from personatag.memberships.rows import Holders, Writer
from personatag.store import Store, open_store

CONTACTS = [f"c{i}" for i in range(8)]


def _run(store: Store, compact: int) -> StreamProcessor:
    for cid in CONTACTS:
        set_contact(store, cid, {"region": "EMEA", "seniority": 5}, create=True)
    add_persona(store, "emea", name="EMEA", category="region")
    add_persona(store, "senior", name="Senior", category="seniority")
    add_criterion(
        store,
        "k-emea",
        persona="emea",
        expr='region = "EMEA"',
        mode="ongoing",
        exit_policy="remove",
    )
    add_criterion(
        store,
        "k-senior",
        persona="senior",
        expr="seniority >= 5",
        mode="ongoing",
        exit_policy="remove",
    )
    p = StreamProcessor(store, Settings(stream_reconcile_s=0, stream_log_compact=compact))
    p.catch_up()
    # Five leave emea in one step, then come back; three lose senior meanwhile.
    for cid in CONTACTS[:5]:
        set_contact(store, cid, {"region": "AMER"})
    p.catch_up()
    for cid in CONTACTS[:5]:
        set_contact(store, cid, {"region": "EMEA"})
    for cid in CONTACTS[5:]:
        set_contact(store, cid, {"seniority": 1})
    p.catch_up()
    return p


def _story(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["persona"], e["change"], e.get("criterion"), e.get("reason")) for e in entries]


def _held(shown: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(p["persona"], [s["criterion"] for s in p["sources"]]) for p in shown["personas"]]


def test_compact_entries_read_per_contact_as_rows_do(store: Store, tmp_path: Path) -> None:
    twin = open_store(f"sqlite:///{tmp_path / 'rows.db'}", create=True)
    try:
        _run(store, compact=2)
        _run(twin, compact=0)
        t = store.tables
        with store.read() as conn:
            compact = conn.execute(
                select(t.membership_log.c.change, t.membership_log.c.bulk_count)
                .where(t.membership_log.c.bulk_count.is_not(None))
                .order_by(t.membership_log.c.seq)
            ).all()
            members = conn.scalar(select(func.count()).select_from(t.membership_log_members))
        # the exit of five, their enter again, and three leaving senior
        assert [tuple(r) for r in compact] == [("exit", 5), ("enter", 5), ("exit", 3)]
        assert members == 13
        with twin.read() as conn:
            assert not conn.scalar(
                select(func.count()).select_from(twin.tables.membership_log_members)
            )
        for cid in CONTACTS:
            mine = show_contact(store, cid, log_limit=50)
            theirs = show_contact(twin, cid, log_limit=50)
            assert _story(mine["log"]) == _story(theirs["log"]), cid
            assert _held(mine) == _held(theirs), cid
        # A limit counts compact entries as it counts rows: the newest first.
        assert _story(show_contact(store, "c0", log_limit=1)["log"]) == _story(
            show_contact(twin, "c0", log_limit=1)["log"]
        )

        def events(s: Store) -> list[tuple[Any, ...]]:
            out = export_events(s, settle_wait_s=0)
            return sorted((e["contact_id"], e["persona"], e["change"]) for e in out)

        assert events(store) == events(twin)
        for key in ("emea", "senior"):

            def sizes(s: Store, key: str = key) -> tuple[list[Any], int]:
                with s.read() as conn:
                    ppk = persona_pks(conn, s)[key]
                    history = size_history(conn, s, ppk, 3)
                    changes = recent_changes(conn, s, ppk, limit=100)
                sizes = (history.size, history.entered, history.exited)
                return [sizes], sum(e["count"] for e in changes)

            assert sizes(store) == sizes(twin), key
    finally:
        twin.dispose()


def test_a_big_step_still_compacts_its_groups(store: Store) -> None:
    # More changes than the bulk threshold in all: a group above it becomes a
    # request-style entry (pruned by pk range), groups of `compact` or more
    # compact entries, the rest a row each.
    for i in range(20):
        set_contact(store, f"c{i}", {"region": "EMEA"}, create=True)
    for key in ("a", "b", "c"):
        add_persona(store, key, name=key, category="test")
        add_criterion(store, f"k-{key}", persona=key, expr='region = "EMEA"', mode="ongoing")
    t = store.tables
    with store.read() as conn:
        cpks = [int(c) for c in conn.scalars(select(t.contacts.c.pk).order_by(t.contacts.c.pk))]
        crits = dict(conn.execute(select(t.criteria.c.pk, t.criteria.c.persona_pk)).all())
    (ka, pa), (kb, pb), (kc, pc) = sorted(crits.items())
    with store.write() as conn:
        holders = Holders.load(conn, store, {c: {pa, pb, pc} for c in cpks})
        writer = Writer(store, utcnow(), bulk_threshold=10, compact=3)
        writer.decide(holders, pa, ka, True, cpks[:12], set(cpks[:12]))  # above 10: ranged
        writer.decide(holders, pb, kb, True, cpks[:4], set(cpks[:4]))  # 4 >= 3: compact
        writer.decide(holders, pc, kc, True, cpks[:2], set(cpks[:2]))  # 2: a row each
        writer.flush(conn)
    lg, lm = t.membership_log, t.membership_log_members
    with store.read() as conn:
        entries = conn.execute(
            select(lg.c.persona_pk, lg.c.bulk_count, lg.c.bulk_min).order_by(lg.c.seq)
        ).all()
        members = conn.execute(select(lm.c.contact_pk).order_by(lm.c.contact_pk)).scalars().all()
        assert [tuple(e) for e in entries] == [
            (pa, 12, cpks[0]),
            (pb, 4, None),
            (pc, None, None),
            (pc, None, None),
        ]
        assert members == cpks[:4]
        for cpk in cpks[:2]:  # every kind of entry found by contact
            found = {e["persona_pk"] for e in log_for_contact(conn, store, cpk)}
            assert found == {pa, pb, pc}
