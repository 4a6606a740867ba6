"""Archiving a persona: refused while a criterion reads it with `persona(...)`.

Above both personas and criteria, since it asks one about the other.
"""

from __future__ import annotations

from personatag.criteria import from_json, references
from personatag.definitions.criteria import list_criteria
from personatag.definitions.personas import Persona, get_persona
from personatag.domain import utcnow
from personatag.errors import ConflictError
from personatag.store.db import Store


def archive_persona(store: Store, key: str) -> Persona:
    p = store.tables.personas
    with store.write() as conn:
        persona = get_persona(conn, store, key)
        if persona.archived_at is not None:
            raise ConflictError(f"persona {key!r} is already archived")
        users = [
            c.label
            for c in list_criteria(conn, store)
            if key in references(from_json(c.ast)).personas
        ]
        if users:
            raise ConflictError(
                f'persona {key!r} is used as persona("{key}") by criteria '
                f"{', '.join(users)}: edit them first"
            )
        conn.execute(p.update().where(p.c.pk == persona.pk).values(archived_at=utcnow()))
        return get_persona(conn, store, key)
