"""Only personatag.memberships writes memberships, pins and the membership log.

tests/memberships/guard.py watches every statement the suite runs (and
tests/conftest.py fails any test that saw a write from elsewhere). Here: a
workload through every path that moves memberships finds no violation and the
guard sees each kind of write on both stores; a write from anywhere else is
caught, down to the bulk writer's raw cursors and COPY.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from personatag.config import Settings
from personatag.contacts import set_contact
from personatag.definitions.criteria import add_criterion, edit_criterion
from personatag.definitions.personas import add_persona
from personatag.domain import SOURCE_MANUAL, Action, PinKind
from personatag.engines.local.stream.processor import StreamProcessor
from personatag.generate import generate
from personatag.importer import import_file
from personatag.memberships.pins import pin, unpin
from personatag.memberships.retire import set_ongoing_status
from personatag.store import Store
from personatag.store.bulk import bulk_writer
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from tests.helpers import NOW
from tests.memberships import guard


def owned(before: Counter[tuple[str, str, str]]) -> set[tuple[str, str]]:
    """(table, verb) pairs personatag.memberships wrote since `before`."""
    grown = guard.seen - before
    return {(table, verb) for (table, verb, module) in grown if module.startswith(guard.OWNER)}


def contact_ids(store: Store, n: int) -> list[str]:
    c = store.tables.contacts
    with store.read() as conn:
        return list(conn.scalars(select(c.c.id).order_by(c.c.pk).limit(n)))


def test_every_membership_path_writes_through_memberships(
    store: Store, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = guard.seen.copy()
    guard.take()
    generate(store, contacts=400, seed=3)
    settings = Settings(stream_reconcile_s=0, bulk_log_threshold=5, data_dir=tmp_path)
    ids = contact_ids(store, 400)

    # ad hoc tag and untag (bulk log entries: more than 5 contacts change)
    add_persona(store, "emea", name="EMEA", category="region")
    for action, expr in ((Action.TAG, 'region = "EMEA"'), (Action.UNTAG, "seniority < 3")):
        run_adhoc(store, AdhocRequest(persona="emea", action=action, expr=expr), settings)
    run_adhoc(
        store,
        AdhocRequest(persona="emea", action=Action.TAG, contact_ids=ids[:3], actor="t"),
        settings,
    )

    # pins in and out, and lifted
    pin(store, "emea", ids[0], PinKind.IN)
    pin(store, "emea", ids[1], PinKind.OUT)
    unpin(store, "emea", ids[0])
    unpin(store, "emea", ids[1])

    # ongoing: backfill and swap, stream steps, an edit (a swap taking over the
    # old version's rows), an import fed to the stream, reconciliation, retire
    add_persona(store, "senior", name="Senior", category="seniority")
    add_criterion(
        store,
        "senior",
        persona="senior",
        expr="seniority >= 7",
        mode="ongoing",
        exit_policy="remove",
    )
    proc = StreamProcessor(store, settings)
    proc.catch_up(timeout_s=120)
    for cid in ids[:20]:
        set_contact(store, cid, {"seniority": "9"})
    proc.catch_up(timeout_s=120)
    edit_criterion(store, "senior", expr="seniority >= 8")
    proc.catch_up(timeout_s=120)
    (tmp_path / "c.csv").write_text("id,seniority\n" + "".join(f"{cid},1\n" for cid in ids[:10]))
    import_file(store, "contacts", tmp_path / "c.csv")
    proc.catch_up(timeout_s=120)
    crit = proc.criteria().criteria[0]
    proc.reconcile(crit)
    set_ongoing_status(store, "senior", "retire")
    proc.catch_up(timeout_s=120)

    # the demo, on this store: ad hoc criteria, a request file through the
    # dispatcher, the stream demo and the reading feed
    from personatag import demo

    monkeypatch.setenv("PERSONATAG_STORE_URL", store_url)
    monkeypatch.setenv("PERSONATAG_DATA_DIR", str(tmp_path / "demo"))
    monkeypatch.setattr(demo, "say", lambda text="": None)
    demo.run()

    assert guard.take() == []
    wrote = owned(before)
    for expected in (
        ("membership_rows", "INSERT"),
        ("membership_rows", "DELETE"),
        ("membership_rows", "UPDATE"),
        ("membership_grants", "INSERT"),
        ("membership_log", "INSERT"),
        ("pins", "INSERT"),
        ("pins", "DELETE"),
    ):
        assert expected in wrote, f"{expected} never seen: is the guard watching this store?"


def test_a_write_from_elsewhere_is_caught(store: Store) -> None:
    t = store.tables
    guard.take()

    # from a test, through SQLAlchemy
    with store.write() as conn:
        conn.execute(t.pins.insert().values(persona_pk=1, contact_pk=1, kind="in", created_at=NOW))
    found = guard.take()
    assert [(v.table, v.verb) for v in found] == [("pins", "INSERT")]
    assert found[0].writer.startswith(f"{__name__}:test_a_write_from_elsewhere_is_caught:")

    # from another personatag module
    rogue: dict[str, object] = {"__name__": "personatag.tagging.rogue"}
    exec(  # noqa: S102 - a function that lives in another module, for the guard
        "def write(conn, t):\n    conn.execute(t.memberships.delete())\n", rogue
    )
    with store.write() as conn:
        rogue["write"](conn, t)  # type: ignore[operator]
    found = guard.take()
    assert [(v.table, v.verb) for v in found] == [("memberships", "DELETE")]
    assert found[0].writer.startswith("personatag.tagging.rogue:write:")

    # through the bulk writer's raw driver cursor (SQLite) or COPY (PostgreSQL),
    # which SQLAlchemy's statement events never see
    with store.write() as conn:
        bulk_writer(conn).insert(
            t.memberships,
            ["persona_pk", "contact_pk", "source", "since"],
            [(1, 2, SOURCE_MANUAL, NOW), (1, 3, SOURCE_MANUAL, NOW)],
        )
    found = guard.take()
    verb = "COPY" if store.dialect == "postgresql" else "INSERT"
    assert {(v.table, v.verb) for v in found} == {("memberships", verb)}
    assert all(v.writer.startswith(__name__) for v in found)

    # on purpose, as a test simulating drift does: not a violation
    with store.write() as conn, guard.outside_writes():
        conn.execute(t.pins.delete())
    assert guard.take() == []


def test_the_owner_writes_freely(store: Store) -> None:
    from tests.helpers import add_contacts

    add_contacts(store, [{"id": "a"}])
    add_persona(store, "p", name="P", category="c")
    guard.take()
    before = guard.seen.copy()
    pin(store, "p", "a", PinKind.IN)
    assert guard.take() == []
    assert {
        ("pins", "INSERT"),
        ("membership_rows", "INSERT"),
        ("membership_log", "INSERT"),
    } <= owned(before)
