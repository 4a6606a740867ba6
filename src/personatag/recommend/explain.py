"""Which feed rules moved a report in a contact's feed, to name them beside it.

The model folds every boost into one score; this reads the rules again for the
few reports shown: a boost of a persona the contact holds whose expression the
report satisfies, a pin of the report, a filter it passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select

from personatag.recommend.rules import predicate
from personatag.store.db import Store

#: Rule kinds that can move one report (a cap acts on a series, not a report).
_MOVING = ("boost", "filter", "pin")


def rules_behind(
    store: Store, contact_pk: int, publication_pks: Sequence[int], as_of: datetime
) -> dict[int, list[dict[str, Any]]]:
    """publication pk -> [{"id", "persona", "kind", "expr", "weight"}]: the rules
    of the contact's (active) personas that moved it, by rule id. Expired pins
    (at `as_of`) are left out, as the model leaves them out."""
    t = store.tables
    r, p, m, pub = t.feed_rules, t.personas, t.membership_rows, t.publications
    out: dict[int, list[dict[str, Any]]] = {pk: [] for pk in publication_pks}
    if not publication_pks:
        return out
    with store.read() as conn:
        held = select(m.c.persona_pk).where(m.c.contact_pk == contact_pk)
        rules = conn.execute(
            select(r, p.c.key)
            .join(p, p.c.pk == r.c.persona_pk)
            .where(r.c.persona_pk.in_(held), p.c.archived_at.is_(None), r.c.kind.in_(_MOVING))
            .order_by(r.c.pk)
        ).all()
        if not rules:
            return out
        rows = {
            row.pk: dict(row._mapping)
            for row in conn.execute(select(pub).where(pub.c.pk.in_(list(publication_pks))))
        }
    for rule in rules:
        entry = {
            "id": rule.pk,
            "persona": rule.key,
            "kind": rule.kind,
            "expr": rule.expr,
            "weight": rule.weight,
        }
        if rule.kind == "pin":
            if rule.publication_pk in out and (rule.expires_at is None or rule.expires_at > as_of):
                out[rule.publication_pk].append(entry)
            continue
        test = predicate(rule.expr, as_of)
        for pk, fields in rows.items():
            if test(fields):
                out[pk].append(entry)
    return out
