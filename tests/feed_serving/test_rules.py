"""Content rules in the store: checked with positions, one cap, audit-logged."""

from __future__ import annotations

from datetime import timedelta

import pytest

from personatag.audit_log import list_events
from personatag.criteria import CriteriaError
from personatag.domain import utcnow
from personatag.errors import ConflictError, InputError, NotFoundError
from personatag.recommend.rules import add_rule, list_rules, remove_rule, rules_for_model
from personatag.store import Store
from tests.feed_serving.conftest import build_world


@pytest.mark.parametrize(
    ("expr", "line", "col", "message"),
    [
        ('sectr = "Energy"', 1, 1, "unknown field 'sectr' (did you mean 'sector'?)"),
        ('sector = "Energy" and\n  regoin = "EMEA"', 2, 3, "unknown field 'regoin'"),
        ('region = "EMEA" and count(read, 7d) > 1', 1, 21, "count(...) cannot be used"),
        ('job_title = "CIO"', 1, 1, "unknown field 'job_title'"),
        ("sector = ", 1, 10, ""),
    ],
)
def test_expressions_are_checked_with_positions(
    store: Store, expr: str, line: int, col: int, message: str
) -> None:
    build_world(store)
    with pytest.raises(CriteriaError) as caught:
        add_rule(store, "treas", "boost", expr=expr, weight=1.0)
    assert (caught.value.line, caught.value.col) == (line, col)
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"line {line}, col {col}: ")
    assert list_rules(store) == []


def test_kinds_take_their_own_fields(store: Store) -> None:
    build_world(store)
    bad = [
        (("boost",), {"expr": 'sector = "Energy"'}, "needs a weight"),
        (("boost",), {"expr": 'sector = "Energy"', "weight": 0.0}, "non-zero"),
        (("filter",), {"expr": 'sector = "Energy"', "weight": 1.0}, "takes no weight"),
        (("pin",), {"publication": "nope"}, "unknown publication 'nope'"),
        (("pin",), {"publication": "p01", "expires_at": utcnow()}, "in the past"),
        (("cap",), {"cap": 0}, "at least 1"),
        (("nudge",), {}, "unknown rule kind 'nudge'"),
    ]
    for (kind,), values, message in bad:
        with pytest.raises(InputError, match=message):
            add_rule(store, "treas", kind, **values)  # type: ignore[arg-type]
    with pytest.raises(NotFoundError, match="unknown persona 'ghost'"):
        add_rule(store, "ghost", "cap", cap=2)
    add_rule(store, "treas", "cap", cap=2)
    with pytest.raises(ConflictError, match="already has a cap"):
        add_rule(store, "treas", "cap", cap=3)


def test_add_list_remove_and_audit(store: Store) -> None:
    build_world(store)
    boost = add_rule(
        store, "treas", "boost", expr='sector="Energy"', weight=1.5, actor="erin", source="api"
    )
    expires = utcnow() + timedelta(days=1)
    pin = add_rule(store, "energy", "pin", publication="p03", expires_at=expires, actor="erin")
    assert boost.expr == 'sector = "Energy"'  # stored canonical
    assert pin.to_json()["publication"] == "p03"
    assert [r.id for r in list_rules(store)] == [pin.id, boost.id]  # by persona key
    assert [r.id for r in list_rules(store, "treas")] == [boost.id]
    rules = rules_for_model(store, utcnow())
    assert rules["treas"].persona_name == "Corporate Treasurers"
    assert [w for _, w in rules["treas"].boosts] == [1.5]
    assert rules["energy"].pins[0][1] == expires
    assert rules_for_model(store, utcnow(), pins_at=expires)["energy"].pins == ()
    removed = remove_rule(store, boost.id, actor="erin")
    assert removed.id == boost.id
    with pytest.raises(NotFoundError, match=f"no feed rule {boost.id}"):
        remove_rule(store, boost.id)
    with pytest.raises(NotFoundError):
        remove_rule(store, pin.id, persona="treas")  # another persona's rule
    events = list_events(store, action="feed_rule.*")
    assert [(e["action"], e["target"], e["actor"]) for e in events][:3] == [
        ("feed_rule.remove", "treas", "erin"),
        ("feed_rule.add", "energy", "erin"),
        ("feed_rule.add", "treas", "erin"),
    ]


def test_predicates_see_publication_fields(store: Store) -> None:
    from personatag.recommend.rules import predicate

    now = utcnow()
    fresh = predicate('sector = "Energy" and published_at within 1d', now)
    assert fresh({"sector": "Energy", "published_at": now - timedelta(hours=2)})
    assert not fresh({"sector": "Energy", "published_at": now - timedelta(days=2)})
    assert not fresh({"sector": None})  # UNKNOWN is not a match
    compiled = predicate('sector = "Energy"', now)
    assert predicate('sector = "Energy"', now) is compiled  # compiled once, then reused
