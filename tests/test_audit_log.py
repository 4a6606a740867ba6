"""The audit log on SQLite and PostgreSQL: recording, transactions, filters, paging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from personatag import audit_log
from personatag.audit_log import list_events, record, record_now
from personatag.errors import InputError
from personatag.store import Store

T0 = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def events(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """Seven events a minute apart from T0."""
    times = iter(T0 + timedelta(minutes=i) for i in range(100))
    monkeypatch.setattr(audit_log, "utcnow", lambda: next(times))
    for actor, action, target, source in [
        ("alice", "user.create", "bob", "cli"),
        ("alice", "user.role", "bob", "web"),
        ("bob", "persona.add", "emea", "web"),
        ("bob", "pin.add", "emea", "api"),
        (None, "login.fail", "mallory", "web"),
        ("alice", "token.create", "bob", "cli"),
        ("bob", "login.ok", "bob", "web"),
    ]:
        record_now(store, actor=actor, action=action, target=target, source=source)
    return store


def test_shape_and_order(events: Store) -> None:
    got = list_events(events)
    assert [e["seq"] for e in got] == sorted((e["seq"] for e in got), reverse=True)
    assert len(got) == 7
    assert got[0] == {
        "seq": got[0]["seq"],
        "at": "2026-06-30T12:06:00Z",
        "actor": "bob",
        "action": "login.ok",
        "target": "bob",
        "detail": None,
        "source": "web",
    }
    assert got[-1]["action"] == "user.create"


def test_filters(events: Store) -> None:
    def actions(**kw: object) -> list[str]:
        return [e["action"] for e in list_events(events, **kw)]  # type: ignore[arg-type]

    assert actions(actor="alice") == ["token.create", "user.role", "user.create"]
    assert actions(action="login.ok") == ["login.ok"]
    assert actions(action="user.*") == ["user.role", "user.create"]
    assert actions(action="login.*") == ["login.ok", "login.fail"]
    assert actions(action="user") == []
    assert actions(target="emea") == ["pin.add", "persona.add"]
    assert actions(actor="bob", target="bob") == ["login.ok"]
    assert actions(since=T0 + timedelta(minutes=5)) == ["login.ok", "token.create"]
    assert actions(until=T0 + timedelta(minutes=2)) == ["user.role", "user.create"]
    assert actions(since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=4)) == [
        "pin.add",
        "persona.add",
    ]
    assert actions(actor="nobody") == []


def test_paging(events: Store) -> None:
    page1 = list_events(events, limit=3)
    page2 = list_events(events, limit=3, before_seq=page1[-1]["seq"])
    page3 = list_events(events, limit=3, before_seq=page2[-1]["seq"])
    seqs = [e["seq"] for e in page1 + page2 + page3]
    assert len(seqs) == 7 == len(set(seqs))
    assert [len(p) for p in (page1, page2, page3)] == [3, 3, 1]
    for bad in (0, -1, 1001):
        with pytest.raises(InputError, match="limit"):
            list_events(events, limit=bad)


def test_record_commits_with_the_transaction(store: Store) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.write() as conn:
        record(conn, store, actor="a", action="persona.add", target="x")
        raise Boom
    assert list_events(store) == []
    with store.write() as conn:
        record(
            conn,
            store,
            actor="a",
            action="request.submit",
            target="req-1",
            detail={"at": T0, "n": 3, "items": ["x", "ü"], "nested": {"ok": True}},
            source="api",
        )
    (e,) = list_events(store)
    assert e["detail"] == {
        "at": "2026-06-30T12:00:00Z",
        "n": 3,
        "items": ["x", "ü"],
        "nested": {"ok": True},
    }
    assert (e["source"], e["target"]) == ("api", "req-1")


def test_bad_events_are_refused(store: Store) -> None:
    with pytest.raises(InputError, match="unknown audit source 'mail'"):
        record_now(store, actor="a", action="x.y", target=None, source="mail")
    with pytest.raises(InputError, match="action"):
        record_now(store, actor="a", action="", target=None)
    assert list_events(store) == []


def test_action_prefix_is_literal(store: Store) -> None:
    record_now(store, actor="a", action="user_x.create", target=None)
    record_now(store, actor="a", action="userAx.create", target=None)
    assert [e["action"] for e in list_events(store, action="user_x.*")] == ["user_x.create"]


def test_exclude_actions(events: Store) -> None:
    got = list_events(events, exclude_actions=("login.*", "token.create"))
    assert [e["action"] for e in got] == ["pin.add", "persona.add", "user.role", "user.create"]
    got = list_events(events, actor="bob", exclude_actions=("login.*",))
    assert [e["action"] for e in got] == ["pin.add", "persona.add"]
