"""Where the stream is: the processor's gauges, and `status` for the CLI and API."""

from __future__ import annotations

import collections
import time
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from personatag.domain import utcnow
from personatag.engines.local.stream import ongoing as og
from personatag.metrics import Metrics
from personatag.store import Store, changefeed

OFFSET_NAME = "stream"
RATE_WINDOW_S = 10.0  # seconds of recent steps the change and evaluation rates cover


class Gauges:
    """The stream's rates, latency and lag in the metrics, updated by each step."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        # (monotonic time, changes, evaluations) of recent steps, for the rates
        self._recent: collections.deque[tuple[float, int, int]] = collections.deque()

    def rates(self, changes: int, evaluations: int) -> None:
        now = time.monotonic()
        self._recent.append((now, changes, evaluations))
        while self._recent and now - self._recent[0][0] > RATE_WINDOW_S:
            self._recent.popleft()
        span = max(now - self._recent[0][0], 1.0) if len(self._recent) > 1 else RATE_WINDOW_S
        self.metrics.set_stream_rates(
            sum(c for _, c, _ in self._recent) / span, sum(e for _, _, e in self._recent) / span
        )

    def record(self, change_times: list[datetime], evaluations: int, offset: int) -> None:
        """A step consumed changes written at `change_times` and stands at `offset`."""
        self.rates(len(change_times), evaluations)
        self.metrics.record_stream_changes(changes=len(change_times))
        if change_times:
            lag = (utcnow() - change_times[-1]).total_seconds()
            self.metrics.observe_stream_latency(max(lag, 0.0))
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


def status(store: Store, name: str = OFFSET_NAME) -> dict[str, Any]:
    """Where the stream is: offset, feed head, lag, re-checks, errors, reconciliation."""
    t = store.tables
    with store.read() as conn:
        offset = changefeed.get_offset(conn, store, name)
        head = changefeed.head(conn, store)
        oldest = changefeed.oldest_after(conn, store, offset)
        so = t.stream_offsets
        updated = conn.scalar(select(so.c.updated_at).where(so.c.name == name))
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
        "rechecks": rechecks,
        "next_recheck_at": next_due,
        "errors": errors,
        "recent_errors": last_errors,
        "criteria": crits,
        "reconciliations": last_rec,
    }
