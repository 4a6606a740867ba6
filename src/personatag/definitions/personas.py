"""Personas: the classifications a contact can carry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from personatag import audit_log
from personatag.domain import PERSONA_KEY_RE, utcnow
from personatag.errors import ConflictError, InputError, NotFoundError
from personatag.store.db import Store

# Keep the description as it is (edit_persona's default; None clears it).
KEEP: Any = object()


@dataclass(frozen=True)
class Persona:
    pk: int
    key: str
    name: str
    category: str
    description: str | None
    created_at: datetime
    created_by: str | None
    archived_at: datetime | None


def add_persona(
    store: Store,
    key: str,
    *,
    name: str,
    category: str,
    description: str | None = None,
    actor: str | None = None,
) -> Persona:
    if not PERSONA_KEY_RE.match(key):
        raise InputError(
            f"invalid persona key {key!r}: use lower-case letters, digits, '-', '_' or '.', "
            "starting with a letter or digit (at most 100 characters)"
        )
    if not name.strip():
        raise InputError("a persona needs a non-empty --name")
    if not category.strip():
        raise InputError("a persona needs a non-empty --category")
    p = store.tables.personas
    with store.write() as conn:
        if conn.scalar(select(p.c.pk).where(p.c.key == key)) is not None:
            raise ConflictError(f"persona {key!r} already exists")
        conn.execute(
            p.insert().values(
                key=key,
                name=name.strip(),
                category=category.strip(),
                description=description,
                created_at=utcnow(),
                created_by=actor,
            )
        )
        return get_persona(conn, store, key)


def edit_persona(
    store: Store,
    key: str,
    *,
    name: str | None = None,
    category: str | None = None,
    description: str | None = KEEP,
    actor: str | None = None,
    source: str = "cli",
) -> Persona:
    """Change a persona's name, category or description (the key never changes).

    None keeps the name or category; `description` is kept unless given (None
    or blank text clears it). An archived persona can be edited too. Audited as
    `persona.edit` with the old and new values of what changed; a call that
    changes nothing writes nothing.
    """
    p = store.tables.personas
    with store.write() as conn:
        old = get_persona(conn, store, key)
        new: dict[str, str | None] = {}
        if name is not None:
            if not name.strip():
                raise InputError("a persona's name cannot be empty")
            new["name"] = name.strip()
        if category is not None:
            if not category.strip():
                raise InputError("a persona's category cannot be empty")
            new["category"] = category.strip()
        if description is not KEEP:
            new["description"] = (description or "").strip() or None
        changed = {k: v for k, v in new.items() if getattr(old, k) != v}
        if not changed:
            return old
        conn.execute(p.update().where(p.c.pk == old.pk).values(**changed))
        detail = {k: {"from": getattr(old, k), "to": v} for k, v in changed.items()}
        audit_log.record(
            conn,
            store,
            actor=actor,
            action="persona.edit",
            target=key,
            detail=detail,
            source=source,
        )
        return get_persona(conn, store, key)


def restore_persona(
    store: Store, key: str, *, actor: str | None = None, source: str = "cli"
) -> Persona:
    """Bring an archived persona back: tagging into it is allowed again. Its
    members and history were kept while archived. Audited as `persona.restore`."""
    p = store.tables.personas
    with store.write() as conn:
        persona = get_persona(conn, store, key)
        if persona.archived_at is None:
            raise ConflictError(f"persona {key!r} is not archived: nothing to restore")
        conn.execute(p.update().where(p.c.pk == persona.pk).values(archived_at=None))
        audit_log.record(
            conn,
            store,
            actor=actor,
            action="persona.restore",
            target=key,
            detail={"archived_at": persona.archived_at},
            source=source,
        )
        return get_persona(conn, store, key)


def _row_to_persona(row: object) -> Persona:
    m = row._mapping  # type: ignore[attr-defined]
    return Persona(
        pk=m["pk"],
        key=m["key"],
        name=m["name"],
        category=m["category"],
        description=m["description"],
        created_at=m["created_at"],
        created_by=m["created_by"],
        archived_at=m["archived_at"],
    )


def get_persona(conn: Connection, store: Store, key: str, *, active: bool = False) -> Persona:
    """The persona with `key`; with active=True an archived one is a ConflictError."""
    p = store.tables.personas
    row = conn.execute(select(p).where(p.c.key == key)).first()
    if row is None:
        raise NotFoundError(f"unknown persona {key!r}: see `personatag persona list`")
    persona = _row_to_persona(row)
    if active and persona.archived_at is not None:
        raise ConflictError(f"persona {key!r} is archived")
    return persona


def list_personas(
    conn: Connection, store: Store, *, include_archived: bool = False
) -> list[tuple[Persona, int]]:
    """Personas (by category, key) with their current member counts."""
    t = store.tables
    counts = (
        select(
            t.membership_rows.c.persona_pk,
            func.count(t.membership_rows.c.contact_pk.distinct()).label("n"),
        )
        .group_by(t.membership_rows.c.persona_pk)
        .subquery()
    )
    query = (
        select(t.personas, func.coalesce(counts.c.n, 0).label("members"))
        .outerjoin(counts, counts.c.persona_pk == t.personas.c.pk)
        .order_by(t.personas.c.category, t.personas.c.key)
    )
    if not include_archived:
        query = query.where(t.personas.c.archived_at.is_(None))
    return [(_row_to_persona(row), int(row.members)) for row in conn.execute(query)]


def member_count(conn: Connection, store: Store, persona_pk: int) -> int:
    m = store.tables.membership_rows
    query = select(func.count(m.c.contact_pk.distinct())).where(m.c.persona_pk == persona_pk)
    return int(conn.scalar(query) or 0)


def persona_pks(conn: Connection, store: Store) -> dict[str, int]:
    """Key -> pk of every persona that is not archived."""
    p = store.tables.personas
    rows = conn.execute(select(p.c.key, p.c.pk).where(p.c.archived_at.is_(None)))
    return {key: pk for key, pk in rows}
