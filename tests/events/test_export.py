"""The JSON-lines export of the membership log, on real SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from personatag.definitions.criteria import add_criterion
from personatag.definitions.personas import add_persona
from personatag.domain import SOURCE_MANUAL, Action, PinKind
from personatag.errors import InputError, NotFoundError
from personatag.membership_events.export import ExportProgress, export_events, export_lines
from personatag.membership_events.reader import Horizon, settled_seq
from personatag.memberships.log import LogContext, log_one
from personatag.memberships.pins import pin
from personatag.store import Store, open_store
from tests.conftest import drop_pg, new_pg_url
from tests.events.conftest import tag
from tests.helpers import NOW, add_contacts, population
from tests.memberships.guard import outside_writes

FIELDS = ["seq", "at", "persona", "contact_id", "change", "source", "criterion", "request_id"]


def _history(store: Store) -> dict[str, str]:
    """Single and bulk entries, enters and exits, every source."""
    first = tag(store, "emea", 'region = "EMEA"', bulk=3)  # one bulk entry of 10
    pin(store, "cio", "c0003", PinKind.IN, actor="bob")  # manual enter
    add_criterion(store, "cios", persona="cio", expr='job_title = "CIO"', actor="alice")
    by_criterion = tag(store, "cio", None, criterion="cios")  # 8 single entries
    tag(store, "emea", "seniority < 5", action=Action.UNTAG)  # exits, single entries
    pin(store, "emea", "c0008", PinKind.OUT, actor="bob")  # manual exit
    return {"first": str(first["request_id"]), "crit": str(by_criterion["request_id"])}


def test_every_change_once_in_seq_order(pop: Store) -> None:
    ids = _history(pop)
    events = list(export_events(pop))
    assert all(list(e) == FIELDS for e in events)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    bulk = [e for e in events if e["seq"] == events[0]["seq"]]
    # The bulk entry: one line per contact, same seq, in pk (= insertion) order.
    assert [e["contact_id"] for e in bulk] == [f"c{i:04d}" for i in range(0, 40, 4)]
    assert {(e["persona"], e["change"], e["source"], e["request_id"]) for e in bulk} == {
        ("emea", "enter", "adhoc", ids["first"])
    }
    assert bulk[0]["at"].endswith("Z") and bulk[0]["criterion"] is None
    manual = [e for e in events if e["source"] == "manual"]
    assert [(e["persona"], e["contact_id"], e["change"]) for e in manual] == [
        ("cio", "c0003", "enter"),
        ("emea", "c0008", "exit"),
    ]
    crit = [e for e in events if e["criterion"] is not None]
    assert {e["criterion"] for e in crit} == {"cios@1"}
    assert {e["request_id"] for e in crit} == {ids["crit"]}
    assert len(crit) == 8  # job_title "CIO": every 5th contact (c0003 is not one)
    exits = [e for e in events if e["change"] == "exit" and e["source"] == "adhoc"]
    # EMEA members (every 4th) with seniority (i % 10) < 5.
    assert [e["contact_id"] for e in exits] == [f"c{i:04d}" for i in (0, 4, 12, 20, 24, 32)]
    log = pop.tables.membership_log
    with pop.read() as conn:
        entries = conn.scalar(select(log.c.seq).order_by(log.c.seq.desc()).limit(1))
    assert events[-1]["seq"] == entries


@pytest.mark.parametrize("page", [1, 2, 5])
def test_paging_with_since_and_limit_has_no_gaps_or_repeats(pop: Store, page: int) -> None:
    _history(pop)
    full = list(export_events(pop))
    got: list[dict[str, object]] = []
    since = 0
    while True:
        progress = ExportProgress()
        chunk = list(export_events(pop, since=since, limit=page, progress=progress))
        if not chunk:
            assert progress.last_seq is None
            break
        assert progress.entries <= page and progress.last_seq == chunk[-1]["seq"]
        got += chunk
        since = int(progress.last_seq or 0)
    assert got == full


def test_until_persona_and_lines(pop: Store) -> None:
    _history(pop)
    full = list(export_events(pop))
    middle = full[len(full) // 2]["seq"]
    assert list(export_events(pop, until=middle)) == [e for e in full if e["seq"] <= middle]
    assert list(export_events(pop, since=middle)) == [e for e in full if e["seq"] > middle]
    cio = list(export_events(pop, persona="cio"))
    assert cio == [e for e in full if e["persona"] == "cio"]
    lines = list(export_lines(pop, persona="cio"))
    assert [json.loads(line) for line in lines] == cio
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)


def test_bad_arguments_fail_before_streaming(pop: Store) -> None:
    with pytest.raises(NotFoundError, match="unknown persona 'ghost'"):
        export_lines(pop, persona="ghost")
    with pytest.raises(InputError, match="limit"):
        export_events(pop, limit=0)
    with pytest.raises(InputError, match="since"):
        export_events(pop, since=-1)
    assert list(export_events(pop)) == []


@pytest.fixture
def pg_pop(pg_template: str) -> Iterator[Store]:
    """A populated PostgreSQL store only: SQLite has one writer at a time, so its
    seqs always become visible in order and there is nothing to hold back."""
    url = new_pg_url(pg_template)
    store = open_store(url)
    add_contacts(store, population(40))
    add_persona(store, "emea", name="EMEA readers", category="region")
    add_persona(store, "cio", name="CIO", category="job title")
    yield store
    store.dispose()
    drop_pg(url)


def test_a_change_still_committing_holds_back_later_ones(pg_pop: Store) -> None:
    """PostgreSQL hands out seqs at insert and shows them at commit: a reader
    must not move past a seq whose transaction is still open."""
    pop = pg_pop
    pin(pop, "emea", "c0001", PinKind.IN)
    before = settled_seq(pop)
    horizon = Horizon(pop)
    assert horizon.current() == before
    t = pop.tables
    with pop.engine.connect() as slow:
        tx = slow.begin()
        ctx = LogContext(NOW, 1, SOURCE_MANUAL, None, None, "slow", None)
        # Like every writer: something else first, then the log (pk 4: c0003).
        with outside_writes():  # a writer's first statement, held open
            slow.execute(
                t.pins.insert().values(persona_pk=1, contact_pk=4, kind="in", created_at=NOW)
            )
        log_one(slow, pop, ctx, "enter", 4)  # takes seq before+1, not committed
        pin(pop, "cio", "c0002", PinKind.IN)  # seq before+2, committed
        assert horizon.current() == before
        # A one-shot reader knows no earlier observation: it waits, then stays safe.
        assert settled_seq(pop, wait_s=0.1) <= before
        assert list(export_events(pop, since=before, settle_wait_s=0.1)) == []
        tx.commit()
    assert horizon.current() == before + 2
    later = list(export_events(pop, since=before))
    assert [(e["seq"], e["persona"], e["contact_id"]) for e in later] == [
        (before + 1, "emea", "c0003"),
        (before + 2, "cio", "c0002"),
    ]
