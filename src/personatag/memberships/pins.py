"""Manual pins: include or exclude one contact for one persona; rules never override.

A pin-in is a source of its own (a SOURCE_MANUAL membership row that only pins
remove); a pin-out removes every source and keeps rules from adding one. The
log says enter or exit when the persona as a whole moves (rules.py).
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from personatag.definitions import watch
from personatag.definitions.personas import get_persona
from personatag.domain import SOURCE_MANUAL, PinKind, utcnow
from personatag.errors import NotFoundError
from personatag.memberships import grants, rules
from personatag.memberships.log import LogContext, log_one
from personatag.store import Store, changefeed


def contact_pk(conn: Connection, store: Store, contact_id: str) -> int:
    c = store.tables.contacts
    pk = conn.scalar(select(c.c.pk).where(c.c.id == contact_id))
    if pk is None:
        raise NotFoundError(f"unknown contact {contact_id!r}")
    return int(pk)


def _holds(conn: Connection, store: Store, persona_pk: int, cpk: int) -> bool:
    m = store.tables.membership_rows
    query = select(m.c.source).where(m.c.persona_pk == persona_pk, m.c.contact_pk == cpk)
    return rules.holds(set(conn.scalars(query)))


def _log(conn: Connection, store: Store, ctx: LogContext, cpk: int, before: bool) -> None:
    """Log what the pin did to the persona as a whole, if anything."""
    change = rules.logged(before, _holds(conn, store, ctx.persona_pk, cpk))
    if change is not None:
        log_one(conn, store, ctx, change.value, cpk)


def _pin_kind(conn: Connection, store: Store, persona_pk: int, cpk: int) -> str | None:
    p = store.tables.pins
    return conn.scalar(select(p.c.kind).where(p.c.persona_pk == persona_pk, p.c.contact_pk == cpk))


def _pin_out_lifted(conn: Connection, store: Store, persona_pk: int, cpk: int) -> None:
    """Rules apply to the contact again: the ongoing criteria tagging the persona
    re-evaluate it at the stream's next step (a full evaluation would tag it now)."""
    watch.record_moved(conn, store, changefeed.KIND_PIN, persona_pk, [cpk])


def pin(
    store: Store,
    persona_key: str,
    contact_id: str,
    kind: PinKind,
    *,
    actor: str | None = None,
    reason: str | None = None,
) -> dict[str, object]:
    """Pin a contact in (holds the persona whatever rules say) or out (never holds it)."""
    t = store.tables
    now = utcnow()
    with store.write() as conn:
        persona = get_persona(conn, store, persona_key, active=True)
        store.lock_persona(conn, persona.pk)
        cpk = contact_pk(conn, store, contact_id)
        held = _holds(conn, store, persona.pk, cpk)
        before = _pin_kind(conn, store, persona.pk, cpk)
        ctx = LogContext(
            now, persona.pk, SOURCE_MANUAL, None, None, actor, reason or f"pin {kind.value}"
        )
        conn.execute(
            t.pins.delete().where(t.pins.c.persona_pk == persona.pk, t.pins.c.contact_pk == cpk)
        )
        conn.execute(
            t.pins.insert().values(
                persona_pk=persona.pk,
                contact_pk=cpk,
                kind=kind.value,
                created_at=now,
                created_by=actor,
                reason=reason,
            )
        )
        m = t.membership_rows
        if kind is PinKind.IN:
            conn.execute(
                m.delete().where(
                    m.c.persona_pk == persona.pk,
                    m.c.contact_pk == cpk,
                    m.c.source == SOURCE_MANUAL,
                )
            )
            conn.execute(
                m.insert().values(
                    persona_pk=persona.pk,
                    contact_pk=cpk,
                    source=SOURCE_MANUAL,
                    grant_pk=grants.add(conn, store, now),
                )
            )
            _log(conn, store, ctx, cpk, held)
            if before == PinKind.OUT.value:
                _pin_out_lifted(conn, store, persona.pk, cpk)
        else:
            conn.execute(m.delete().where(m.c.persona_pk == persona.pk, m.c.contact_pk == cpk))
            _log(conn, store, ctx, cpk, held)
        return {
            "persona": persona_key,
            "contact": contact_id,
            "pin": kind.value,
            "holds": kind is PinKind.IN,
        }


def unpin(
    store: Store, persona_key: str, contact_id: str, *, actor: str | None = None
) -> dict[str, object]:
    """Remove a pin. A pin-in's manual membership goes with it; rules apply again."""
    t = store.tables
    now = utcnow()
    with store.write() as conn:
        persona = get_persona(conn, store, persona_key)
        store.lock_persona(conn, persona.pk)
        cpk = contact_pk(conn, store, contact_id)
        kind = _pin_kind(conn, store, persona.pk, cpk)
        if kind is None:
            raise NotFoundError(f"contact {contact_id!r} has no pin for persona {persona_key!r}")
        conn.execute(
            t.pins.delete().where(t.pins.c.persona_pk == persona.pk, t.pins.c.contact_pk == cpk)
        )
        m = t.membership_rows
        if kind == PinKind.IN.value:
            conn.execute(
                m.delete().where(
                    m.c.persona_pk == persona.pk,
                    m.c.contact_pk == cpk,
                    m.c.source == SOURCE_MANUAL,
                )
            )
            ctx = LogContext(now, persona.pk, SOURCE_MANUAL, None, None, actor, "unpin")
            _log(conn, store, ctx, cpk, True)
        else:
            _pin_out_lifted(conn, store, persona.pk, cpk)
        holds = _holds(conn, store, persona.pk, cpk)
        return {"persona": persona_key, "contact": contact_id, "pin": None, "holds": holds}
