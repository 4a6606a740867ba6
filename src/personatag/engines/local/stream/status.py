"""Where the stream is: the processor's gauges, `status` for the CLI and API,
and its lag and throughput over time (`history`, from the samples the gauges
keep in stream_samples)."""

from __future__ import annotations

import collections
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from personatag.domain import utcnow
from personatag.engines.local.stream import ongoing as og
from personatag.engines.local.stream import partitions
from personatag.metrics import Metrics
from personatag.store import Store, changefeed

OFFSET_NAME = "stream"
RATE_WINDOW_S = 10.0  # seconds of recent steps the change and evaluation rates cover
SAMPLE_S = 30.0  # default seconds between stored samples (PERSONATAG_STREAM_SAMPLE_S)
SAMPLE_KEEP_DAYS = 7.0  # default days samples are kept (PERSONATAG_STREAM_SAMPLE_KEEP_DAYS)


class Gauges:
    """The stream's rates, latency and lag in the metrics, updated by each step;
    every `sample_s` seconds also a row in stream_samples (samples older than
    `keep_days` are deleted then), so the lag and throughput have a history
    that outlives the process."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        *,
        name: str = OFFSET_NAME,
        sample_s: float = SAMPLE_S,
        keep_days: float = SAMPLE_KEEP_DAYS,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.name = name
        self.sample_s = sample_s
        self.keep = timedelta(days=keep_days)
        # (monotonic time, changes, evaluations) of recent steps, for the rates
        self._recent: collections.deque[tuple[float, int, int]] = collections.deque()
        # Changes and evaluations since the last stored sample, and when it was.
        self._since_sample = [0, 0]
        self._sampled_at: float | None = None

    def rates(self, changes: int, evaluations: int) -> None:
        now = time.monotonic()
        self._recent.append((now, changes, evaluations))
        while self._recent and now - self._recent[0][0] > RATE_WINDOW_S:
            self._recent.popleft()
        span = max(now - self._recent[0][0], 1.0) if len(self._recent) > 1 else RATE_WINDOW_S
        self.metrics.set_stream_rates(
            sum(c for _, c, _ in self._recent) / span, sum(e for _, _, e in self._recent) / span
        )

    def record(
        self,
        change_times: list[datetime],
        evaluations: int,
        offset: int,
        applied_times: list[datetime] | None = None,
    ) -> None:
        """A step consumed changes written at `change_times` and stands at
        `offset`; the latency of each it applied (`applied_times`, by
        default all) is observed."""
        self.rates(len(change_times), evaluations)
        self._since_sample[0] += len(change_times)
        self._since_sample[1] += evaluations
        self.metrics.record_stream_changes(changes=len(change_times))
        applied = change_times if applied_times is None else applied_times
        if applied:
            now = time.time()
            self.metrics.observe_stream_latencies([now - at.timestamp() for at in applied])
        self.lag(offset)

    def lag(self, offset: int) -> None:
        self.rates(0, 0)
        with self.store.read() as conn:
            head = changefeed.head(conn, self.store)
            oldest = changefeed.oldest_after(conn, self.store, offset)
            rc = self.store.tables.stream_rechecks
            waiting = int(conn.scalar(select(func.count()).select_from(rc)) or 0)
        seconds = 0.0 if oldest is None else max((utcnow() - oldest).total_seconds(), 0.0)
        self.metrics.set_stream_lag(head - offset, seconds, waiting)
        self.sample(offset, head, seconds)

    def sample(self, offset: int, head: int, lag_seconds: float) -> None:
        """Store a sample when `sample_s` seconds passed since the last one (the
        first step stores one at once: it marks the process's start)."""
        now = time.monotonic()
        if self._sampled_at is not None and now - self._sampled_at < self.sample_s:
            return
        span = self.sample_s if self._sampled_at is None else now - self._sampled_at
        changes, evaluations = self._since_sample
        at = utcnow()
        ss = self.store.tables.stream_samples
        with self.store.write() as conn:
            conn.execute(
                ss.insert().values(
                    name=self.name,
                    at=at,
                    offset_seq=offset,
                    head=head,
                    lag_changes=head - offset,
                    lag_seconds=round(lag_seconds, 3),
                    changes=changes,
                    evaluations=evaluations,
                    span_s=round(span, 3),
                )
            )
            conn.execute(ss.delete().where(ss.c.name == self.name, ss.c.at < at - self.keep))
        self._sampled_at = now
        self._since_sample = [0, 0]


def status(store: Store, name: str = OFFSET_NAME) -> dict[str, Any]:
    """Where the stream is: offset, feed head, lag, re-checks, errors, reconciliation."""
    t = store.tables
    with store.read() as conn:
        head = changefeed.head(conn, store)
        so = t.stream_offsets
        # Partitioned (partitions.py): each has its own offset; the stream is
        # where the one furthest behind is.
        parts = sorted(
            (n for n in partitions.family(conn, store, name) if n != name),
            key=partitions.number,
        )
        shown = []
        for r in conn.execute(
            select(so.c.name, so.c.seq, so.c.updated_at).where(so.c.name.in_(parts or [name]))
        ):
            shown.append(
                {
                    "name": r.name,
                    "offset": int(r.seq),
                    "lag_changes": head - int(r.seq),
                    "updated_at": r.updated_at,
                }
            )
        shown.sort(key=lambda x: partitions.number(x["name"]))
        offset = min((x["offset"] for x in shown), default=0)
        updated = min((x["updated_at"] for x in shown), default=None)
        oldest = changefeed.oldest_after(conn, store, offset)
        rc = t.stream_rechecks
        rechecks = int(conn.scalar(select(func.count()).select_from(rc)) or 0)
        next_due = conn.scalar(select(func.min(rc.c.due_at)))
        errors = int(conn.scalar(select(func.count()).select_from(t.stream_errors)) or 0)
        cr = t.criteria
        labels = {
            pk: f"{name}@{version}"
            for pk, name, version in conn.execute(select(cr.c.pk, cr.c.name, cr.c.version))
        }
        last_errors = [
            {
                "at": r.at,
                "criterion": labels.get(r.criterion_pk),
                "contact_pk": r.contact_pk,
                "error": r.error,
            }
            for r in conn.execute(
                select(t.stream_errors).order_by(t.stream_errors.c.seq.desc()).limit(5)
            )
        ]
        crits = [
            {"criterion": f"{c.name}@{c.version}", "persona": c.persona_key, "status": c.status}
            for c in og.load(conn, store, (og.ACTIVE, og.BUILDING, og.PAUSED))
        ]
        rec = t.reconciliations
        last_rec = [
            {
                "at": r.at,
                "criterion": labels.get(r.criterion_pk),
                "missing": r.missing,
                "extra": r.extra,
                "repaired": bool(r.repaired),
            }
            for r in conn.execute(select(rec).order_by(rec.c.seq.desc()).limit(10))
        ]
    lag_s = 0.0 if oldest is None else max((utcnow() - oldest).total_seconds(), 0.0)
    return {
        "offset": offset,
        "head": head,
        "lag_changes": head - offset,
        "lag_seconds": round(lag_s, 3),
        "updated_at": updated,
        "partitions": shown if parts else [],
        "rechecks": rechecks,
        "next_recheck_at": next_due,
        "errors": errors,
        "recent_errors": last_errors,
        "criteria": crits,
        "reconciliations": last_rec,
    }


def history(
    store: Store, since: datetime, name: str = OFFSET_NAME, limit: int = 2_000
) -> list[dict[str, Any]]:
    """The stored samples taken at or after `since`, oldest first (at most the
    newest `limit`): lag in changes and seconds, and the changes and evaluations
    per second over the interval each sample closes."""
    ss = store.tables.stream_samples
    query = (
        select(ss)
        .where(ss.c.name == name, ss.c.at >= since)
        .order_by(ss.c.at.desc(), ss.c.seq.desc())
        .limit(limit)
    )
    with store.read() as conn:
        rows = list(conn.execute(query))
    return [
        {
            "at": r.at,
            "offset": r.offset_seq,
            "head": r.head,
            "lag_changes": r.lag_changes,
            "lag_seconds": r.lag_seconds,
            "changes": r.changes,
            "span_s": r.span_s,
            "changes_per_s": round(r.changes / r.span_s, 3) if r.span_s > 0 else 0.0,
            "evaluations_per_s": round(r.evaluations / r.span_s, 3) if r.span_s > 0 else 0.0,
        }
        for r in reversed(rows)
    ]


def last_sample_at(store: Store, name: str = OFFSET_NAME) -> datetime | None:
    """When the stream processor last stored a sample (it does every
    PERSONATAG_STREAM_SAMPLE_S while it runs): None if it never did."""
    ss = store.tables.stream_samples
    with store.read() as conn:
        found: datetime | None = conn.scalar(select(func.max(ss.c.at)).where(ss.c.name == name))
    return found


def health(store: Store, sample_s: float, hours: float = 24.0) -> dict[str, Any]:
    """The samples of the last `hours` and whether a processor runs: one stores
    a sample every `sample_s` seconds (PERSONATAG_STREAM_SAMPLE_S), so none for
    2.5 intervals (plus 5 s) means none runs."""
    last = last_sample_at(store)
    quiet = timedelta(seconds=sample_s * 2.5 + 5)
    return {
        "running": last is not None and utcnow() - last <= quiet,
        "sample_s": sample_s,
        "last_sample_at": last,
        "samples": history(store, utcnow() - timedelta(hours=hours)),
    }
