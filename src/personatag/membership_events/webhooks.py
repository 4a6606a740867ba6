"""Registered webhooks and their dead letters (the delivery worker is in
`events.delivery`).

A webhook is a URL, a secret that signs every delivery, an optional list of
personas, and a cursor: the last membership-log seq delivered. The secret is
returned once, when the webhook is created; it is kept in the store (it must
be, to sign), but no list or API answer shows it again. Every change is
recorded in the audit log.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, func, select

from personatag.audit_log import record
from personatag.domain import utcnow
from personatag.errors import InputError, NotFoundError
from personatag.membership_events.reader import Horizon, persona_pks
from personatag.store import Store
from personatag.times import iso

MAX_URL = 2000


@dataclass(frozen=True)
class Webhook:
    pk: int
    url: str
    personas: list[str] | None  # None: every persona
    cursor_seq: int
    cursor_part: int | None
    created_at: datetime
    created_by: str | None
    disabled_at: datetime | None
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    dead_letters: int  # not yet redelivered

    def to_json(self) -> dict[str, Any]:
        """Everything but the secret."""
        return {
            "id": self.pk,
            "url": self.url,
            "personas": self.personas,
            "enabled": self.disabled_at is None,
            "cursor_seq": self.cursor_seq,
            "cursor_part": self.cursor_part,
            "attempts": self.attempts,
            "next_attempt_at": None if self.next_attempt_at is None else iso(self.next_attempt_at),
            "last_error": self.last_error,
            "dead_letters": self.dead_letters,
            "created_at": iso(self.created_at),
            "created_by": self.created_by,
        }


@dataclass(frozen=True)
class DeadLetter:
    pk: int
    webhook_pk: int
    first_seq: int
    last_seq: int
    events: int
    attempts: int
    last_error: str | None
    failed_at: datetime
    redelivered_at: datetime | None
    delivery_id: str | None
    payload: str

    def to_json(self) -> dict[str, Any]:
        """The dead letter without its payload (`events` counts its events)."""
        return {
            "id": self.pk,
            "webhook": self.webhook_pk,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "events": self.events,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "failed_at": iso(self.failed_at),
            "redelivered_at": None if self.redelivered_at is None else iso(self.redelivered_at),
            "delivery_id": self.delivery_id,
        }


def check_url(url: str) -> str:
    """An http(s) URL with a host, no fragment, no credentials; InputError otherwise."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(
            f"invalid webhook URL {url!r}: use an http:// or https:// URL with a host, "
            "e.g. https://crm.example.com/personatag"
        )
    if len(url) > MAX_URL:
        raise InputError(f"invalid webhook URL: longer than {MAX_URL} characters")
    if parts.fragment or parts.username or parts.password:
        raise InputError(
            f"invalid webhook URL {url!r}: no #fragment or user:password@ (the payload is "
            "signed with the webhook's secret instead)"
        )
    try:
        _ = parts.port
    except ValueError:
        raise InputError(f"invalid webhook URL {url!r}: bad port") from None
    return url


def _dead_letter_counts(conn: Connection, store: Store) -> dict[int, int]:
    d = store.tables.webhook_dead_letters
    query = (
        select(d.c.webhook_pk, func.count())
        .where(d.c.redelivered_at.is_(None))
        .group_by(d.c.webhook_pk)
    )
    return {int(pk): int(n) for pk, n in conn.execute(query)}


def _to_webhook(row: Any, dead: int) -> Webhook:
    return Webhook(
        pk=int(row.pk),
        url=row.url,
        personas=None if row.personas is None else list(json.loads(row.personas)),
        cursor_seq=int(row.cursor_seq),
        cursor_part=None if row.cursor_part is None else int(row.cursor_part),
        created_at=row.created_at,
        created_by=row.created_by,
        disabled_at=row.disabled_at,
        attempts=int(row.attempts),
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        dead_letters=dead,
    )


def webhook_row(conn: Connection, store: Store, pk: int) -> Any:
    w = store.tables.webhooks
    row = conn.execute(select(w).where(w.c.pk == pk)).first()
    if row is None:
        raise NotFoundError(f"unknown webhook {pk}: see `personatag webhook list`")
    return row


def get_webhook(store: Store, pk: int) -> Webhook:
    with store.read() as conn:
        row = webhook_row(conn, store, pk)
        return _to_webhook(row, _dead_letter_counts(conn, store).get(pk, 0))


def list_webhooks(store: Store) -> list[Webhook]:
    """Every webhook, oldest first (never the secrets)."""
    w = store.tables.webhooks
    with store.read() as conn:
        dead = _dead_letter_counts(conn, store)
        rows = conn.execute(select(w).order_by(w.c.pk)).all()
    return [_to_webhook(r, dead.get(int(r.pk), 0)) for r in rows]


def add_webhook(
    store: Store,
    url: str,
    *,
    personas: list[str] | None = None,
    from_start: bool = False,
    actor: str | None = None,
    source: str = "cli",
) -> tuple[Webhook, str]:
    """Register a webhook; returns it and its secret (shown only now).

    It receives changes logged after now, or every change from the first
    with `from_start`. `personas` (keys) limits it to those personas.
    """
    url = check_url(url)
    keys = None
    if personas is not None:
        keys = sorted(set(personas))
        if not keys:
            raise InputError("a webhook's persona list cannot be empty: leave it out for all")
        persona_pks(store, keys)
    # Changes still being committed count as after now: start below them.
    cursor = 0 if from_start else Horizon(store).wait(10.0)
    secret = secrets.token_urlsafe(32)
    w = store.tables.webhooks
    with store.write() as conn:
        pk = conn.execute(
            w.insert().values(
                url=url,
                secret=secret,
                personas=None if keys is None else json.dumps(keys),
                cursor_seq=cursor,
                created_at=utcnow(),
                created_by=actor,
                attempts=0,
            )
        ).inserted_primary_key[0]  # type: ignore[index]
        record(
            conn,
            store,
            actor=actor,
            action="webhook.create",
            target=str(pk),
            detail={"url": url, "personas": keys, "cursor_seq": cursor},
            source=source,
        )
    return get_webhook(store, int(pk)), secret


def remove_webhook(
    store: Store, pk: int, *, actor: str | None = None, source: str = "cli"
) -> Webhook:
    """Delete a webhook and its dead letters."""
    hook = get_webhook(store, pk)
    t = store.tables
    with store.write() as conn:
        webhook_row(conn, store, pk)
        conn.execute(
            t.webhook_dead_letters.delete().where(t.webhook_dead_letters.c.webhook_pk == pk)
        )
        conn.execute(t.webhooks.delete().where(t.webhooks.c.pk == pk))
        record(
            conn,
            store,
            actor=actor,
            action="webhook.remove",
            target=str(pk),
            detail={"url": hook.url},
            source=source,
        )
    return hook


def set_enabled(
    store: Store, pk: int, enabled: bool, *, actor: str | None = None, source: str = "cli"
) -> Webhook:
    """Enable or disable a webhook (idempotent). A disabled one keeps its cursor:
    enabled again, it delivers what was logged meanwhile. Enabling also clears
    any retry wait, so the next pass tries at once."""
    w = store.tables.webhooks
    with store.write() as conn:
        row = webhook_row(conn, store, pk)
        if (row.disabled_at is None) != enabled:
            values: dict[str, Any] = {"disabled_at": None if enabled else utcnow()}
            if enabled:
                values["next_attempt_at"] = None
            conn.execute(w.update().where(w.c.pk == pk).values(**values))
            record(
                conn,
                store,
                actor=actor,
                action="webhook.enable" if enabled else "webhook.disable",
                target=str(pk),
                source=source,
            )
    return get_webhook(store, pk)


def _to_dead_letter(row: Any) -> DeadLetter:
    payload = row.payload
    return DeadLetter(
        pk=int(row.pk),
        webhook_pk=int(row.webhook_pk),
        first_seq=int(row.first_seq),
        last_seq=int(row.last_seq),
        events=len(json.loads(payload).get("events", [])),
        attempts=int(row.attempts),
        last_error=row.last_error,
        failed_at=row.failed_at,
        redelivered_at=row.redelivered_at,
        delivery_id=row.delivery_id,
        payload=payload,
    )


def list_dead_letters(store: Store, webhook_pk: int | None = None) -> list[DeadLetter]:
    """Dead letters (of one webhook, or all), oldest first, redelivered ones too."""
    d = store.tables.webhook_dead_letters
    query = select(d).order_by(d.c.pk)
    with store.read() as conn:
        if webhook_pk is not None:
            webhook_row(conn, store, webhook_pk)
            query = query.where(d.c.webhook_pk == webhook_pk)
        rows = conn.execute(query).all()
    return [_to_dead_letter(r) for r in rows]


def get_dead_letter(store: Store, pk: int) -> DeadLetter:
    d = store.tables.webhook_dead_letters
    with store.read() as conn:
        row = conn.execute(select(d).where(d.c.pk == pk)).first()
    if row is None:
        raise NotFoundError(f"unknown dead letter {pk}: see `personatag webhook dead-letters`")
    return _to_dead_letter(row)
