"""Personas moved outside the stream (pins, ad hoc requests, a retired criterion)
carried through the persona(...) criteria reading them at the next step
(SQLite and PostgreSQL)."""

from __future__ import annotations

from personatag.domain import Action, PinKind
from personatag.engines.local.stream.processor import StreamProcessor
from personatag.memberships.pins import pin, unpin
from personatag.memberships.retire import set_ongoing_status
from personatag.store import Store, changefeed
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from tests.helpers import add_contacts
from tests.stream.test_cascade import _two_levels
from tests.stream.test_processor import SETTINGS, members


def _setup(store: Store) -> StreamProcessor:
    """oc1 (EMEA, seniority >= 5) -> s0; oc4 (persona("s0"), seniority < 8) -> s3;
    oc5 (persona("s3") or persona("s0")) -> s5. y holds all three, z none."""
    add_contacts(
        store,
        [
            {"id": "y", "region": "EMEA", "seniority": 6},
            {"id": "z", "region": "AMER", "seniority": 4},
        ],
    )
    p = _two_levels(store)
    assert members(store, "s0") == {"x1", "y"}
    assert members(store, "s3") == {"y"}
    assert members(store, "s5") == {"x1", "y"}
    return p


def _settled(p: StreamProcessor) -> None:
    """One step, then no drift anywhere (nothing left for reconciliation)."""
    p.step()
    for crit in p.criteria().criteria:
        drift = p.reconcile(crit, repair=False)
        assert (drift["missing"], drift["extra"]) == (0, 0), crit.label


def _tag(store: Store, action: Action, ids: list[str]) -> None:
    run_adhoc(store, AdhocRequest(persona="s0", action=action, contact_ids=ids), SETTINGS)


def test_a_pin_out_moves_the_persona_criteria_reading_it(store: Store) -> None:
    """Issue 17 item 1 family: a pin-out of a persona read by persona(...)
    criteria removed it without a change in the feed, so the criteria reading it
    were never evaluated for the contact (y kept s3 and s5 until reconciliation);
    the next step now takes them away."""
    p = _setup(store)
    pin(store, "s0", "y", PinKind.OUT)
    _settled(p)
    assert members(store, "s0") == {"x1"}
    assert members(store, "s3") == set()
    assert members(store, "s5") == {"x1"}


def test_a_pin_in_moves_the_persona_criteria_reading_it(store: Store) -> None:
    """Issue 17 item 1 family: a pin-in of a persona read by persona(...)
    criteria gave it without a change in the feed, so z never entered s3 and s5
    until reconciliation; the next step now tags them."""
    p = _setup(store)
    pin(store, "s0", "z", PinKind.IN)
    _settled(p)
    assert members(store, "s0") == {"x1", "y", "z"}
    assert members(store, "s3") == {"y", "z"}
    assert members(store, "s5") == {"x1", "y", "z"}


def test_an_adhoc_tag_moves_the_persona_criteria_reading_it(store: Store) -> None:
    """Issue 17 item 1 family: an ad hoc tag of a persona read by persona(...)
    criteria did not make the tagged contacts enter them at the next step."""
    p = _setup(store)
    _tag(store, Action.TAG, ["z"])
    _settled(p)
    assert members(store, "s3") == {"y", "z"}
    assert members(store, "s5") == {"x1", "y", "z"}


def test_an_adhoc_untag_moves_the_persona_criteria_reading_it(store: Store) -> None:
    """Issue 17 item 1 family: an ad hoc untag of a persona read by persona(...)
    criteria left the contacts in the personas those criteria give."""
    p = _setup(store)
    _tag(store, Action.TAG, ["z"])
    p.catch_up()
    assert members(store, "s3") == {"y", "z"}
    _tag(store, Action.UNTAG, ["z"])
    _settled(p)
    assert members(store, "s0") == {"x1", "y"}
    assert members(store, "s3") == {"y"}
    assert members(store, "s5") == {"x1", "y"}


def test_a_bulk_adhoc_tag_is_one_change_in_the_feed(store: Store) -> None:
    """Issue 17 item 1 family: a tag above the bulk log threshold moves the
    persona for every contact it tags through one compact feed row (not a row
    per contact and criterion), and the next step carries it through."""
    p = _setup(store)
    add_contacts(store, [{"id": f"b{i}", "region": "AMER", "seniority": 2} for i in range(30)])
    with store.read() as conn:
        before = changefeed.head(conn, store)
    run_adhoc(
        store,
        AdhocRequest(persona="s0", action=Action.TAG, expr='region = "AMER"'),
        SETTINGS.model_copy(update={"bulk_log_threshold": 10}),
    )
    with store.read() as conn:
        rows = changefeed.read(conn, store, before, 100)
    assert [(ch.kind, len(ch.pks), ch.fields) for ch in rows] == [
        (changefeed.KIND_PERSONA, 31, frozenset({"s0"}))
    ]
    _settled(p)
    assert len(members(store, "s3")) == 32


def test_a_retired_criterion_moves_the_persona_criteria_reading_it(store: Store) -> None:
    """Issue 17 item 1 family: retiring oc1 removed s0 without a change in the
    feed, so y kept s3 (from persona("s0")) until reconciliation."""
    p = _setup(store)
    set_ongoing_status(store, "oc1", "retire")
    _settled(p)
    assert members(store, "s0") == set()
    assert members(store, "s3") == set()
    assert members(store, "s5") == set()


def test_lifting_a_pin_out_lets_the_criteria_tagging_it_in_again(store: Store) -> None:
    """Issue 17 item 1 family: after unpinning (or pinning in) a pinned-out
    contact, a full evaluation tags it through the criteria it matches; the
    stream did not evaluate them until the contact changed."""
    p = _setup(store)
    pin(store, "s0", "y", PinKind.OUT)
    p.catch_up()
    unpin(store, "s0", "y")
    _settled(p)
    assert members(store, "s0") == {"x1", "y"}
    assert members(store, "s3") == {"y"}
    pin(store, "s0", "y", PinKind.OUT)
    p.catch_up()
    pin(store, "s0", "y", PinKind.IN)
    _settled(p)
    assert members(store, "s3") == {"y"}


def test_moves_of_a_persona_nothing_reads_write_nothing_to_the_feed(store: Store) -> None:
    """Only a live ongoing criterion reading the persona costs a feed row."""
    _setup(store)
    with store.read() as conn:
        before = changefeed.head(conn, store)
    pin(store, "s5", "z", PinKind.IN)
    pin(store, "s5", "y", PinKind.OUT)
    unpin(store, "s5", "z")
    with store.read() as conn:
        assert changefeed.head(conn, store) == before
