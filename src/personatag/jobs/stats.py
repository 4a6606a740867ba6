"""Jobs and requests over time, counted in SQL per UTC day (or hour): what the
monitoring charts and the dashboard show.

Every series is dense: one row per day (or hour) of the span asked for, the
newest last, zeros where nothing happened, so a chart's x axis is time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, and_, case, func, select, type_coerce

from personatag.domain import JobStatus, utcnow
from personatag.store import Store
from personatag.store.types import DAY_US, bucket_start, time_bucket, to_micros

OUTCOMES = (JobStatus.SUCCEEDED, JobStatus.PARTIAL, JobStatus.FAILED, JobStatus.CANCELLED)


def span(count: int, size_us: int, now: datetime | None = None) -> list[int]:
    """The bucket numbers of the last `count` days (or hours), oldest first,
    ending with the one `now` is in."""
    last = to_micros(now or utcnow()) // size_us
    return list(range(last - count + 1, last + 1))


def label(number: int, size_us: int) -> str:
    """A bucket as the charts label it: `2026-12-05` for a day, `2026-12-05 14:00` for an hour."""
    start = bucket_start(number, size_us)
    return start.strftime("%Y-%m-%d") if size_us == DAY_US else start.strftime("%Y-%m-%d %H:00")


def jobs_daily(store: Store, days: int, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per UTC day of the last `days` (by when the job ended): how many ended in
    each outcome, and the mean and longest run time in seconds (started to
    finished; None on a day without a job that ran)."""
    j = store.tables.jobs
    buckets = span(days, DAY_US, now)
    day = time_bucket(j.c.finished_at, DAY_US)
    ran = type_coerce(j.c.finished_at, BigInteger()) - type_coerce(j.c.started_at, BigInteger())
    counted = [
        func.sum(case((j.c.status == status.value, 1), else_=0)).label(status.value)
        for status in OUTCOMES
    ]
    query = (
        select(
            day.label("day"),
            *counted,
            func.avg(case((j.c.started_at.is_not(None), ran))).label("mean_us"),
            func.max(case((j.c.started_at.is_not(None), ran))).label("max_us"),
        )
        .where(
            j.c.finished_at.is_not(None),
            type_coerce(j.c.finished_at, BigInteger()) >= buckets[0] * DAY_US,
        )
        .group_by(day)
    )
    with store.read() as conn:
        found = {int(r.day): r._mapping for r in conn.execute(query)}
    out = []
    for number in buckets:
        row = found.get(number)
        entry: dict[str, Any] = {"day": label(number, DAY_US)}
        for status in OUTCOMES:
            entry[status.value] = int(row[status.value] or 0) if row else 0
        entry["mean_seconds"] = _seconds(row["mean_us"]) if row else None
        entry["max_seconds"] = _seconds(row["max_us"]) if row else None
        out.append(entry)
    return out


def _seconds(micros: Any) -> float | None:
    return None if micros is None else round(float(micros) / 1e6, 3)


def requests_over_time(
    store: Store, count: int, size_us: int = DAY_US, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Requests received per UTC day (or hour, `size_us=HOUR_US`) of the last
    `count`: all of them, and how many of those were dry runs."""
    r = store.tables.requests
    buckets = span(count, size_us, now)
    bucket = time_bucket(r.c.created_at, size_us)
    query = (
        select(
            bucket.label("bucket"),
            func.count().label("requests"),
            func.sum(case((r.c.dry_run.is_(True), 1), else_=0)).label("dry_runs"),
        )
        .where(type_coerce(r.c.created_at, BigInteger()) >= buckets[0] * size_us)
        .group_by(bucket)
    )
    with store.read() as conn:
        found = {int(row.bucket): row for row in conn.execute(query)}
    key = "day" if size_us == DAY_US else "hour"
    return [
        {
            key: label(n, size_us),
            "requests": int(found[n].requests) if n in found else 0,
            "dry_runs": int(found[n].dry_runs or 0) if n in found else 0,
        }
        for n in buckets
    ]


def recent_requests(store: Store, limit: int = 8) -> list[dict[str, Any]]:
    """The newest requests with their persona, who sent them, and their newest
    job (id and status; None before the job is made)."""
    t = store.tables
    later = t.jobs.alias("later")
    newest_job = (
        select(func.max(later.c.pk))
        .where(later.c.request_pk == t.requests.c.pk)
        .correlate(t.requests)
        .scalar_subquery()
    )
    query = (
        select(
            t.requests.c.request_id,
            t.requests.c.submitted_by,
            t.requests.c.action,
            t.requests.c.dry_run,
            t.requests.c.created_at,
            t.personas.c.key.label("persona"),
            t.jobs.c.pk.label("job"),
            t.jobs.c.status,
        )
        .outerjoin(t.personas, t.personas.c.pk == t.requests.c.persona_pk)
        .outerjoin(t.jobs, t.jobs.c.pk == newest_job)
        .order_by(t.requests.c.pk.desc())
        .limit(limit)
    )
    with store.read() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def jobs_now(store: Store, now: datetime | None = None) -> dict[str, int]:
    """Jobs queued and running now, and those that ended today (UTC) by outcome."""
    j = store.tables.jobs
    today = span(1, DAY_US, now)[0] * DAY_US
    query = select(
        func.sum(case((j.c.status == JobStatus.QUEUED.value, 1), else_=0)).label("queued"),
        func.sum(case((j.c.status == JobStatus.RUNNING.value, 1), else_=0)).label("running"),
        *[
            func.sum(
                case(
                    (
                        and_(
                            j.c.status == status.value,
                            type_coerce(j.c.finished_at, BigInteger()) >= today,
                        ),
                        1,
                    ),
                    else_=0,
                )
            ).label(status.value)
            for status in OUTCOMES
        ],
    )
    with store.read() as conn:
        row = conn.execute(query).one()._mapping
    return {k: int(v or 0) for k, v in row.items()}
