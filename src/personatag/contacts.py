"""One contact, explained: attributes, personas with their sources, history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from personatag import audit_log
from personatag.domain import (
    CUSTOM_COLUMN_PREFIX,
    SOURCE_ADHOC,
    SOURCE_MANUAL,
    STANDARD_CONTACT_FIELDS,
    FieldType,
    utcnow,
)
from personatag.errors import InputError, NotFoundError
from personatag.importer.values import TEXT_PARSERS, BadValue, check_text, json_value
from personatag.memberships.log import log_for_contact
from personatag.memberships.pins import contact_pk
from personatag.store import Store, changefeed, versions
from personatag.store.backends.base import search_key
from personatag.times import iso_any


def _source_name(source: int) -> str:
    if source == SOURCE_ADHOC:
        return "adhoc"
    if source == SOURCE_MANUAL:
        return "manual"
    return "criterion"


def show_contact(store: Store, contact_id: str, *, log_limit: int = 20) -> dict[str, Any]:
    t = store.tables
    with store.read(lenient=True) as conn:
        cpk = contact_pk(conn, store, contact_id)
        row = conn.execute(select(t.contacts).where(t.contacts.c.pk == cpk)).one()._mapping
        attributes = {}
        for key, value in row.items():
            if key == "pk":
                continue
            name = key.removeprefix(CUSTOM_COLUMN_PREFIX)
            attributes[name] = iso_any(value)
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
                crit.c.expr,
                crit.c.mode,
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
                key, {"persona": key, "since": iso_any(r.since), "sources": []}
            )
            entry["sources"].append(
                {
                    "source": _source_name(r.source),
                    "since": iso_any(r.since),
                    "request_id": r.request_id,
                    "criterion": f"{r.name}@{r.version}" if r.name else None,
                    "criterion_name": r.name,
                    "criterion_text": r.expr,
                    "criterion_mode": r.mode,
                    "by": r.submitted_by,
                }
            )
        pins = [
            {
                "persona": persona_keys[r.persona_pk],
                "pin": r.kind,
                "at": iso_any(r.created_at),
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
            criterion = criterion_name = None
            if e["criterion_pk"] is not None:
                cr = conn.execute(
                    select(crit.c.name, crit.c.version).where(crit.c.pk == e["criterion_pk"])
                ).first()
                criterion = f"{cr.name}@{cr.version}" if cr else None
                criterion_name = cr.name if cr else None
            log.append(
                {
                    "at": iso_any(e["at"]),
                    "persona": persona_keys.get(e["persona_pk"]),
                    "change": e["change"],
                    "source": _source_name(e["source"]),
                    "request_id": req_id,
                    "criterion": criterion,
                    "criterion_name": criterion_name,
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


def recent_activity(store: Store, contact_id: str, *, limit: int = 10) -> dict[str, Any]:
    """The contact's newest reads (with the report's id and title) and logins,
    and how many of each it has in all."""
    t = store.tables
    r, p, lg = t.reads, t.publications, t.logins
    with store.read(lenient=True) as conn:
        cpk = contact_pk(conn, store, contact_id)
        reads = [
            {"at": iso_any(row.read_at), "publication": row.id, "title": row.title}
            for row in conn.execute(
                select(r.c.read_at, p.c.id, p.c.title)
                .join(p, p.c.pk == r.c.publication_pk)
                .where(r.c.contact_pk == cpk)
                .order_by(r.c.read_at.desc())
                .limit(limit)
            )
        ]
        logins = [
            iso_any(at)
            for at in conn.scalars(
                select(lg.c.login_at)
                .where(lg.c.contact_pk == cpk)
                .order_by(lg.c.login_at.desc())
                .limit(limit)
            )
        ]
        n_reads = conn.scalar(select(func.count()).where(r.c.contact_pk == cpk))
        n_logins = conn.scalar(select(func.count()).where(lg.c.contact_pk == cpk))
    return {"reads": reads, "logins": logins, "n_reads": n_reads, "n_logins": n_logins}


def parse_assignments(items: list[str]) -> dict[str, str]:
    """`field=value` words (CLI) -> {field: text}; an empty value sets NULL."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"expected field=value, got {item!r}")
        name = name.strip()
        if name in out:
            raise InputError(f"field {name!r} is given twice")
        out[name] = value
    return out


def set_contact(
    store: Store,
    contact_id: str,
    values: dict[str, Any],
    *,
    actor: str | None = None,
    source: str = "cli",
    create: bool = False,
) -> dict[str, Any]:
    """Update (or, with `create`, insert) one contact's fields.

    Values are text (read like CSV cells: empty is NULL, lists `;`-separated)
    or JSON values (read like JSON Lines). The change goes into the change
    feed in the same transaction. Returns {"id", "created", "changed": [fields]}.
    """
    if not values:
        raise InputError("nothing to set: give at least one field=value")
    try:
        check_text(contact_id)
    except BadValue as exc:
        raise InputError(f"contact id: {exc}") from None
    fields = dict(STANDARD_CONTACT_FIELDS)
    fields.update(store.custom_attributes())
    typed: dict[str, Any] = {}
    for name, value in values.items():
        if name == "id":
            raise InputError("a contact's id cannot be changed")
        ft = fields.get(name)
        if ft is None:
            known = ", ".join(sorted(n for n in fields if n != "id"))
            raise InputError(f"unknown contact field {name!r}: use one of {known}")
        try:
            check_text(value)
            if isinstance(value, str) and ft is not FieldType.STRING:
                typed[name] = None if value == "" else TEXT_PARSERS[ft](value)
            else:
                typed[name] = json_value(ft, value)
        except BadValue as exc:
            raise InputError(f"field {name!r}: {exc}") from None
    if any(
        CUSTOM_COLUMN_PREFIX + n not in store.tables.contacts.c
        for n in typed
        if n not in STANDARD_CONTACT_FIELDS
    ):
        store.refresh()  # an attribute was declared since the tables were described
    c = store.tables.contacts
    columns = {
        (name if name in STANDARD_CONTACT_FIELDS else CUSTOM_COLUMN_PREFIX + name): value
        for name, value in typed.items()
    }
    if "updated_at" not in typed:
        columns["updated_at"] = utcnow()
    with store.write() as conn:
        found = conn.scalar(select(c.c.pk).where(c.c.id == contact_id))
        created = found is None
        if found is None:
            if not create:
                raise NotFoundError(f"unknown contact {contact_id!r}")
            columns.setdefault("created_at", utcnow())
            inserted = conn.execute(c.insert().values(id=contact_id, **columns))
            pk = int(inserted.inserted_primary_key[0])  # type: ignore[index]
        else:
            pk = int(found)
            conn.execute(c.update().where(c.c.pk == pk).values(**columns))
        written = {*typed, "updated_at"}
        changefeed.record(conn, store, changefeed.KIND_CONTACT, [pk], None if created else written)
        versions.bump(conn, store.tables, ["contacts"])
        audit_log.record(
            conn,
            store,
            actor=actor,
            action="contact.create" if created else "contact.set",
            target=contact_id,
            detail={"fields": sorted(typed)},
            source=source,
        )
    return {"id": contact_id, "created": created, "changed": sorted(typed)}


def add_events(
    store: Store,
    contact_id: str,
    *,
    reads: Sequence[tuple[str, datetime]] = (),
    logins: Sequence[datetime] = (),
) -> dict[str, int]:
    """Record reads (publication id, read_at) and logins of one contact."""
    t = store.tables
    with store.write() as conn:
        cpk = contact_pk(conn, store, contact_id)
        added_reads = added_logins = 0
        read_pubs: set[int] = set()
        for pub_id, at in reads:
            ppk = conn.scalar(select(t.publications.c.pk).where(t.publications.c.id == pub_id))
            if ppk is None:
                raise NotFoundError(f"unknown publication {pub_id!r}")
            exists_ = conn.scalar(
                select(func.count()).where(
                    t.reads.c.contact_pk == cpk,
                    t.reads.c.read_at == at,
                    t.reads.c.publication_pk == ppk,
                )
            )
            if not exists_:
                conn.execute(
                    t.reads.insert().values(contact_pk=cpk, read_at=at, publication_pk=ppk)
                )
                added_reads += 1
                read_pubs.add(int(ppk))
        for at in logins:
            exists_ = conn.scalar(
                select(func.count()).where(t.logins.c.contact_pk == cpk, t.logins.c.login_at == at)
            )
            if not exists_:
                conn.execute(t.logins.insert().values(contact_pk=cpk, login_at=at))
                added_logins += 1
        if logins:
            newest = max(logins)
            c = t.contacts
            conn.execute(
                c.update()
                .where(c.c.pk == cpk)
                .where((c.c.last_login_at.is_(None)) | (c.c.last_login_at < newest))
                .values(last_login_at=newest)
            )
        if added_reads:
            changefeed.record(
                conn, store, changefeed.KIND_READ, [cpk], changefeed.publication_fields(read_pubs)
            )
            versions.bump(conn, t, ["reads"])
        if added_logins:
            changefeed.record(conn, store, changefeed.KIND_LOGIN, [cpk])
            changefeed.record(conn, store, changefeed.KIND_CONTACT, [cpk], ["last_login_at"])
            versions.bump(conn, t, ["logins", "contacts"])
    return {"reads": added_reads, "logins": added_logins}


#: How deep contact search pages: beyond it, narrow the query.
SEARCH_MAX_OFFSET = 10_000
SEARCH_MAX_LIMIT = 100


def search_contacts(
    store: Store, query: str, *, limit: int = 20, offset: int = 0
) -> dict[str, Any]:
    """Contacts whose id is `query` (trimmed, any case), or whose first name,
    last name, "first last", email or firm starts with it (any case).

    Id matches come first, then names, emails and firms, each in alphabetical
    order; a contact is listed once. Every branch is one range of a
    `search_key` index, so a page costs about offset + limit index rows.
    Returns {"query", "items", "limit", "offset", "next_offset" (None: last page)}.
    """
    words = query.split()
    text = " ".join(words)
    if not text:
        raise InputError("q: give a contact id, a name, an email or a firm, e.g. q=smith")
    if len(text) > 200:
        raise InputError("q: at most 200 characters")
    try:
        check_text(text)
    except BadValue as exc:
        raise InputError(f"q: {exc}") from None
    if not 1 <= limit <= SEARCH_MAX_LIMIT:
        raise InputError(f"limit: between 1 and {SEARCH_MAX_LIMIT}, got {limit}")
    if not 0 <= offset <= SEARCH_MAX_OFFSET:
        raise InputError(
            f"offset: between 0 and {SEARCH_MAX_OFFSET:,}, got {offset}: narrow the query"
        )
    backend = store.backend
    folded = backend.search_fold(text)
    c = store.tables.contacts
    # (what matched, condition, order before pk): one index range each
    branches: list[tuple[str, Any, Any]] = [
        ("id", search_key(c.c.id) == folded, None),
        ("name", backend.prefix_match(c.c.first_name, folded), search_key(c.c.first_name)),
        ("name", backend.prefix_match(c.c.last_name, folded), search_key(c.c.last_name)),
    ]
    if len(words) > 1:
        first, rest = folded.split(" ", 1)
        # first name equal: pk order is the index's (SQLite sorts if asked for
        # the key too), and one first name's range is short to filter
        both = (search_key(c.c.first_name) == first) & backend.prefix_match(c.c.last_name, rest)
        branches.append(("name", both, None))
    branches += [
        ("email", backend.prefix_match(c.c.email, folded), search_key(c.c.email)),
        ("firm", backend.prefix_match(c.c.firm, folded), search_key(c.c.firm)),
    ]
    need = offset + limit + 1
    found: dict[int, dict[str, Any]] = {}
    columns = (c.c.pk, c.c.id, c.c.first_name, c.c.last_name, c.c.email, c.c.firm, c.c.region)
    with store.read(lenient=True) as conn:
        for matched, where, key in branches:
            if len(found) >= need:
                break
            rows = conn.execute(
                select(*columns)
                .where(where)
                .order_by(*(() if key is None else (key,)), c.c.pk)
                .limit(need + len(found))
            )
            for r in rows:
                if r.pk not in found and len(found) < need:
                    found[r.pk] = {
                        "id": r.id,
                        "name": " ".join(p for p in (r.first_name, r.last_name) if p),
                        "email": r.email,
                        "firm": r.firm,
                        "region": r.region,
                        "matched": matched,
                        "personas": [],
                    }
        page = dict(list(found.items())[offset : offset + limit])
        if page:
            t = store.tables
            held = conn.execute(
                select(t.membership_rows.c.contact_pk, t.personas.c.key)
                .distinct()
                .join(t.personas, t.personas.c.pk == t.membership_rows.c.persona_pk)
                .where(t.membership_rows.c.contact_pk.in_(list(page)))
                .order_by(t.personas.c.key)
            )
            for contact, persona in held:
                page[contact]["personas"].append(persona)
    return {
        "query": text,
        "items": list(page.values()),
        "limit": limit,
        "offset": offset,
        "next_offset": offset + limit if len(found) > offset + limit else None,
    }
