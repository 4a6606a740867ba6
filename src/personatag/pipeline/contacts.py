"""One contact, explained: attributes, personas with their sources, history."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from personatag.domain import CUSTOM_COLUMN_PREFIX, SOURCE_ADHOC, SOURCE_MANUAL
from personatag.pipeline.audit import log_for_contact
from personatag.pipeline.pins import contact_pk
from personatag.store import Store


def _iso(value: Any) -> Any:
    return value.isoformat().replace("+00:00", "Z") if hasattr(value, "isoformat") else value


def _source_name(source: int) -> str:
    if source == SOURCE_ADHOC:
        return "adhoc"
    if source == SOURCE_MANUAL:
        return "manual"
    return "criterion"


def show_contact(store: Store, contact_id: str, *, log_limit: int = 20) -> dict[str, Any]:
    t = store.tables
    with store.read() as conn:
        cpk = contact_pk(conn, store, contact_id)
        row = conn.execute(select(t.contacts).where(t.contacts.c.pk == cpk)).one()._mapping
        attributes = {}
        for key, value in row.items():
            if key == "pk":
                continue
            name = key.removeprefix(CUSTOM_COLUMN_PREFIX)
            attributes[name] = _iso(value)
        persona_keys = {
            pk: key for pk, key in conn.execute(select(t.personas.c.pk, t.personas.c.key))
        }
        requests = t.requests
        crit = t.criteria
        m = t.memberships
        pins_t = t.pins
        rows = conn.execute(
            select(
                m.c.persona_pk,
                m.c.source,
                m.c.since,
                requests.c.request_id,
                func.coalesce(requests.c.submitted_by, pins_t.c.created_by).label("submitted_by"),
                crit.c.name,
                crit.c.version,
            )
            .outerjoin(requests, requests.c.pk == m.c.request_pk)
            .outerjoin(crit, crit.c.pk == m.c.criterion_pk)
            .outerjoin(
                pins_t,
                (pins_t.c.persona_pk == m.c.persona_pk)
                & (pins_t.c.contact_pk == m.c.contact_pk)
                & (m.c.source == SOURCE_MANUAL),
            )
            .where(m.c.contact_pk == cpk)
            .order_by(m.c.persona_pk, m.c.since)
        )
        personas: dict[str, dict[str, Any]] = {}
        for r in rows:
            key = persona_keys[r.persona_pk]
            entry = personas.setdefault(
                key, {"persona": key, "since": _iso(r.since), "sources": []}
            )
            entry["sources"].append(
                {
                    "source": _source_name(r.source),
                    "since": _iso(r.since),
                    "request_id": r.request_id,
                    "criterion": f"{r.name}@{r.version}" if r.name else None,
                    "by": r.submitted_by,
                }
            )
        pins = [
            {
                "persona": persona_keys[r.persona_pk],
                "pin": r.kind,
                "at": _iso(r.created_at),
                "by": r.created_by,
                "reason": r.reason,
            }
            for r in conn.execute(select(t.pins).where(t.pins.c.contact_pk == cpk))
        ]
        log = []
        for e in log_for_contact(conn, store, cpk, limit=log_limit):
            req_id = None
            if e["request_pk"] is not None:
                req_id = conn.scalar(
                    select(requests.c.request_id).where(requests.c.pk == e["request_pk"])
                )
            criterion = None
            if e["criterion_pk"] is not None:
                cr = conn.execute(
                    select(crit.c.name, crit.c.version).where(crit.c.pk == e["criterion_pk"])
                ).first()
                criterion = f"{cr.name}@{cr.version}" if cr else None
            log.append(
                {
                    "at": _iso(e["at"]),
                    "persona": persona_keys.get(e["persona_pk"]),
                    "change": e["change"],
                    "source": _source_name(e["source"]),
                    "request_id": req_id,
                    "criterion": criterion,
                    "by": e["actor"],
                    "reason": e["reason"],
                    "bulk": e["bulk_count"] is not None,
                }
            )
        return {
            "id": contact_id,
            "attributes": attributes,
            "personas": sorted(personas.values(), key=lambda p: p["persona"]),
            "pins": pins,
            "log": log,
        }
