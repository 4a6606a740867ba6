"""Preview: whom a criterion catches now, without writing anything."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select

from personatag.criteria import compile_criterion, compile_sql
from personatag.definitions.personas import get_persona, persona_pks
from personatag.domain import PinKind, check_as_of, utcnow
from personatag.memberships import rules
from personatag.store import Store
from personatag.store.matchset import is_heavy, materialize


def preview(
    store: Store,
    expr: str,
    *,
    persona: str | None = None,
    as_of: datetime | None = None,
    sample_size: int = 10,
) -> dict[str, Any]:
    """{"count", "sample", "would_enter", "would_exit"} for `expr` at `as_of`.

    would_enter: matched contacts that do not hold the persona and are not
    pinned out (what `tag` would add). would_exit: members that do not match
    and are not pinned in (who would leave if the criterion alone defined the
    persona, as an ongoing criterion with exit=remove does; an ad hoc `tag`
    never removes anyone). Without a persona nobody holds it: everyone matched
    would enter.
    """
    t = store.tables
    c = t.contacts
    as_of = check_as_of(as_of or utcnow())
    with store.read() as conn:
        catalog = store.catalog(conn)
        compiled = compile_criterion(expr, catalog)
        cond = compile_sql(
            compiled.ast,
            tables=t,
            catalog=catalog,
            persona_pks=persona_pks(conn, store),
            as_of=as_of,
            dialect=store.dialect,
        )

        held = None
        # Against a persona the match is used in four counts: evaluate it once
        # (an ilike folds every title in Python on SQLite: ~0.6 s per 1M a pass).
        if is_heavy(compiled.references) or persona is not None:
            held = materialize(conn, store, cond)
            cond = held.contains(c.c.pk)

        def count(where: Any) -> int:
            return int(conn.scalar(select(func.count()).select_from(c).where(where)) or 0)

        total = count(cond)
        sample = list(conn.scalars(select(c.c.id).where(cond).order_by(c.c.pk).limit(sample_size)))
        if persona is None:
            result = {"count": total, "sample": sample, "would_enter": total, "would_exit": 0}
        else:
            p = get_persona(conn, store, persona).pk
            # The writers' rules (memberships.rules), counted instead of applied.
            members = rules.members(t, p)
            pinned = {kind: rules.pinned(t, p, kind) for kind in PinKind}
            # Driven by the member and pin sets, not by another scan of everyone.
            not_pinned_in = c.c.pk.not_in(pinned[PinKind.IN])
            held_and_matched = count(and_(cond, c.c.pk.in_(members)))
            blocked = count(and_(cond, c.c.pk.in_(pinned[PinKind.OUT])))
            staying_members = count(and_(c.c.pk.in_(members), not_pinned_in))
            staying_matched = count(and_(cond, c.c.pk.in_(members), not_pinned_in))
            result = {
                "count": total,
                "sample": sample,
                "would_enter": total - held_and_matched - blocked,
                "would_exit": staying_members - staying_matched,
            }
        if held is not None:
            held.drop(conn)
        return result
