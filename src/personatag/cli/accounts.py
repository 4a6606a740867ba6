"""`personatag user|token|audit ...`: accounts, API tokens and the audit log.

Whoever can run the CLI against the store is trusted like an admin: these
commands change accounts directly and are recorded with source `cli` and the
actor from PERSONATAG_ACTOR (or the OS user).
"""

from __future__ import annotations

import getpass
import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from personatag.cli.common import JsonOpt, actor, emit, store
from personatag.domain import parse_timestamp
from personatag.errors import InputError
from personatag.times import iso

if TYPE_CHECKING:
    from personatag.accounts import TokenInfo, User

# Commands at the top level (joined into the root app without a name).
app = typer.Typer()
user_app = typer.Typer(help="Manage workbench users and their roles.", no_args_is_help=True)
token_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)

PasswordStdinOpt = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from the first line of stdin (default: generate one).",
    ),
]


def _user_json(u: User) -> dict[str, Any]:
    return {
        "username": u.username,
        "role": u.role,
        "created_at": iso(u.created_at),
        "disabled": u.disabled,
        "last_login_at": iso(u.last_login_at),
    }


def _token_json(t: TokenInfo) -> dict[str, Any]:
    return {
        "id": t.id,
        "username": t.username,
        "name": t.name,
        "prefix": t.prefix,
        "created_at": iso(t.created_at),
        "last_used_at": iso(t.last_used_at),
        "expires_at": iso(t.expires_at),
        "revoked": t.revoked,
    }


def _read_password() -> str:
    if sys.stdin.isatty():  # typed by hand: do not echo it
        return getpass.getpass("password: ")
    line = sys.stdin.readline()
    password = line.removesuffix("\n").removesuffix("\r")
    if not password:
        raise InputError("--password-stdin: no password on stdin (give it as the first line)")
    return password


def _new_password(from_stdin: bool) -> tuple[str, bool]:
    """(password, generated?)"""
    from personatag.accounts import check_password_policy, generate_password

    if from_stdin:
        password = _read_password()
        check_password_policy(password)
        return password, False
    return generate_password(), True


# -- users -------------------------------------------------------------------


@user_app.command("add")
def user_add(
    name: str,
    role: Annotated[str, typer.Option(help="viewer|editor|admin")],
    password_stdin: PasswordStdinOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a user; without --password-stdin a password is generated and printed once."""
    from personatag.accounts import create_user

    password, generated = _new_password(password_stdin)
    user = create_user(store(), name, password, role, actor=actor())
    if as_json:
        emit(_user_json(user) | {"password": password if generated else None})
        return
    typer.echo(f"user {user.username} ({user.role}) created")
    if generated:
        typer.echo(f"password (shown once): {password}")


@user_app.command("list")
def user_list(as_json: JsonOpt = False) -> None:
    """Users with their role, disabled ones included."""
    from personatag.accounts import list_users

    users = list_users(store())
    if as_json:
        emit({"users": [_user_json(u) for u in users]})
        return
    for u in users:
        state = "  disabled" if u.disabled else ""
        login = iso(u.last_login_at) or "never"
        typer.echo(
            f"{u.username:<24} {u.role:<7} created {iso(u.created_at)}, last login {login}{state}"
        )


@user_app.command("role")
def user_role(name: str, role: Annotated[str, typer.Argument(help="viewer|editor|admin")]) -> None:
    """Change a user's role (the last active admin cannot be demoted)."""
    from personatag.accounts import set_role

    user = set_role(store(), name, role, actor=actor())
    typer.echo(f"user {user.username} is now {user.role}")


@user_app.command("disable")
def user_disable(name: str) -> None:
    """Disable a user: no more logins, API tokens revoked, web sessions ended."""
    from personatag.accounts import disable_user

    user = disable_user(store(), name, actor=actor())
    typer.echo(f"user {user.username} disabled")


@user_app.command("enable")
def user_enable(name: str) -> None:
    """Let a disabled user log in again (their revoked tokens stay revoked)."""
    from personatag.accounts import enable_user

    user = enable_user(store(), name, actor=actor())
    typer.echo(f"user {user.username} enabled")


@user_app.command("password")
def user_password(name: str, password_stdin: PasswordStdinOpt = False) -> None:
    """Set a user's password (generated and printed once without --password-stdin)."""
    from personatag.accounts import set_password

    password, generated = _new_password(password_stdin)
    set_password(store(), name, password, actor=actor())
    typer.echo(f"password of {name.lower()} changed; their web sessions were ended")
    if generated:
        typer.echo(f"password (shown once): {password}")


# -- tokens ------------------------------------------------------------------


@token_app.command("create")
def token_create(
    user: str,
    name: Annotated[str, typer.Option(help="What the token is for (shown in lists).")],
    expires_days: Annotated[
        int | None, typer.Option(help="Days until it expires (default: never).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token; it is printed once (only its hash is stored)."""
    from personatag.accounts import create_token

    token, info = create_token(store(), user, name, actor=actor(), expires_days=expires_days)
    if as_json:
        emit(_token_json(info) | {"token": token})
        return
    # stdout carries only the token, so `TOKEN=$(personatag token create ...)` works.
    typer.echo(token)
    typer.echo(
        f"token {info.id} ({info.name}) for {info.username} created; it is shown only once",
        err=True,
    )


@token_app.command("list")
def token_list(
    user: Annotated[str | None, typer.Option(help="Only this user's tokens.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """API tokens (never their secret): id, user, name, prefix, use, expiry, revoked."""
    from personatag.accounts import list_tokens

    tokens = list_tokens(store(), user)
    if as_json:
        emit({"tokens": [_token_json(t) for t in tokens]})
        return
    for t in tokens:
        state = "revoked" if t.revoked else f"expires {iso(t.expires_at) or 'never'}"
        used = iso(t.last_used_at) or "never"
        typer.echo(f"{t.id:>5} {t.username:<20} {t.name:<24} pt_{t.prefix}… used {used}, {state}")


@token_app.command("revoke")
def token_revoke(token_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Revoke an API token for good (idempotent)."""
    from personatag.accounts import revoke_token

    info = revoke_token(store(), token_id, actor=actor())
    typer.echo(f"token {info.id} ({info.name}) of {info.username} revoked")


# -- audit log ---------------------------------------------------------------


@app.command()
def audit(
    actor_: Annotated[
        str | None, typer.Option("--actor", help="Only events by this actor.")
    ] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action (`user.*`: every user action).")
    ] = None,
    target: Annotated[str | None, typer.Option(help="Only events about this target.")] = None,
    since: Annotated[str | None, typer.Option(help="Only events at or after (ISO-8601).")] = None,
    before: Annotated[
        int | None, typer.Option(help="Only events numbered below this seq (paging).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many events (1-1000).")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """The audit log, newest first: who changed accounts, tokens, personas, ..."""
    from personatag.audit_log import list_events

    try:
        since_at = None if since is None else parse_timestamp(since)
    except ValueError:
        raise InputError(
            f"invalid --since {since!r}: use ISO-8601, e.g. 2026-06-30T12:00:00Z"
        ) from None
    events = list_events(
        store(),
        actor=actor_,
        action=action,
        target=target,
        since=since_at,
        limit=limit,
        before_seq=before,
    )
    if as_json:
        emit({"events": events})
        return
    for e in events:
        detail = "" if e["detail"] is None else " " + json.dumps(e["detail"], sort_keys=True)
        typer.echo(
            f"{e['seq']:>6} {e['at']} {e['source']:<3} {e['actor'] or '-'} {e['action']} "
            f"{e['target'] or '-'}{detail}"
        )
