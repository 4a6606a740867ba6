"""Events stamped in the step's future, and several events at one instant."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from personatag.config import Settings
from personatag.contacts import add_events
from personatag.criteria import compile_criterion
from personatag.criteria.to_python import EvalInput
from personatag.definitions.criteria import add_criterion
from personatag.definitions.personas import add_persona
from personatag.domain import Catalog, utcnow
from personatag.engines.flink import codec
from personatag.engines.flink.programs.stream_job import (
    _DictState,
    absorb_rule,
    compile_generation,
    evaluate_work,
)
from personatag.engines.local.stream.evaluate import evaluate_set
from personatag.engines.local.stream.processor import StreamProcessor
from personatag.store import Store
from tests.helpers import add_contacts
from tests.stream.test_processor import SETTINGS, members

READS3 = "count(read, 30d) >= 3"
ENERGY3 = 'count(read where sector = "Energy", 30d) >= 3'


def _setup(store: Store) -> None:
    add_contacts(store, [{"id": "x1", "region": "EMEA"}, {"id": "x2", "region": "AMER"}])
    add_persona(store, "r3", name="r3", category="test")
    with store.write() as conn:
        conn.execute(
            store.tables.publications.insert(),
            [{"id": f"p{i}", "title": f"Report {i}", "sector": "Energy"} for i in range(3)],
        )


@pytest.mark.parametrize("set_based", [False, True], ids=["per-contact", "set-based"])
def test_reads_stamped_after_the_steps_as_of_are_counted_when_their_time_comes(
    store: Store, set_based: bool
) -> None:
    """Issue 17 item 2: three reads stamped 8 s after the step's as_of (a clock
    ahead, or a read stamped before its transaction committed) were skipped by
    the step that consumed them, and a non-member of `count(read, 30d) >= 3`
    got no re-check: the contact never entered until reconciliation. A
    future-stamped event now schedules a re-check at its moment."""
    _setup(store)
    add_criterion(store, "r3", persona="r3", expr=READS3, mode="ongoing", exit_policy="remove")
    settings = Settings(stream_reconcile_s=0, stream_set_based_contacts=1 if set_based else 20_000)
    p = StreamProcessor(store, settings)
    p.catch_up()
    t0 = utcnow()
    ahead = t0 + timedelta(seconds=8)
    add_events(store, "x1", reads=[(f"p{i}", ahead) for i in range(3)])
    add_events(store, "x2", reads=[("p0", t0 - timedelta(days=1))])  # two contacts: set-based
    assert p.step(now=t0).changes == 2
    assert members(store, "r3") == set()  # not yet: as of t0 they are in the future
    p.step(now=t0 + timedelta(seconds=1))  # set-based: the per-contact re-check
    assert members(store, "r3") == set()
    p.step(now=ahead)
    assert members(store, "r3") == {"x1"}
    crit = p.criteria().criteria[0]
    assert p.reconcile(crit, repair=False, now=ahead)["missing"] == 0


def test_a_criterion_swapped_in_rechecks_contacts_with_future_stamped_events(
    store: Store,
) -> None:
    """Issue 17 item 2 (the same family): a criterion backfilled while a
    contact's reads lay in the future re-checked only its members, so the
    contact never entered when the reads' time came."""
    _setup(store)
    p = StreamProcessor(store, SETTINGS)
    t0 = utcnow()
    ahead = t0 + timedelta(seconds=8)
    add_events(store, "x1", reads=[(f"p{i}", ahead) for i in range(3)])
    p.step(now=t0)
    add_criterion(store, "r3", persona="r3", expr=READS3, mode="ongoing", exit_policy="remove")
    p.catch_up()
    assert members(store, "r3") == set()
    p.step(now=ahead)
    p.step(now=ahead)
    assert members(store, "r3") == {"x1"}


@pytest.mark.parametrize("set_based", [False, True], ids=["per-contact", "set-based"])
def test_three_reads_at_one_instant_count_three_in_the_stream_and_sql(
    store: Store, set_based: bool
) -> None:
    """Issue 17 item 3: three reads of different publications stamped at the
    same instant must count three in the stream's evaluator (per contact and
    set-based), in its window re-check times and in SQL, for criteria sharing
    one count as for one alone."""
    _setup(store)
    add_criterion(store, "r3", persona="r3", expr=READS3, mode="ongoing", exit_policy="remove")
    add_persona(store, "e3", name="e3", category="test")
    add_criterion(store, "e3", persona="e3", expr=ENERGY3, mode="ongoing", exit_policy="remove")
    settings = Settings(stream_reconcile_s=0, stream_set_based_contacts=1 if set_based else 20_000)
    p = StreamProcessor(store, settings)
    p.catch_up()
    t0 = utcnow()
    at = t0 - timedelta(days=1)
    add_events(store, "x1", reads=[(f"p{i}", at) for i in range(3)])
    add_events(store, "x2", reads=[("p0", at)])  # two contacts: set-based
    p.step(now=t0)
    p.step(now=t0)
    assert members(store, "r3") == members(store, "e3") == {"x1"}
    with store.read() as conn:
        catalog = store.catalog(conn)
        for crit in p.criteria().criteria:
            assert evaluate_set(conn, store, crit, catalog, t0).tolist() == [1]
    # They leave the window together, 30 days on: one re-check, then out.
    rc = store.tables.stream_rechecks
    with store.read() as conn:
        due = {r.due_at for r in conn.execute(rc.select())}
    assert due == {at + timedelta(days=30)}  # x2 is no member: only x1's
    p.step(now=at + timedelta(days=30))
    assert members(store, "r3") == members(store, "e3") == set()


def test_three_reads_at_one_instant_count_three_in_the_flink_job() -> None:
    """Issue 17 item 3: the Flink stream job evaluates what the engine sends it
    (reads as publication index and microseconds); three reads of different
    publications at one instant, and of one publication listed three times,
    count three there too."""
    cat = Catalog.standard()
    rules = [
        codec.Rule(
            pk, f"r{pk}", 1, pk, f"p{pk}", "remove", "active", compile_criterion(e, cat).json
        )
        for pk, e in ((1, READS3), (2, ENERGY3), (3, "count(read, 30d) >= 4"))
    ]
    state = _DictState()
    for line in codec.rules_lines(1, cat, rules):
        absorb_rule(state, line)
    compiled = compile_generation(state, 1)
    as_of = utcnow()
    at = as_of - timedelta(days=1)
    pubs = [{"id": f"p{i}", "sector": "Energy"} for i in range(3)]
    inp = EvalInput(contact={}, reads=[(pub, at) for pub in pubs], as_of=as_of)
    line = codec.work_line("1-a-1", 1, 7, [1, 2, 3], inp)
    got = [codec.parse_result(json.loads(x)) for x in evaluate_work(line, 1, compiled)]
    assert [(r.criterion, r.match, r.error) for r in got] == [
        (1, True, None),
        (2, True, None),
        (3, False, None),
    ]
    assert got[0].due == at + timedelta(days=30)


def test_set_based_rechecks_come_back_per_contact_and_the_stream_goes_idle(store: Store) -> None:
    """A set-based batch schedules its window members a re-check at once (for
    their exact next moment); when those re-checks outnumbered
    PERSONATAG_STREAM_SET_BASED_CONTACTS they were evaluated set-based again,
    which scheduled them again: the stream never went idle."""
    _setup(store)
    add_criterion(store, "r3", persona="r3", expr=READS3, mode="ongoing", exit_policy="remove")
    p = StreamProcessor(store, Settings(stream_reconcile_s=0, stream_set_based_contacts=1))
    p.catch_up()
    at = utcnow() - timedelta(days=1)
    for cid in ("x1", "x2"):
        add_events(store, cid, reads=[(f"p{i}", at) for i in range(3)])
    p.catch_up(timeout_s=20)
    assert members(store, "r3") == {"x1", "x2"}
    rc = store.tables.stream_rechecks
    with store.read() as conn:
        assert {r.due_at for r in conn.execute(rc.select())} == {at + timedelta(days=30)}
