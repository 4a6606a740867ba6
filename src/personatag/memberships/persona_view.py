"""What one persona holds and how it got there, read for its page: members
(paged, searchable, streamed for export), pins, the newest log entries and
the size per day from the membership log. Read-only.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    case,
    func,
    or_,
    select,
    type_coerce,
)

from personatag.domain import Change, utcnow
from personatag.errors import InputError
from personatag.store import Store

DAY_US = 86_400_000_000  # log times are microseconds since the epoch (store/types.py)
MAX_DAYS = 3660
MAX_QUERY_CHARS = 200
MEMBER_COLUMNS = ("id", "first_name", "last_name", "email", "job_title", "firm", "region")


@dataclass(frozen=True)
class SizeHistory:
    """Per UTC day, oldest first: the size at the end of the day and the
    contacts that entered and exited during it."""

    days: list[date]
    size: list[int]
    entered: list[int]
    exited: list[int]

    def as_json(self) -> dict[str, Any]:
        return {
            "days": [d.isoformat() for d in self.days],
            "size": self.size,
            "entered": self.entered,
            "exited": self.exited,
        }


def size_history(
    conn: Connection, store: Store, persona_pk: int, days: int, *, today: date | None = None
) -> SizeHistory:
    """The persona's daily size over the `days` UTC days ending `today`, from
    the membership log alone (a bulk entry counts its contacts).

    One aggregate query: the store groups the log by day, and every entry
    before the window collapses into one bucket, the size the window starts
    from. Entries dated after `today` (a clock ahead) count on `today`.
    """
    if not 1 <= days <= MAX_DAYS:
        raise InputError(f"invalid days {days}: use 1 to {MAX_DAYS}")
    last = (today or utcnow().date()).toordinal() - date(1970, 1, 1).toordinal()
    first = last - days + 1
    log = store.tables.membership_log
    day = type_coerce(log.c.at, BigInteger()) // DAY_US
    weight = func.coalesce(log.c.bulk_count, 1)
    rows = (
        select(
            case((day < first, first - 1), (day > last, last), else_=day).label("day"),
            case((log.c.change == Change.ENTER.value, weight), else_=0).label("entered"),
            case((log.c.change == Change.EXIT.value, weight), else_=0).label("exited"),
        )
        .where(log.c.persona_pk == persona_pk)
        .subquery()
    )
    query = select(rows.c.day, func.sum(rows.c.entered), func.sum(rows.c.exited)).group_by(
        rows.c.day
    )
    per_day = {int(d): (int(e or 0), int(x or 0)) for d, e, x in conn.execute(query)}
    before_in, before_out = per_day.pop(first - 1, (0, 0))
    size = before_in - before_out
    out = SizeHistory([], [], [], [])
    epoch = date(1970, 1, 1)
    for d in range(first, last + 1):
        entered, exited = per_day.get(d, (0, 0))
        size += entered - exited
        out.days.append(epoch + timedelta(days=d))
        out.size.append(size)
        out.entered.append(entered)
        out.exited.append(exited)
    return out


def recent_changes(
    conn: Connection, store: Store, persona_pk: int, *, limit: int = 50
) -> list[dict[str, Any]]:
    """The persona's newest log entries, newest first: when, which contact (None
    for a bulk entry, with `count` contacts), enter or exit, and why (request,
    criterion version, actor, reason)."""
    t = store.tables
    log = t.membership_log
    query = (
        select(
            log.c.seq,
            log.c.at,
            log.c.change,
            log.c.bulk_count,
            log.c.actor,
            log.c.reason,
            t.contacts.c.id.label("contact"),
            t.requests.c.request_id,
            t.criteria.c.name.label("criterion"),
            t.criteria.c.version.label("criterion_version"),
        )
        .select_from(log)
        .outerjoin(t.contacts, t.contacts.c.pk == log.c.contact_pk)
        .outerjoin(t.requests, t.requests.c.pk == log.c.request_pk)
        .outerjoin(t.criteria, t.criteria.c.pk == log.c.criterion_pk)
        .where(log.c.persona_pk == persona_pk)
        .order_by(log.c.seq.desc())
        .limit(limit)
    )
    return [
        {
            "seq": r.seq,
            "at": r.at,
            "change": r.change,
            "contact": r.contact,
            "count": r.bulk_count or 1,
            "request_id": r.request_id,
            "criterion": None if r.criterion is None else f"{r.criterion}@{r.criterion_version}",
            "criterion_name": r.criterion,
            "actor": r.actor,
            "reason": r.reason,
        }
        for r in conn.execute(query)
    ]


def pins_of(
    conn: Connection, store: Store, persona_pk: int, *, limit: int = 100
) -> tuple[int, list[dict[str, Any]]]:
    """How many pins the persona has, and the newest `limit` of them."""
    t = store.tables
    p = t.pins
    total = conn.scalar(select(func.count()).select_from(p).where(p.c.persona_pk == persona_pk))
    query = (
        select(p.c.kind, p.c.created_at, p.c.created_by, p.c.reason, t.contacts.c.id)
        .join(t.contacts, t.contacts.c.pk == p.c.contact_pk)
        .where(p.c.persona_pk == persona_pk)
        .order_by(p.c.created_at.desc(), t.contacts.c.id)
        .limit(limit)
    )
    return int(total or 0), [dict(r._mapping) for r in conn.execute(query)]


def _members_query(conn: Connection, store: Store, persona_pk: int, limit: int | None) -> Any:
    """The persona's members in id order, planned for how dense they are.

    Walking contacts in id order and probing the membership key finds a page
    of a dense persona at once, but walks every contact for a sparse one;
    collecting the members first and sorting them costs their number. Walk
    when the expected walk (a page's share of all contacts) is the shorter.
    """
    t = store.tables
    c, m = t.contacts, t.membership_rows
    members = conn.scalar(select(func.count()).select_from(m).where(m.c.persona_pk == persona_pk))
    contacts = conn.scalar(select(func.max(c.c.pk))) or 0
    members = int(members or 0)
    walk = members > 0 and (limit or members) * contacts < members * members
    held: ColumnElement[bool]
    if walk:
        held = (
            select(m.c.contact_pk)
            .where(m.c.persona_pk == persona_pk, m.c.contact_pk == c.c.pk)
            .exists()
        )
    else:
        held = c.c.pk.in_(select(m.c.contact_pk).where(m.c.persona_pk == persona_pk))
    return select(*(c.c[name] for name in MEMBER_COLUMNS)).where(held).order_by(c.c.id)


def members_page(
    conn: Connection,
    store: Store,
    persona_pk: int,
    *,
    q: str | None = None,
    after: str | None = None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of members in id order, and the `after` of the next page (None:
    the last page). `q` keeps contacts whose id, first name, last name or
    "first last" starts with it, ignoring case and surrounding spaces."""
    c = store.tables.contacts
    query = _members_query(conn, store, persona_pk, limit).limit(limit + 1)
    wanted = (q or "").strip()
    if len(wanted) > MAX_QUERY_CHARS:
        raise InputError(f"the search is too long: at most {MAX_QUERY_CHARS} characters")
    if wanted:
        folded = wanted.lower()
        full = func.lower(c.c.first_name + " " + c.c.last_name)
        query = query.where(
            or_(
                *(
                    func.lower(col).startswith(folded, autoescape=True)
                    for col in (c.c.id, c.c.first_name, c.c.last_name)
                ),
                full.startswith(folded, autoescape=True),
            )
        )
    if after is not None:
        query = query.where(c.c.id > after)
    rows = [dict(r._mapping) for r in conn.execute(query)]
    more = len(rows) > limit
    return rows[:limit], rows[limit - 1]["id"] if more else None


def iter_members(
    store: Store, persona_pk: int, *, batch: int = 5000
) -> Generator[tuple[Any, ...], None, None]:
    """Every member's MEMBER_COLUMNS in id order, read through one cursor in
    batches (memory stays flat for a persona of millions). One read
    transaction: the rows are the members at its start."""
    with store.read() as conn:
        query = _members_query(conn, store, persona_pk, None)
        rows = conn.execution_options(yield_per=batch).execute(query)
        for row in rows:
            yield tuple(row)


def since_of(
    conn: Connection, store: Store, persona_pk: int, contact_ids: list[str]
) -> dict[str, datetime]:
    """When each of these members first held the persona through a source it
    still holds (the oldest `since` of its membership rows)."""
    if not contact_ids:
        return {}
    t = store.tables
    m = t.memberships
    query = (
        select(t.contacts.c.id, func.min(m.c.since))
        .join(t.contacts, t.contacts.c.pk == m.c.contact_pk)
        .where(m.c.persona_pk == persona_pk, t.contacts.c.id.in_(contact_ids))
        .group_by(t.contacts.c.id)
    )
    return {cid: since for cid, since in conn.execute(query)}
