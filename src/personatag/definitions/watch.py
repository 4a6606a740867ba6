"""Which personas live ongoing criteria watch, so moves outside the stream reach it.

Memberships moved outside the stream (a pin, an ad hoc request, a retired
criterion) go into the change feed only when a live (active or building)
ongoing criterion reads the persona (KIND_PERSONA: a `persona(...)` test) or
tags it (KIND_PIN: a lifted pin-out no longer wins there).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, select

from personatag.criteria import from_json, references
from personatag.definitions.criteria import STATUS_ACTIVE, STATUS_BUILDING
from personatag.domain import Mode
from personatag.store import Store, changefeed


def watched(conn: Connection, store: Store, kind: str, persona_pk: int) -> str | None:
    """The key of persona `persona_pk` when a live ongoing criterion reads it
    (KIND_PERSONA) or tags it (KIND_PIN); else None, and a move of its
    memberships needs no change in the feed."""
    t = store.tables
    c = t.criteria
    live = (c.c.mode == Mode.ONGOING.value) & c.c.status.in_((STATUS_ACTIVE, STATUS_BUILDING))
    key = conn.scalar(select(t.personas.c.key).where(t.personas.c.pk == persona_pk))
    if key is None:
        return None
    if kind == changefeed.KIND_PIN:
        found = conn.scalar(select(c.c.pk).where(live, c.c.persona_pk == persona_pk).limit(1))
        return key if found is not None else None
    # Only criteria whose AST holds a persona(...) test are parsed.
    for ast in conn.scalars(select(c.c.ast).where(live, c.c.ast.contains('"persona"'))):
        try:
            if key in references(from_json(json.loads(ast))).personas:
                return str(key)
        except Exception:  # noqa: S112 - a criterion broken by a schema change reads nothing
            continue
    return None


def record_moved(conn: Connection, store: Store, kind: str, persona_pk: int, pks: Any) -> bool:
    """Tell the stream that persona `persona_pk` moved outside it for contacts
    `pks` (an iterable of pks, or a callable returning them, called only when
    needed): one feed row of `kind` (KIND_PERSONA or KIND_PIN), only when a live
    ongoing criterion reads (tags) the persona. Returns whether a row was written."""
    key = watched(conn, store, kind, persona_pk)
    if key is None:
        return False
    changefeed.record(conn, store, kind, pks() if callable(pks) else pks, [key])
    return True
