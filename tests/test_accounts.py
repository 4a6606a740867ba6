"""Accounts: users and roles, passwords, API tokens, web sessions — on SQLite and
PostgreSQL — and the `user`/`token`/`audit` commands as a user runs them."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from personatag import accounts, audit_log
from personatag.accounts import (
    ROLES,
    authenticate,
    check_password_policy,
    create_session,
    create_token,
    create_user,
    disable_user,
    enable_user,
    end_session,
    ensure_first_admin,
    get_user,
    hash_password,
    list_tokens,
    list_users,
    revoke_token,
    role_at_least,
    session_user,
    set_password,
    set_role,
    verify_password,
    verify_token,
)
from personatag.audit_log import list_events
from personatag.errors import ConflictError, InputError, NotFoundError
from personatag.store import Store, open_store

PW = "Correct-horse-42"
PW2 = "Battery-staple-43"


class Clock:
    """A settable clock for accounts and the audit log."""

    def __init__(self) -> None:
        self.now = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(accounts, "utcnow", c)
    monkeypatch.setattr(audit_log, "utcnow", c)
    return c


# -- roles and passwords (no store) ------------------------------------------


def test_role_order() -> None:
    assert ROLES == ("viewer", "editor", "admin")
    assert role_at_least("admin", "viewer") and role_at_least("editor", "editor")
    assert not role_at_least("viewer", "editor") and not role_at_least("editor", "admin")
    assert not role_at_least("root", "viewer") and not role_at_least("admin", "root")


def test_hash_format_and_verify() -> None:
    h = hash_password(PW)
    m = re.fullmatch(r"\$argon2id\$v=19\$m=19456,t=2,p=1\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)", h)
    assert m is not None
    assert len(base64.b64decode(m.group(1) + "==")) == 16
    assert verify_password(PW, h)
    assert not verify_password(PW + "x", h)
    assert not verify_password("", h)
    assert not accounts.password_needs_rehash(h)
    assert hash_password(PW) != h  # a fresh salt each time
    parts = h.split("$")  # "", "argon2id", "v=19", "m=...,t=...,p=...", salt, hash
    flip = {"A": "B"}.get(parts[5][0], "A")
    tampered = [
        "$".join([*parts[:5], flip + parts[5][1:]]),  # the hash
        "$".join([*parts[:4], ("A" if parts[4][0] != "A" else "B") + parts[4][1:], parts[5]]),
        "$".join([*parts[:3], "m=19456,t=1,p=1", *parts[4:]]),  # weaker parameters
        "$".join([*parts[:3], "m=19456,t=2,p=2", *parts[4:]]),
        "$".join(["", "argon2i", *parts[2:]]),
        "$".join(["", "bcrypt", *parts[2:]]),
        "$".join([*parts[:4], parts[4][:8], parts[5]]),  # a short salt
        "$".join([*parts[:5], parts[5][:20]]),  # a truncated hash
        h[:-4],
        h + "$x",
        "",
        "plain-text-password",
    ]
    for bad in tampered:
        assert not verify_password(PW, bad), bad
    # Absurd costs are refused, not computed (these would take hours or terabytes).
    t0 = time.perf_counter()
    for cost in ("m=19456,t=1000000,p=1", f"m={2**32 - 1},t=2,p=1", "m=19456,t=2,p=255"):
        assert not verify_password(PW, "$".join([*parts[:3], cost, *parts[4:]])), cost
    assert time.perf_counter() - t0 < 1


def _scrypt_hash(password: str) -> str:
    """A hash as written before Argon2 (`scrypt$N$r$p$SALT$HASH`)."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=16384, r=8, p=1, dklen=32)
    b64 = base64.b64encode
    return f"scrypt$16384$8$1${b64(salt).decode()}${b64(digest).decode()}"


def test_old_scrypt_hashes_still_verify() -> None:
    h = _scrypt_hash(PW)
    assert verify_password(PW, h)
    assert not verify_password(PW + "x", h)
    assert not verify_password("", h)
    assert accounts.password_needs_rehash(h)
    parts = h.split("$")
    flip = {"A": "B"}.get(parts[5][0], "A")
    tampered = [
        "$".join([*parts[:5], flip + parts[5][1:]]),  # the hash
        "$".join([*parts[:4], ("A" if parts[4][0] != "A" else "B") + parts[4][1:], parts[5]]),
        "$".join([parts[0], "8192", *parts[2:]]),  # weaker parameters
        "$".join([parts[0], "16384", "8", "2", *parts[4:]]),
        "$".join(["bcrypt", *parts[1:]]),
        "$".join([parts[0], str(2**30), *parts[2:]]),  # absurd cost: refused, not computed
        "$".join([parts[0], "1000", *parts[2:]]),  # not a power of two
        h[:-4],
        h + "$x",
    ]
    for bad in tampered:
        assert not verify_password(PW, bad), bad


def test_an_old_scrypt_hash_is_rehashed_at_the_next_login(store: Store) -> None:
    create_user(store, "alice", PW, "editor", actor="root")
    u = store.tables.users

    def stored() -> str:
        with store.read() as conn:
            value = conn.scalar(select(u.c.password_hash).where(u.c.username == "alice"))
        assert isinstance(value, str)
        return value

    old = _scrypt_hash(PW)
    with store.write() as conn:
        conn.execute(u.update().where(u.c.username == "alice").values(password_hash=old))
        changed_at = conn.scalar(select(u.c.password_changed_at).where(u.c.username == "alice"))
    events = len(list_events(store))
    assert authenticate(store, "alice", PW2) is None
    assert stored() == old  # a wrong password changes nothing
    user = authenticate(store, "alice", PW)
    assert user is not None and user.username == "alice"
    new = stored()
    assert new.startswith("$argon2id$") and not accounts.password_needs_rehash(new)
    assert authenticate(store, "alice", PW) is not None  # and again, from the new hash
    assert stored() == new  # a current hash is left as it is
    assert authenticate(store, "alice", PW2) is None
    with store.read() as conn:
        assert (
            conn.scalar(select(u.c.password_changed_at).where(u.c.username == "alice"))
            == changed_at
        )
    assert len(list_events(store)) == events  # not an account change: no audit entry


def test_a_disabled_user_keeps_the_old_hash(store: Store) -> None:
    create_user(store, "root", PW, "admin", actor=None)
    create_user(store, "bob", PW, "viewer", actor=None)
    u = store.tables.users
    old = _scrypt_hash(PW)
    with store.write() as conn:
        conn.execute(u.update().where(u.c.username == "bob").values(password_hash=old))
    disable_user(store, "bob", actor="root")
    assert authenticate(store, "bob", PW) is None
    with store.read() as conn:
        assert conn.scalar(select(u.c.password_hash).where(u.c.username == "bob")) == old


def test_password_policy() -> None:
    check_password_policy("abcdefghijk1")
    check_password_policy("correct horse battery")  # letters and spaces
    check_password_policy("Passwörter-sind-lang")
    with pytest.raises(InputError, match="at least 12"):
        check_password_policy("Short-1")
    with pytest.raises(InputError, match="at most 1024"):
        check_password_policy("aB" * 600)
    with pytest.raises(InputError, match="too simple"):
        check_password_policy("abcdefghijklmnop")
    with pytest.raises(InputError, match="too simple"):
        check_password_policy("123456789012345")
    with pytest.raises(InputError, match="control character"):
        check_password_policy("abcdefghijk1\n")
    for _ in range(50):
        check_password_policy(accounts.generate_password())


# -- users -------------------------------------------------------------------


def test_create_get_list_users(store: Store) -> None:
    alice = create_user(store, "Alice", PW, "editor", actor="root")
    assert (alice.username, alice.role, alice.disabled) == ("alice", "editor", False)
    assert alice.created_at.tzinfo is not None
    assert get_user(store, "ALICE") == alice
    with pytest.raises(ConflictError, match="already exists"):
        create_user(store, "aLiCe", PW, "viewer", actor="root")
    for bad_name in ("", "a b", "x" * 65, "bob!", "é", "\u212aelly", "İlker"):
        with pytest.raises(InputError, match="invalid user name"):
            create_user(store, bad_name, PW, "viewer", actor="root")
    with pytest.raises(InputError, match="unknown role 'root'"):
        create_user(store, "bob", PW, "root", actor="root")
    with pytest.raises(InputError, match="too short"):
        create_user(store, "bob", "short", "viewer", actor="root")
    create_user(store, "bob.smith_2-x", PW, "viewer", actor=None)
    assert [u.username for u in list_users(store)] == ["alice", "bob.smith_2-x"]
    with pytest.raises(NotFoundError, match="no user 'carol'"):
        get_user(store, "carol")
    ev = list_events(store, action="user.create")
    assert [(e["actor"], e["target"], e["detail"]) for e in ev] == [
        (None, "bob.smith_2-x", {"role": "viewer"}),
        ("root", "alice", {"role": "editor"}),
    ]
    u = store.tables.users
    with store.read() as conn:
        stored = conn.scalar(select(u.c.password_hash).where(u.c.username == "alice"))
    assert stored is not None and stored.startswith("$argon2id$") and PW not in stored


def test_authenticate(store: Store) -> None:
    create_user(store, "alice", PW, "editor", actor="root")
    create_user(store, "kalice", PW, "editor", actor="root")
    user = authenticate(store, "Alice", PW)
    assert user is not None and user.username == "alice"
    assert authenticate(store, "alice", PW2) is None
    assert authenticate(store, "alice", "") is None
    assert authenticate(store, "nobody", PW) is None
    assert authenticate(store, "not a name!", PW) is None
    assert authenticate(store, "\u212alice", PW) is None  # the Kelvin sign lower-cases to k
    assert authenticate(store, "alice", "x" * 5000) is None
    create_user(store, "root", PW, "admin", actor=None)
    disable_user(store, "alice", actor="root")
    assert authenticate(store, "alice", PW) is None


def test_authenticate_does_the_hash_work_for_everyone(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_user(store, "alice", PW, "admin", actor=None)
    create_user(store, "bob", PW, "viewer", actor=None)
    disable_user(store, "bob", actor=None)
    calls: list[str] = []
    real = accounts.verify_password

    def spy(password: str, stored: str) -> bool:
        calls.append(stored.split("$")[1])
        return real(password, stored)

    monkeypatch.setattr(accounts, "verify_password", spy)
    for name, pw in (("alice", PW), ("alice", PW2), ("nobody", PW), ("bob", PW), ("bad name", PW)):
        authenticate(store, name, pw)
    assert calls == ["argon2id"] * 5
    assert not accounts.password_needs_rehash(accounts._DUMMY_HASH)  # today's parameters


def test_roles_and_the_last_admin(store: Store) -> None:
    create_user(store, "alice", PW, "admin", actor=None)
    with pytest.raises(ConflictError, match="'alice' is the last active admin"):
        set_role(store, "alice", "editor", actor="alice")
    with pytest.raises(ConflictError, match="last active admin"):
        disable_user(store, "alice", actor="alice")
    create_user(store, "bob", PW, "viewer", actor="alice")
    assert set_role(store, "BOB", "admin", actor="alice").role == "admin"
    assert set_role(store, "alice", "viewer", actor="bob").role == "viewer"
    with pytest.raises(ConflictError, match="'bob' is the last active admin"):
        set_role(store, "bob", "editor", actor="bob")
    # A disabled admin is not an active one.
    set_role(store, "alice", "admin", actor="bob")
    disable_user(store, "alice", actor="bob")
    with pytest.raises(ConflictError, match="last active admin"):
        set_role(store, "bob", "viewer", actor="bob")
    # Demoting a disabled admin is fine; a no-op change records nothing.
    assert set_role(store, "alice", "viewer", actor="bob").role == "viewer"
    assert set_role(store, "bob", "admin", actor="bob").role == "admin"
    with pytest.raises(InputError, match="unknown role"):
        set_role(store, "bob", "owner", actor="bob")
    with pytest.raises(NotFoundError):
        set_role(store, "carol", "viewer", actor="bob")
    ev = list_events(store, action="user.role")
    assert [(e["target"], e["detail"]) for e in ev] == [
        ("alice", {"from": "admin", "to": "viewer"}),
        ("alice", {"from": "viewer", "to": "admin"}),
        ("alice", {"from": "admin", "to": "viewer"}),
        ("bob", {"from": "viewer", "to": "admin"}),
    ]


def test_concurrent_demotions_leave_an_admin(store_url: str) -> None:
    first = open_store(store_url)
    create_user(first, "alice", PW, "admin", actor=None)
    create_user(first, "bob", PW, "admin", actor=None)
    stores = [first, open_store(store_url)]
    outcomes = _race(
        [
            lambda: set_role(stores[0], "alice", "viewer", actor=None),
            lambda: set_role(stores[1], "bob", "viewer", actor=None),
        ]
    )
    try:
        assert sorted(type(o).__name__ for o in outcomes) == ["ConflictError", "User"]
        assert [u.role for u in list_users(first)].count("admin") == 1
    finally:
        for s in stores:
            s.dispose()


def test_set_password(store: Store) -> None:
    create_user(store, "alice", PW, "admin", actor=None)
    token, _ = create_token(store, "alice", "ci", actor=None)
    session, _ = create_session(store, get_user(store, "alice"))
    with pytest.raises(InputError, match="too simple"):
        set_password(store, "alice", "aaaaaaaaaaaaaaaa", actor="alice")
    set_password(store, "Alice", PW2, actor="alice")
    assert authenticate(store, "alice", PW) is None
    assert authenticate(store, "alice", PW2) is not None
    assert session_user(store, session) is None  # sessions end
    assert verify_token(store, token) is not None  # tokens stay
    with pytest.raises(NotFoundError):
        set_password(store, "carol", PW2, actor="alice")
    ev = list_events(store, action="user.password")
    assert [(e["actor"], e["target"], e["detail"]) for e in ev] == [("alice", "alice", None)]


def test_disable_and_enable(store: Store) -> None:
    create_user(store, "root", PW, "admin", actor=None)
    bob = create_user(store, "bob", PW, "editor", actor="root")
    t1, info1 = create_token(store, "bob", "one", actor="root")
    t2, _ = create_token(store, "bob", "two", actor="root")
    session, _ = create_session(store, bob)
    disabled = disable_user(store, "bob", actor="root")
    assert disabled.disabled and disabled.pk == bob.pk
    assert authenticate(store, "bob", PW) is None
    assert verify_token(store, t1) is None and verify_token(store, t2) is None
    assert all(t.revoked for t in list_tokens(store, "bob"))
    assert session_user(store, session) is None
    assert disable_user(store, "bob", actor="root").disabled  # idempotent
    with pytest.raises(ConflictError, match="disabled"):
        create_token(store, "bob", "three", actor="root")
    with pytest.raises(ConflictError, match="disabled"):
        create_session(store, bob)
    assert not enable_user(store, "bob", actor="root").disabled
    assert authenticate(store, "bob", PW) is not None
    assert verify_token(store, t1) is None  # revoked for good
    assert revoke_token(store, info1.id, actor="root").revoked
    ev = list_events(store, target="bob", action="user.*")
    assert [e["action"] for e in ev] == ["user.enable", "user.disable", "user.create"]
    assert ev[1]["detail"] == {"tokens_revoked": 2}


# -- API tokens --------------------------------------------------------------


def test_tokens(store: Store) -> None:
    create_user(store, "root", PW, "admin", actor=None)
    create_user(store, "bob", PW, "viewer", actor="root")
    token, info = create_token(store, "Bob", "  nightly export ", actor="root")
    assert re.fullmatch(r"pt_[A-Za-z0-9_-]{40}", token)
    assert (info.username, info.name, info.prefix) == ("bob", "nightly export", token[3:11])
    assert (info.revoked, info.expires_at, info.last_used_at) == (False, None, None)
    t = store.tables.api_tokens
    with store.read() as conn:
        row = conn.execute(select(t)).one()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in [str(v) for v in row]
    user = verify_token(store, token)
    assert user is not None and (user.username, user.role) == ("bob", "viewer")
    set_role(store, "bob", "editor", actor="root")
    assert verify_token(store, token).role == "editor"  # type: ignore[union-attr]
    for bad in ("", "pt_", token[:-1], token[:-1] + ("A" if token[-1] != "A" else "B"), "x" * 43):
        assert verify_token(store, bad) is None
    other, _ = create_token(store, "root", "admin ci", actor="root", expires_days=30)
    assert other != token
    assert [(i.username, i.name) for i in list_tokens(store)] == [
        ("bob", "nightly export"),
        ("root", "admin ci"),
    ]
    assert [i.id for i in list_tokens(store, "BOB")] == [info.id]
    with pytest.raises(NotFoundError):
        list_tokens(store, "carol")
    revoked = revoke_token(store, info.id, actor="root")
    assert revoked.revoked and revoked.id == info.id
    assert verify_token(store, token) is None
    assert verify_token(store, other) is not None
    assert revoke_token(store, info.id, actor="root").revoked  # idempotent
    with pytest.raises(NotFoundError, match="no token 999"):
        revoke_token(store, 999, actor="root")
    with pytest.raises(NotFoundError):
        create_token(store, "carol", "x", actor="root")
    for name in ("", "   ", "n" * 101):
        with pytest.raises(InputError, match="--name"):
            create_token(store, "bob", name, actor="root")
    for days in (0, -1, 3651):
        with pytest.raises(InputError, match="--expires-days"):
            create_token(store, "bob", "x", actor="root", expires_days=days)
    ev = list_events(store, action="token.*")
    assert [(e["action"], e["target"], e["detail"]["token_id"]) for e in ev] == [
        ("token.revoke", "bob", info.id),
        ("token.create", "root", info.id + 1),
        ("token.create", "bob", info.id),
    ]
    assert ev[1]["detail"]["expires_at"].endswith("Z")


def test_token_expiry_and_last_use(store: Store, clock: Clock) -> None:
    create_user(store, "bob", PW, "viewer", actor=None)
    token, info = create_token(store, "bob", "ci", actor=None, expires_days=1)
    assert info.expires_at == clock.now + timedelta(days=1)
    created = clock.now
    assert verify_token(store, token) is not None
    assert list_tokens(store)[0].last_used_at == created
    clock.advance(seconds=30)
    assert verify_token(store, token) is not None
    assert list_tokens(store)[0].last_used_at == created  # at most once a minute
    clock.advance(seconds=31)
    assert verify_token(store, token) is not None
    assert list_tokens(store)[0].last_used_at == created + timedelta(seconds=61)
    clock.now = created + timedelta(days=1) - timedelta(seconds=1)
    assert verify_token(store, token) is not None
    clock.advance(seconds=1)
    assert verify_token(store, token) is None
    assert not list_tokens(store)[0].revoked  # expired, not revoked


def test_checking_credentials_does_not_wait_for_a_long_writer(store_url: str) -> None:
    """A long tag holds SQLite's write lock; token and session checks still answer."""
    s1, s2 = open_store(store_url), open_store(store_url)
    try:
        alice = create_user(s1, "alice", PW, "admin", actor=None)
        token, _ = create_token(s1, "alice", "ci", actor=None)
        session, _ = create_session(s1, alice)
        s = s1.tables.web_sessions
        with s1.write() as conn:  # last seen two minutes ago: due for a slide
            conn.execute(s.update().values(last_seen_at=s.c.last_seen_at - 120_000_000))
            seen = conn.scalar(select(s.c.last_seen_at))
        with s1.write():  # BEGIN IMMEDIATE: SQLite's write lock is held
            started = time.monotonic()
            assert verify_token(s2, token) is not None
            assert session_user(s2, session) is not None
            assert time.monotonic() - started < 5
        used = list_tokens(s2)[0].last_used_at
        with s2.read() as conn:
            seen_now = conn.scalar(select(s.c.last_seen_at))
        # SQLite skipped the writes (the next use makes them); PostgreSQL locks rows.
        assert (used is None) == (s1.dialect == "sqlite")
        assert (seen_now == seen) == (s1.dialect == "sqlite")
        assert verify_token(s2, token) is not None
        assert list_tokens(s2)[0].last_used_at is not None
    finally:
        s1.dispose()
        s2.dispose()


# -- web sessions ------------------------------------------------------------


def test_sessions(store: Store, clock: Clock) -> None:
    alice = create_user(store, "alice", PW, "admin", actor=None)
    token, csrf = create_session(store, alice)
    token2, csrf2 = create_session(store, alice)
    assert token != token2 and csrf != csrf2 and len(token) >= 40 and len(csrf) >= 40
    got = session_user(store, token)
    assert got is not None and got[0].username == "alice" and got[1] == csrf
    s = store.tables.web_sessions
    with store.read() as conn:
        hashes = set(conn.scalars(select(s.c.token_hash)))
    assert hashlib.sha256(token.encode()).hexdigest() in hashes and token not in hashes
    assert session_user(store, "nope") is None and session_user(store, "") is None
    end_session(store, token)
    assert session_user(store, token) is None
    end_session(store, token)  # idempotent
    assert session_user(store, token2) is not None
    with pytest.raises(InputError, match="ttl"):
        create_session(store, alice, ttl_s=0)


def test_session_expiry_and_sliding(store: Store, clock: Clock) -> None:
    alice = create_user(store, "alice", PW, "admin", actor=None)
    idle, _ = create_session(store, alice, ttl_s=600)
    clock.advance(seconds=599)
    used, _ = create_session(store, alice, ttl_s=600)
    assert session_user(store, idle) is not None  # slides: expires 600 s from now
    clock.advance(seconds=599)
    assert session_user(store, idle) is not None
    assert session_user(store, used) is not None
    clock.advance(seconds=601)
    assert session_user(store, idle) is None
    assert session_user(store, used) is None
    # Expired sessions are cleaned up when the next one starts.
    create_session(store, alice)
    s = store.tables.web_sessions
    with store.read() as conn:
        assert len(conn.execute(select(s)).all()) == 1


def test_sessions_end_seven_days_after_login_however_used(store: Store, clock: Clock) -> None:
    alice = create_user(store, "alice", PW, "admin", actor=None)
    token, _ = create_session(store, alice, ttl_s=3600)
    start = clock.now
    while clock.now < start + timedelta(days=7) - timedelta(minutes=50):
        assert session_user(store, token) is not None, clock.now - start
        clock.advance(minutes=50)
    clock.now = start + timedelta(days=7)
    assert session_user(store, token) is None


# -- the first admin ---------------------------------------------------------


def test_ensure_first_admin(store: Store) -> None:
    first = ensure_first_admin(store)
    assert first is not None
    name, password = first
    assert name == "admin" and len(password) == 20
    user = authenticate(store, name, password)
    assert user is not None and user.role == "admin"
    assert ensure_first_admin(store) is None
    assert ensure_first_admin(store, username="other") is None
    assert [u.username for u in list_users(store)] == ["admin"]
    ev = list_events(store)
    assert [(e["action"], e["target"], e["detail"]) for e in ev] == [
        ("user.create", "admin", {"first_admin": True, "role": "admin"})
    ]
    assert ev[0]["actor"] == "system"  # never anonymous


def test_no_first_admin_once_anyone_exists(store: Store) -> None:
    create_user(store, "viewer1", PW, "viewer", actor=None)
    assert ensure_first_admin(store) is None


def _race(calls: list[Callable[[], Any]]) -> list[Any]:
    barrier = threading.Barrier(len(calls))
    outcomes: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = calls[i]()
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    return outcomes


@pytest.mark.parametrize("names", [("admin", "admin"), ("admin", "boss")])
def test_racing_first_admins_make_exactly_one(store_url: str, names: tuple[str, str]) -> None:
    stores = [open_store(store_url) for _ in names]  # separate engines, like processes
    try:
        outcomes = _race(
            [
                lambda s=s, n=n: ensure_first_admin(s, username=n)
                for s, n in zip(stores, names, strict=True)
            ]
        )
        winners = [o for o in outcomes if o is not None]
        assert len(winners) == 1, outcomes
        assert isinstance(winners[0], tuple)
        assert [u.username for u in list_users(stores[0])] == [winners[0][0]]
    finally:
        for s in stores:
            s.dispose()


# -- the command line --------------------------------------------------------


class CLI:
    def __init__(self, data_dir: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")} | {
            "PERSONATAG_DATA_DIR": str(data_dir),
            "PERSONATAG_ACTOR": "tester",
        }

    def __call__(
        self, *args: str, ok: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "personatag.cli", *args],
            capture_output=True,
            text=True,
            env=self.env,
            input=stdin if stdin is not None else "",
            check=False,
            timeout=120,
        )
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc

    def json(self, *args: str, stdin: str | None = None) -> Any:
        return json.loads(self(*args, stdin=stdin).stdout)

    def error(self, *args: str, stdin: str | None = None) -> str:
        proc = self(*args, ok=False, stdin=stdin)
        assert proc.returncode == 1, proc
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        return lines[0]


def test_cli(tmp_path: Path) -> None:
    cli = CLI(tmp_path)
    cli("init")
    alice = cli.json("user", "add", "Alice", "--role", "admin", "--json")
    assert set(alice) == {
        "username", "role", "created_at", "disabled", "password", "last_login_at"
    }  # fmt: skip
    assert alice["last_login_at"] is None
    assert (alice["username"], alice["role"], alice["disabled"]) == ("alice", "admin", False)
    assert alice["created_at"].endswith("Z") and len(alice["password"]) == 20
    bob = cli.json("user", "add", "bob", "--role", "editor", "--password-stdin", "--json", stdin=PW)
    assert bob["password"] is None
    text = cli("user", "add", "carol", "--role", "viewer").stdout.splitlines()
    assert text[0] == "user carol (viewer) created" and text[1].startswith(
        "password (shown once): "
    )
    users = cli.json("user", "list", "--json")["users"]
    assert [(u["username"], u["role"]) for u in users] == [
        ("alice", "admin"),
        ("bob", "editor"),
        ("carol", "viewer"),
    ]
    assert set(users[0]) == {"username", "role", "created_at", "disabled", "last_login_at"}

    tok = cli.json("token", "create", "bob", "--name", "ci", "--expires-days", "7", "--json")
    assert set(tok) == {
        "id",
        "username",
        "name",
        "prefix",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked",
        "token",
    }
    assert (tok["username"], tok["name"], tok["revoked"], tok["last_used_at"]) == (
        "bob",
        "ci",
        False,
        None,
    )
    assert tok["token"][3:11] == tok["prefix"] and tok["expires_at"].endswith("Z")
    plain = cli("token", "create", "alice", "--name", "ops")
    assert re.fullmatch(r"pt_[A-Za-z0-9_-]{40}\n", plain.stdout)  # only the token on stdout
    listed = cli.json("token", "list", "--user", "bob", "--json")["tokens"]
    assert [t["id"] for t in listed] == [tok["id"]] and "token" not in listed[0]
    assert cli("token", "revoke", str(tok["id"])).stdout.strip() == (
        f"token {tok['id']} (ci) of bob revoked"
    )
    assert cli.json("token", "list", "--json")["tokens"][0]["revoked"] is True
    cli("user", "role", "bob", "admin")
    cli("user", "password", "carol", "--password-stdin", stdin=PW2 + "\n")
    cli("user", "disable", "carol")

    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        assert authenticate(s, "alice", alice["password"]) is not None
        assert authenticate(s, "bob", PW) is not None
        assert authenticate(s, "carol", PW2) is None  # disabled
        assert get_user(s, "carol").disabled
    finally:
        s.dispose()

    events = cli.json("audit", "--json")["events"]
    assert set(events[0]) == {"seq", "at", "actor", "action", "target", "detail", "source"}
    assert [e["action"] for e in events[:3]] == ["user.disable", "user.password", "user.role"]
    assert {e["actor"] for e in events} == {"tester"} and {e["source"] for e in events} == {"cli"}
    only = cli.json("audit", "--action", "token.*", "--limit", "2", "--json")["events"]
    assert [e["action"] for e in only] == ["token.revoke", "token.create"]
    assert cli.json("audit", "--actor", "nobody", "--json") == {"events": []}

    assert cli.error("user", "add", "dave", "--role", "boss") == (
        "error: unknown role 'boss': use viewer, editor or admin"
    )
    assert "already exists" in cli.error("user", "add", "BOB", "--role", "viewer")
    assert "too short" in cli.error(
        "user", "add", "dave", "--role", "viewer", "--password-stdin", stdin="short\n"
    )
    assert "no password on stdin" in cli.error(
        "user", "add", "dave", "--role", "viewer", "--password-stdin", stdin=""
    )
    assert "no token 999" in cli.error("token", "revoke", "999")
    assert "no user 'zed'" in cli.error("token", "create", "zed", "--name", "x")
    cli("user", "role", "bob", "viewer")
    assert "'alice' is the last active admin" in cli.error("user", "disable", "alice")
    assert "--since" in cli.error("audit", "--since", "yesterday")
