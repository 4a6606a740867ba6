"""Accounts for the workbench: users and roles, API tokens, web sessions.

No secret is stored: passwords are kept as Argon2id hashes (older scrypt ones
are rehashed at the next login), API and session tokens as the SHA-256 of the
token (they are long random strings, so a fast hash is enough). Every change
is written to the audit log in the transaction that makes it. Names are
case-insensitive: they are stored lower-case.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import argon2
from pwdlib import PasswordHash
from pwdlib.exceptions import PwdlibError
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import Connection, Executable, Row, func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from personatag.audit_log import record
from personatag.domain import utcnow
from personatag.errors import ConflictError, InputError, NotFoundError
from personatag.store.backends.base import LOCK_SPACE_ACCOUNTS
from personatag.store.db import Store

ROLES = ("viewer", "editor", "admin")
USERNAME_RE = re.compile(r"[a-z0-9._-]{1,64}")
PASSWORD_MIN = 12
PASSWORD_MAX = 1024
TOKEN_PREFIX = "pt_"  # noqa: S105 - a marker, not a secret
TOKEN_SECRET_CHARS = 40
TOKEN_NAME_MAX = 100
TOKEN_MAX_DAYS = 3650
# last_used_at / last_seen_at are written at most this often per token/session:
# a write per request would serialise every API call on SQLite's write lock.
TOUCH_INTERVAL = timedelta(seconds=60)
# How long a last-use write waits for SQLite's write lock before it is skipped.
_TOUCH_WAIT_S = 0.2
# A session slides with use, but never past this age (or its ttl, if longer).
SESSION_MAX_AGE = timedelta(days=7)

# OWASP's Argon2id minimum (19 MiB, 2 passes, 1 lane): ~30 ms a hash here, what
# scrypt N=2^14 cost before; argon2-cffi's default profile (64 MiB, t=3, p=4)
# takes ~200 ms on a busy 2-core machine, paid on every login.
_ARGON2_MEMORY_KIB, _ARGON2_TIME, _ARGON2_LANES = 19 * 1024, 2, 1
_ARGON2_MAX_MEMORY_KIB, _ARGON2_MAX_TIME, _ARGON2_MAX_LANES = 256 * 1024, 16, 16
# Hashes written before Argon2; they verify until the next login rehashes them.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024
# Checked against for unknown users so that they cost the same hash work as
# known ones (the password it hashes was random and thrown away).
_DUMMY_HASH = (
    "$argon2id$v=19$m=19456,t=2,p=1$vjH2iwibOP0jVTiOii3kwg"
    "$v+kNy3xb6rUcZm+8ec+zhQmEmBpbs0KKfc70NSEiZYk"
)


@dataclass(frozen=True)
class User:
    pk: int
    username: str
    role: str
    created_at: datetime
    disabled: bool
    # A session login or an API token's use (recorded at most once a minute).
    last_login_at: datetime | None = None


class DisabledUserError(ConflictError):
    """The password is right but the user is disabled."""


@dataclass(frozen=True)
class TokenInfo:
    id: int
    username: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked: bool


def role_at_least(role: str, needed: str) -> bool:
    """True when `role` includes `needed` (viewer < editor < admin); unknown roles never do."""
    if role not in ROLES or needed not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(needed)


# -- passwords ---------------------------------------------------------------


def _password_bytes(password: str) -> bytes:
    # NFC: the same password typed on different systems hashes the same.
    return unicodedata.normalize("NFC", password).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Argon2(Argon2Hasher):
    """Argon2id, refusing (not computing) a stored hash whose cost is out of bounds."""

    def verify(self, password: str | bytes, hash: str | bytes) -> bool:
        try:
            params = argon2.extract_parameters(hash if isinstance(hash, str) else hash.decode())
        except (argon2.exceptions.InvalidHashError, ValueError):
            return False
        # Bounds keep a tampered hash from costing unbounded memory or time.
        if not (
            params.memory_cost <= _ARGON2_MAX_MEMORY_KIB
            and 1 <= params.time_cost <= _ARGON2_MAX_TIME
            and 1 <= params.parallelism <= _ARGON2_MAX_LANES
            and params.salt_len >= 16
            and params.hash_len >= 32
        ):
            return False
        return super().verify(password, hash)


class _LegacyScrypt:
    """The hashes written before Argon2: `scrypt$N$r$p$SALT_B64$HASH_B64` (16-byte
    salt). They still verify, and always need a rehash."""

    @classmethod
    def identify(cls, hash: str | bytes) -> bool:
        return (hash if isinstance(hash, str) else hash.decode(errors="replace")).startswith(
            "scrypt$"
        )

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        salt = salt or secrets.token_bytes(16)
        digest = hashlib.scrypt(
            password if isinstance(password, bytes) else password.encode(),
            salt=salt,
            n=_SCRYPT_N,
            r=_SCRYPT_R,
            p=_SCRYPT_P,
            maxmem=_SCRYPT_MAXMEM,
            dklen=32,
        )
        return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"

    def verify(self, password: str | bytes, hash: str | bytes) -> bool:
        parts = (hash if isinstance(hash, str) else hash.decode(errors="replace")).split("$")
        if len(parts) != 6 or parts[0] != "scrypt":
            return False
        try:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt = base64.b64decode(parts[4], validate=True)
            expected = base64.b64decode(parts[5], validate=True)
        except (ValueError, binascii.Error):
            return False
        # Bounds keep a tampered hash from costing unbounded memory or time.
        if not (2 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        # Exactly our salt and hash lengths: a truncated hash would still verify (it
        # is a prefix of the full one).
        if 128 * r * (n + p + 2) > _SCRYPT_MAXMEM or len(salt) != 16 or len(expected) != 32:
            return False
        try:
            digest = hashlib.scrypt(
                password if isinstance(password, bytes) else password.encode(),
                salt=salt,
                n=n,
                r=r,
                p=p,
                maxmem=_SCRYPT_MAXMEM,
                dklen=len(expected),
            )
        except ValueError:
            return False
        return hmac.compare_digest(digest, expected)

    def check_needs_rehash(self, hash: str | bytes) -> bool:
        return True


# The first hasher makes new hashes; the others only verify old ones.
_PASSWORDS = PasswordHash(
    (
        _Argon2(memory_cost=_ARGON2_MEMORY_KIB, time_cost=_ARGON2_TIME, parallelism=_ARGON2_LANES),
        _LegacyScrypt(),
    )
)


def hash_password(password: str) -> str:
    """A self-describing Argon2id hash: `$argon2id$v=19$m=KIB,t=PASSES,p=LANES$SALT$HASH`."""
    return _PASSWORDS.hash(_password_bytes(password))


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches `stored` (an Argon2id hash, or an older scrypt
    one); False if it does not or `stored` is malformed."""
    try:
        return _PASSWORDS.verify(_password_bytes(password), stored)
    except PwdlibError:
        return False


def password_needs_rehash(stored: str) -> bool:
    """True when `stored` is not an Argon2id hash with today's parameters."""
    for hasher in _PASSWORDS.hashers:
        if hasher.identify(stored):
            if hasher is not _PASSWORDS.current_hasher:
                return True
            try:
                return hasher.check_needs_rehash(stored)
            except (argon2.exceptions.InvalidHashError, ValueError):
                return True
    return True


def check_password_policy(password: str) -> None:
    """InputError unless the password has 12 to 1024 characters, no control
    characters, and at least two kinds of lower-case letters, upper-case
    letters, digits and other characters."""
    if len(password) < PASSWORD_MIN:
        raise InputError(f"password too short: use at least {PASSWORD_MIN} characters")
    if len(password) > PASSWORD_MAX:
        raise InputError(f"password too long: use at most {PASSWORD_MAX} characters")
    if any(unicodedata.category(ch).startswith("C") for ch in password):
        raise InputError("password contains a control character (a line break, a tab, ...)")
    kinds = {
        "lower" if ch.islower() else "upper" if ch.isupper() else "digit" if ch.isdigit() else "x"
        for ch in password
    }
    if len(kinds) < 2:
        raise InputError(
            "password too simple: mix at least two of lower-case letters, upper-case "
            "letters, digits and other characters"
        )


def generate_password() -> str:
    """A random 20-character password that meets the policy."""
    while True:
        password = secrets.token_urlsafe(15)
        try:
            check_password_policy(password)
        except InputError:  # all one kind of character: about 1 in 10^7
            continue
        return password


# -- users -------------------------------------------------------------------


def _is_username(username: str) -> bool:
    # ASCII before lower-casing: str.lower() maps some non-ASCII letters to
    # ASCII ones (the Kelvin sign to k), which would give one account two spellings.
    return username.isascii() and USERNAME_RE.fullmatch(username.lower()) is not None


def _normalise_username(username: str) -> str:
    name = username.lower()
    if not _is_username(username):
        raise InputError(
            f"invalid user name {username!r}: use 1 to 64 letters, digits, '.', '_' or '-'"
        )
    return name


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise InputError(f"unknown role {role!r}: use viewer, editor or admin")
    return role


def _to_user(row: Any) -> User:
    return User(
        pk=row.pk,
        username=row.username,
        role=row.role,
        created_at=row.created_at,
        disabled=row.disabled_at is not None,
        last_login_at=row.last_login_at,
    )


def _user_row(conn: Connection, store: Store, username: str) -> Row[Any]:
    u = store.tables.users
    name = username.lower()
    row = None
    if _is_username(username):
        row = conn.execute(select(u).where(u.c.username == name)).first()
    if row is None:
        raise NotFoundError(f"no user {username!r}: `personatag user list` shows the users")
    return row


def _lock_accounts(conn: Connection, store: Store) -> None:
    """Serialise account changes until `conn` commits.

    The last-admin rule and the first admin read, then write; on PostgreSQL
    (READ COMMITTED) two of them could both read before either writes. SQLite
    needs nothing: Store.write() already holds the only write lock.
    """
    store.backend.lock(conn, LOCK_SPACE_ACCOUNTS, 0)


def _check_not_last_admin(conn: Connection, store: Store, row: Row[Any], doing: str) -> None:
    if row.role != "admin" or row.disabled_at is not None:
        return
    u = store.tables.users
    admins = conn.scalar(select(func.count()).where(u.c.role == "admin", u.c.disabled_at.is_(None)))
    if (admins or 0) <= 1:
        raise ConflictError(
            f"cannot {doing}: {row.username!r} is the last active admin "
            "(make another user admin first)"
        )


def _end_sessions(conn: Connection, store: Store, user_pk: int) -> None:
    s = store.tables.web_sessions
    conn.execute(s.delete().where(s.c.user_pk == user_pk))


def _insert_user(
    conn: Connection, store: Store, name: str, password_hash: str, role: str, actor: str | None
) -> None:
    now = utcnow()
    conn.execute(
        store.tables.users.insert().values(
            username=name,
            password_hash=password_hash,
            role=role,
            created_at=now,
            created_by=actor,
            password_changed_at=now,
        )
    )


def create_user(
    store: Store,
    username: str,
    password: str,
    role: str,
    *,
    actor: str | None,
    source: str = "cli",
) -> User:
    """Create a user; ConflictError if the name (in any case) is taken."""
    name = _normalise_username(username)
    _check_role(role)
    check_password_policy(password)
    password_hash = hash_password(password)  # outside the transaction: ~50 ms
    u = store.tables.users
    try:
        with store.write() as conn:
            _lock_accounts(conn, store)
            if conn.scalar(select(u.c.pk).where(u.c.username == name)) is not None:
                raise ConflictError(f"user {name!r} already exists")
            _insert_user(conn, store, name, password_hash, role, actor)
            record(
                conn,
                store,
                actor=actor,
                action="user.create",
                target=name,
                detail={"role": role},
                source=source,
            )
            return _to_user(_user_row(conn, store, name))
    except IntegrityError:  # a concurrent create of the same name won
        raise ConflictError(f"user {name!r} already exists") from None


def get_user(store: Store, username: str) -> User:
    """The user named `username` (any case); NotFoundError if there is none."""
    with store.read() as conn:
        return _to_user(_user_row(conn, store, username))


def list_users(store: Store) -> list[User]:
    """Every user, disabled ones included, by name."""
    u = store.tables.users
    with store.read() as conn:
        return [_to_user(r) for r in conn.execute(select(u).order_by(u.c.username))]


def set_role(
    store: Store, username: str, role: str, *, actor: str | None, source: str = "cli"
) -> User:
    """Change a user's role; ConflictError when it would leave no active admin."""
    _check_role(role)
    with store.write() as conn:
        _lock_accounts(conn, store)
        row = _user_row(conn, store, username)
        if row.role != role:
            if role != "admin":
                article = "an" if role[0] in "aeiou" else "a"
                _check_not_last_admin(conn, store, row, f"make {row.username!r} {article} {role}")
            u = store.tables.users
            conn.execute(u.update().where(u.c.pk == row.pk).values(role=role))
            record(
                conn,
                store,
                actor=actor,
                action="user.role",
                target=row.username,
                detail={"from": row.role, "to": role},
                source=source,
            )
        return _to_user(_user_row(conn, store, username))


def set_password(
    store: Store, username: str, password: str, *, actor: str | None, source: str = "cli"
) -> None:
    """Replace a user's password and end their web sessions (API tokens stay valid)."""
    check_password_policy(password)
    password_hash = hash_password(password)
    u = store.tables.users
    with store.write() as conn:
        row = _user_row(conn, store, username)
        conn.execute(
            u.update()
            .where(u.c.pk == row.pk)
            .values(password_hash=password_hash, password_changed_at=utcnow())
        )
        _end_sessions(conn, store, row.pk)
        record(
            conn,
            store,
            actor=actor,
            action="user.password",
            target=row.username,
            source=source,
        )


def reset_password(store: Store, username: str, *, actor: str | None, source: str = "cli") -> str:
    """Give a user a new generated password and end their web sessions; the
    password is returned once and only its hash is stored."""
    password = generate_password()
    set_password(store, username, password, actor=actor, source=source)
    return password


def disable_user(store: Store, username: str, *, actor: str | None, source: str = "cli") -> User:
    """Disable a user: no more logins, tokens revoked, sessions ended (idempotent).

    ConflictError for the last active admin.
    """
    u, t = store.tables.users, store.tables.api_tokens
    with store.write() as conn:
        _lock_accounts(conn, store)
        row = _user_row(conn, store, username)
        if row.disabled_at is None:
            _check_not_last_admin(conn, store, row, f"disable {row.username!r}")
            now = utcnow()
            conn.execute(u.update().where(u.c.pk == row.pk).values(disabled_at=now))
            revoked = conn.execute(
                t.update()
                .where(t.c.user_pk == row.pk, t.c.revoked_at.is_(None))
                .values(revoked_at=now)
            ).rowcount
            _end_sessions(conn, store, row.pk)
            record(
                conn,
                store,
                actor=actor,
                action="user.disable",
                target=row.username,
                detail={"tokens_revoked": revoked},
                source=source,
            )
        return _to_user(_user_row(conn, store, username))


def enable_user(store: Store, username: str, *, actor: str | None, source: str = "cli") -> User:
    """Let a disabled user log in again (idempotent); revoked tokens stay revoked."""
    u = store.tables.users
    with store.write() as conn:
        row = _user_row(conn, store, username)
        if row.disabled_at is not None:
            conn.execute(u.update().where(u.c.pk == row.pk).values(disabled_at=None))
            record(
                conn, store, actor=actor, action="user.enable", target=row.username, source=source
            )
        return _to_user(_user_row(conn, store, username))


def authenticate(
    store: Store, username: str, password: str, *, tell_disabled: bool = False
) -> User | None:
    """The user when the password is right and the user is active, else None.

    Unknown, disabled and malformed names cost the same hash work as a wrong
    password, so timing does not tell which names exist. A right password stored
    under an older scheme (scrypt) or weaker parameters is rehashed. With
    `tell_disabled`, the right password of a disabled user raises
    DisabledUserError (whoever knows the password may know that).
    """
    if len(password) > PASSWORD_MAX:
        password = ""
    row = None
    if _is_username(username):
        u = store.tables.users
        with store.read() as conn:
            row = conn.execute(select(u).where(u.c.username == username.lower())).first()
    ok = verify_password(password, row.password_hash if row is not None else _DUMMY_HASH)
    if row is not None and ok and row.disabled_at is not None and tell_disabled:
        raise DisabledUserError(
            f"user {row.username!r} is disabled: ask an admin to enable it again"
        )
    if row is None or not ok or row.disabled_at is not None:
        return None
    if password_needs_rehash(row.password_hash):
        _rehash(store, row, password)
    return _to_user(row)


def _rehash(store: Store, row: Row[Any], password: str) -> None:
    """Store a fresh hash of a password just verified, best effort (see `_touch`:
    a busy SQLite skips it, the next login tries again). Only if the stored hash
    is still the one verified, so a password changed meanwhile is not undone."""
    u = store.tables.users
    new_hash = hash_password(password)
    _touch(
        store,
        u.update()
        .where(u.c.pk == row.pk, u.c.password_hash == row.password_hash)
        .values(password_hash=new_hash),
    )


def ensure_first_admin(
    store: Store, *, username: str = "admin", actor: str = "system", source: str = "cli"
) -> tuple[str, str] | None:
    """When the store has no user at all, create an admin with a generated
    password and return (username, password), once; otherwise None.

    Safe when several processes start at once: exactly one creates the admin.
    """
    name = _normalise_username(username)
    u = store.tables.users
    with store.read() as conn:
        if conn.scalar(select(func.count()).select_from(u)):
            return None
    password = generate_password()
    password_hash = hash_password(password)
    try:
        with store.write() as conn:
            _lock_accounts(conn, store)
            if conn.scalar(select(func.count()).select_from(u)):
                return None
            _insert_user(conn, store, name, password_hash, "admin", actor)
            record(
                conn,
                store,
                actor=actor,
                action="user.create",
                target=name,
                detail={"role": "admin", "first_admin": True},
                source=source,
            )
    except IntegrityError:  # another process created the same name first
        return None
    return name, password


# -- API tokens --------------------------------------------------------------


def _touch(store: Store, *statements: Executable) -> None:
    """Write a last-use time, best effort: on SQLite, skipped when the write
    lock is not free within a moment (a long tag holds it for minutes), so
    checking a token or session never waits for it; the next use tries again.
    """
    if not store.one_writer:
        with store.write() as conn:
            for statement in statements:
                conn.execute(statement)
        return
    try:
        with store.write_briefly(_TOUCH_WAIT_S) as conn:
            for statement in statements:
                conn.execute(statement)
    except OperationalError as exc:
        if "locked" not in str(exc.orig) and "busy" not in str(exc.orig):
            raise


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _token_query(store: Store) -> Any:
    t, u = store.tables.api_tokens, store.tables.users
    return select(
        t.c.pk,
        u.c.username,
        t.c.name,
        t.c.prefix,
        t.c.created_at,
        t.c.last_used_at,
        t.c.expires_at,
        t.c.revoked_at,
    ).join_from(t, u, t.c.user_pk == u.c.pk)


def _to_token(row: Any) -> TokenInfo:
    return TokenInfo(
        id=row.pk,
        username=row.username,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
        revoked=row.revoked_at is not None,
    )


def create_token(
    store: Store,
    username: str,
    name: str,
    *,
    actor: str | None,
    expires_days: int | None = None,
    source: str = "cli",
) -> tuple[str, TokenInfo]:
    """A new API token for `username`: (plaintext, info). The plaintext
    (`pt_` + 40 URL-safe characters) is not stored and cannot be shown again;
    `prefix` is the first 8 characters after `pt_`."""
    label = name.strip()
    if not label or len(label) > TOKEN_NAME_MAX:
        raise InputError(f"a token needs a --name of 1 to {TOKEN_NAME_MAX} characters")
    if expires_days is not None and not 1 <= expires_days <= TOKEN_MAX_DAYS:
        raise InputError(f"invalid --expires-days {expires_days}: use 1 to {TOKEN_MAX_DAYS}")
    secret = secrets.token_urlsafe(TOKEN_SECRET_CHARS * 3 // 4)
    token = TOKEN_PREFIX + secret
    t = store.tables.api_tokens
    with store.write() as conn:
        row = _user_row(conn, store, username)
        if row.disabled_at is not None:
            raise ConflictError(f"user {row.username!r} is disabled: enable it first")
        now = utcnow()
        expires = None if expires_days is None else now + timedelta(days=expires_days)
        token_hash = _sha256(token)
        conn.execute(
            t.insert().values(
                user_pk=row.pk,
                name=label,
                token_hash=token_hash,
                prefix=secret[:8],
                created_at=now,
                created_by=actor,
                expires_at=expires,
            )
        )
        token_pk = conn.scalar(select(t.c.pk).where(t.c.token_hash == token_hash))
        record(
            conn,
            store,
            actor=actor,
            action="token.create",
            target=row.username,
            detail={
                "token_id": token_pk,
                "name": label,
                "prefix": secret[:8],
                "expires_at": expires,
            },
            source=source,
        )
        info = _to_token(conn.execute(_token_query(store).where(t.c.pk == token_pk)).one())
    return token, info


def verify_token(store: Store, token: str) -> User | None:
    """The token's user when the token is known, not revoked, not expired and
    its user is active; else None. Records use (last_used_at) at most once a minute."""
    if not token.startswith(TOKEN_PREFIX) or len(token) != len(TOKEN_PREFIX) + TOKEN_SECRET_CHARS:
        return None
    t, u = store.tables.api_tokens, store.tables.users
    query = select(
        t.c.pk.label("token_pk"),
        t.c.expires_at,
        t.c.revoked_at,
        t.c.last_used_at,
        u,
    ).join_from(t, u, t.c.user_pk == u.c.pk)
    with store.read() as conn:
        row = conn.execute(query.where(t.c.token_hash == _sha256(token))).first()
    now = utcnow()
    if (
        row is None
        or row.revoked_at is not None
        or (row.expires_at is not None and row.expires_at <= now)
        or row.disabled_at is not None
    ):
        return None
    if row.last_used_at is None or now - row.last_used_at >= TOUCH_INTERVAL:
        _touch(
            store,
            t.update().where(t.c.pk == row.token_pk).values(last_used_at=now),
            u.update().where(u.c.pk == row.pk).values(last_login_at=now),
        )
    return _to_user(row)


def list_tokens(store: Store, username: str | None = None) -> list[TokenInfo]:
    """Tokens (revoked and expired ones too) by id, of one user or of everyone."""
    t = store.tables.api_tokens
    query = _token_query(store).order_by(t.c.pk)
    with store.read() as conn:
        if username is not None:
            query = query.where(t.c.user_pk == _user_row(conn, store, username).pk)
        return [_to_token(r) for r in conn.execute(query)]


def revoke_token(
    store: Store, token_id: int, *, actor: str | None, source: str = "cli"
) -> TokenInfo:
    """Revoke a token for good (idempotent); NotFoundError for an unknown id."""
    t = store.tables.api_tokens
    with store.write() as conn:
        row = conn.execute(_token_query(store).where(t.c.pk == token_id)).first()
        if row is None:
            raise NotFoundError(f"no token {token_id}: `personatag token list` shows the tokens")
        if row.revoked_at is None:
            conn.execute(t.update().where(t.c.pk == token_id).values(revoked_at=utcnow()))
            record(
                conn,
                store,
                actor=actor,
                action="token.revoke",
                target=row.username,
                detail={"token_id": token_id, "name": row.name, "prefix": row.prefix},
                source=source,
            )
            row = conn.execute(_token_query(store).where(t.c.pk == token_id)).one()
        return _to_token(row)


# -- web sessions ------------------------------------------------------------


def create_session(store: Store, user: User, *, ttl_s: float = 12 * 3600) -> tuple[str, str]:
    """Start a web session (the user's last login): (session token, CSRF token). The session expires
    after `ttl_s` seconds without use, and at the latest 7 days (or ttl_s, if
    longer) after it started. Expired sessions of anyone are deleted here."""
    if not ttl_s > 0:
        raise InputError(f"invalid session ttl {ttl_s}: use a positive number of seconds")
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    s, u = store.tables.web_sessions, store.tables.users
    with store.write() as conn:
        disabled = conn.scalar(select(u.c.disabled_at.is_not(None)).where(u.c.pk == user.pk))
        if disabled is None:
            raise NotFoundError(f"no user {user.username!r}")
        if disabled:
            raise ConflictError(f"user {user.username!r} is disabled")
        now = utcnow()
        conn.execute(s.delete().where(s.c.expires_at <= now))
        conn.execute(
            s.insert().values(
                token_hash=_sha256(token),
                user_pk=user.pk,
                csrf_token=csrf,
                created_at=now,
                expires_at=now + timedelta(seconds=ttl_s),
                last_seen_at=now,
            )
        )
        conn.execute(u.update().where(u.c.pk == user.pk).values(last_login_at=now))
    return token, csrf


def session_user(store: Store, token: str) -> tuple[User, str] | None:
    """(user, CSRF token) for a live session of an active user, else None.

    Use slides the expiry forward by the session's ttl (written at most once
    a minute, or once a tenth of the ttl if that is shorter)."""
    if not token or len(token) > 200:
        return None
    s, u = store.tables.web_sessions, store.tables.users
    key = _sha256(token)
    query = select(
        s.c.csrf_token,
        s.c.created_at.label("session_created_at"),
        s.c.expires_at,
        s.c.last_seen_at,
        u,
    ).join_from(s, u, s.c.user_pk == u.c.pk)
    with store.read() as conn:
        row = conn.execute(query.where(s.c.token_hash == key)).first()
    if row is None:
        return None
    now = utcnow()
    if row.expires_at <= now or row.disabled_at is not None:
        end_session(store, token)
        return None
    ttl = row.expires_at - row.last_seen_at
    if now - row.last_seen_at >= min(TOUCH_INTERVAL, ttl / 10):
        expires = min(now + ttl, row.session_created_at + max(ttl, SESSION_MAX_AGE))
        _touch(
            store,
            s.update().where(s.c.token_hash == key).values(last_seen_at=now, expires_at=expires),
        )
    return _to_user(row), row.csrf_token


def end_session(store: Store, token: str) -> None:
    """End a web session (idempotent: unknown tokens are ignored)."""
    s = store.tables.web_sessions
    with store.write() as conn:
        conn.execute(s.delete().where(s.c.token_hash == _sha256(token)))


def token_name(store: Store, token: str) -> str | None:
    """The name of the API token `token` (as its user gave it), None when unknown."""
    t = store.tables.api_tokens
    with store.read() as conn:
        name = conn.scalar(select(t.c.name).where(t.c.token_hash == _sha256(token)))
    return None if name is None else str(name)
