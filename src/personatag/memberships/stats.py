"""Enters and exits per UTC day, counted in SQL from the membership log (read
only: the log's writer is memberships.log). A bulk entry counts its contacts
(`bulk_count`), a single entry one."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, case, func, select, type_coerce

from personatag.domain import Change
from personatag.store import Store
from personatag.store.types import DAY_US, bucket_start, time_bucket


def moves_daily(
    store: Store, first_day: int, last_day: int, persona_pk: int | None = None
) -> list[dict[str, Any]]:
    """Contacts that entered and exited (any persona, or `persona_pk`) per UTC
    day numbered `first_day`..`last_day` (days since the epoch), oldest first,
    zeros on quiet days."""
    log = store.tables.membership_log
    day = time_bucket(log.c.at, DAY_US)
    moved = func.coalesce(log.c.bulk_count, 1)
    query = (
        select(
            day.label("day"),
            func.sum(case((log.c.change == Change.ENTER.value, moved), else_=0)).label("entered"),
            func.sum(case((log.c.change == Change.EXIT.value, moved), else_=0)).label("exited"),
        )
        .where(type_coerce(log.c.at, BigInteger()) >= first_day * DAY_US)
        .group_by(day)
    )
    if persona_pk is not None:
        query = query.where(log.c.persona_pk == persona_pk)
    with store.read() as conn:
        found = {int(r.day): r for r in conn.execute(query)}
    return [
        {
            "day": bucket_start(n, DAY_US).strftime("%Y-%m-%d"),
            "entered": int(found[n].entered or 0) if n in found else 0,
            "exited": int(found[n].exited or 0) if n in found else 0,
        }
        for n in range(first_day, last_day + 1)
    ]
