"""Delivering the membership log to webhooks: signed POSTs, retries with
backoff, dead letters.

Each pass takes, for every enabled webhook that is due, the next batch of
events after its cursor (at most `webhook_batch`; a large bulk entry is split
across batches, the cursor then remembers how many of its contacts were
sent). The batch is pinned (its end and a delivery id are stored) before it
is sent, so every retry sends the same events under the same
`X-Personatag-Delivery`. A 2xx moves the cursor past the batch; anything else
waits `webhook_backoff_s * 2**(attempts-1)` (capped, jittered) and tries
again; after `webhook_max_attempts` the batch becomes a dead letter and the
cursor moves on. Delivery is at least once: a receiver dedupes by delivery id
or by (seq, contact_id).

Several workers (in `serve` and `stream`) may share a store: a webhook is
claimed with a conditional update (a lease in `next_attempt_at`) before it is
delivered, so one batch is sent by one worker at a time.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select

from personatag.audit_log import record
from personatag.config import Settings
from personatag.domain import utcnow
from personatag.membership_events.http import DeliveryError, post
from personatag.membership_events.reader import Entry, Horizon, entry_events, read_entries
from personatag.membership_events.webhooks import get_dead_letter, webhook_row
from personatag.metrics import Metrics, default_metrics
from personatag.service import Backoff, Service
from personatag.store import Store

log = logging.getLogger(__name__)

MAX_ERROR = 500
# A claimed webhook is left alone by other workers for the receiver's timeout
# plus this margin (time to build the batch and write the outcome).
LEASE_MARGIN_S = 60.0


def backoff_s(settings: Settings, attempts: int, rng: random.Random) -> float:
    """The wait after the `attempts`-th failure: exponential, capped, jittered (50-100 %)."""
    delay = min(
        settings.webhook_backoff_max_s, settings.webhook_backoff_s * 2.0 ** min(attempts - 1, 60)
    )
    return delay * rng.uniform(0.5, 1.0)


@dataclass
class Batch:
    events: list[dict[str, Any]]
    end_seq: int  # the cursor once delivered
    end_part: int | None


def _entries_from(
    store: Store, personas: list[int] | None, cursor_seq: int, cursor_part: int | None, until: int
) -> Any:
    """(entry, contacts already sent) from the cursor on, up to seq `until`."""
    if cursor_part is not None:
        for entry in read_entries(store, after=cursor_seq - 1, until=cursor_seq, limit=1):
            yield entry, cursor_part
    after = cursor_seq
    while True:
        entries = read_entries(store, after=after, until=until, personas=personas)
        if not entries:
            return
        for entry in entries:
            yield entry, 0
        after = entries[-1].seq


def build_batch(
    store: Store,
    personas: list[int] | None,
    cursor: tuple[int, int | None],
    until: tuple[int, int | None],
    max_events: int | None,
) -> Batch:
    """The events after `cursor` up to `until` (seq, contacts of that entry),
    at most `max_events` (None: no limit, for a pinned batch)."""
    events: list[dict[str, Any]] = []
    until_seq, until_part = until
    for entry, skip in _entries_from(store, personas, cursor[0], cursor[1], until_seq):
        stop = _size(entry)
        if entry.seq == until_seq and until_part is not None:
            stop = min(stop, until_part)
        taken = skip
        for ev in entry_events(store, entry, skip=skip):
            if taken >= stop or (max_events is not None and len(events) >= max_events):
                break
            events.append(ev)
            taken += 1
        full = max_events is not None and len(events) >= max_events
        if taken < stop or full:
            return Batch(events, entry.seq, None if taken >= _size(entry) else taken)
    return Batch(events, until_seq, until_part)


def _size(entry: Entry) -> int:
    return 1 if entry.bulk_count is None else entry.bulk_count


def payload(webhook_pk: int, events: list[dict[str, Any]]) -> bytes:
    body = {
        "webhook": webhook_pk,
        "events": events,
        "first_seq": events[0]["seq"],
        "last_seq": events[-1]["seq"],
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class DeliveryCounts:
    delivered: int = 0  # batches a receiver accepted
    failed: int = 0  # attempts that failed and will be retried
    dead_lettered: int = 0  # batches given up on
    events: int = 0  # events in delivered batches

    @property
    def attempts(self) -> int:
        return self.delivered + self.failed + self.dead_lettered


class WebhookWorker(Service):
    """Delivers the membership log to every enabled webhook (see module docs); as a
    service (see personatag.service), one pass per round."""

    thread_name = "webhooks"
    title = "webhook deliveries"

    def __init__(self, store: Store, settings: Settings, metrics: Metrics | None = None) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics if metrics is not None else default_metrics()
        self.interval_s = settings.webhook_interval_s
        # A failed pass is tried again after the interval (each webhook's own
        # retries back off in the store: see backoff_s).
        super().__init__(Backoff(first_s=self.interval_s, max_s=self.interval_s))
        self._horizon = Horizon(store)
        self._rng = random.Random()  # noqa: S311 - jitter, not a secret

    def deliver_once(self, now: datetime | None = None) -> int:
        """One pass over the due webhooks; returns the POSTs made (see deliver_pass)."""
        return self.deliver_pass(now).attempts

    def deliver_pass(
        self, now: datetime | None = None, *, settle_wait_s: float = 0.0
    ) -> DeliveryCounts:
        """One pass: at most one batch per due webhook. `now` decides who is due
        and when retries are (default: the clock). `settle_wait_s` waits for
        writers still committing to the log (for one-shot callers)."""
        now = now if now is not None else utcnow()
        horizon = (
            self._horizon.wait(settle_wait_s) if settle_wait_s > 0 else self._horizon.current()
        )
        counts = DeliveryCounts()
        w = self.store.tables.webhooks
        due = and_(
            w.c.disabled_at.is_(None),
            or_(w.c.next_attempt_at.is_(None), w.c.next_attempt_at <= now),
        )
        cols = (w.c.pk, w.c.cursor_seq, w.c.cursor_part, w.c.batch_seq)
        with self.store.read() as conn:
            hooks = conn.execute(select(*cols).where(due).order_by(w.c.pk)).all()
        for pk, cursor_seq, cursor_part, batch_seq in hooks:
            if batch_seq is None and cursor_part is None and horizon <= cursor_seq:
                continue  # nothing new: no write
            try:
                self._deliver(int(pk), now, horizon, counts)
            except Exception:  # one broken hook must not stop the others
                log.exception("webhook %s: delivery pass failed", pk)
        with self.store.read() as conn:
            lowest = conn.scalar(select(func.min(w.c.cursor_seq)).where(w.c.disabled_at.is_(None)))
        self.metrics.webhook_lag.set(0 if lowest is None else max(0, horizon - int(lowest)))
        return counts

    def run(self, stop: threading.Event, interval_s: float | None = None) -> None:
        """Deliver until `stop` is set; waits `interval_s` (default: the
        webhook_interval_s setting) after a pass that delivered nothing. Errors
        are logged and the loop goes on."""
        if interval_s is not None:
            self.interval_s = interval_s
            self.backoff = Backoff(first_s=interval_s, max_s=interval_s)
        self.loop(stop)

    def cycle(self) -> float:
        return 0.0 if self.deliver_pass().delivered else self.interval_s

    def on_error(self, exc: Exception) -> float:
        log.exception("webhook delivery pass failed; retrying in %s s", self.interval_s)
        return self.backoff.delay(self.failures)

    # -- one webhook ---------------------------------------------------------------

    def _claim(self, pk: int, now: datetime) -> Any:
        """The webhook's row if this worker got it (a lease in next_attempt_at)."""
        w = self.store.tables.webhooks
        lease = now + timedelta(seconds=self.settings.webhook_timeout_s + LEASE_MARGIN_S)
        with self.store.write() as conn:
            row = webhook_row(conn, self.store, pk)
            claimed = conn.execute(
                w.update()
                .where(
                    w.c.pk == pk,
                    w.c.disabled_at.is_(None),
                    or_(w.c.next_attempt_at.is_(None), w.c.next_attempt_at <= now),
                    w.c.cursor_seq == row.cursor_seq,
                    w.c.cursor_part.is_not_distinct_from(row.cursor_part),
                )
                .values(next_attempt_at=lease)
            ).rowcount
        return row if claimed == 1 else None

    def _deliver(self, pk: int, now: datetime, horizon: int, counts: DeliveryCounts) -> None:
        w = self.store.tables.webhooks
        row = self._claim(pk, now)
        if row is None:
            return
        cursor = (int(row.cursor_seq), None if row.cursor_part is None else int(row.cursor_part))
        personas = self._persona_pks(row.personas)
        if row.batch_seq is not None:  # a retry: the same events as before
            until = (int(row.batch_seq), None if row.batch_part is None else int(row.batch_part))
            batch = build_batch(self.store, personas, cursor, until, None)
            delivery_id = str(row.delivery_id)
        elif horizon > cursor[0] or cursor[1] is not None:
            until = (max(horizon, cursor[0]), None)
            batch = build_batch(self.store, personas, cursor, until, self.settings.webhook_batch)
            delivery_id = uuid.uuid4().hex
        else:
            self._release(pk)
            return
        where = and_(
            w.c.pk == pk,
            w.c.cursor_seq == cursor[0],
            w.c.cursor_part.is_not_distinct_from(cursor[1]),
        )
        if not batch.events:  # nothing for this webhook: skip ahead
            with self.store.write() as conn:
                conn.execute(
                    w.update()
                    .where(where)
                    .values(
                        cursor_seq=batch.end_seq,
                        cursor_part=batch.end_part,
                        next_attempt_at=None,
                        delivery_id=None,
                        batch_seq=None,
                        batch_part=None,
                    )
                )
            return
        if row.batch_seq is None:  # pin the batch before it leaves
            with self.store.write() as conn:
                conn.execute(
                    w.update()
                    .where(where)
                    .values(
                        delivery_id=delivery_id, batch_seq=batch.end_seq, batch_part=batch.end_part
                    )
                )
        body = payload(pk, batch.events)
        error = post(row.url, row.secret, body, delivery_id, self.settings.webhook_timeout_s)
        self._settle(row, batch, body, delivery_id, error, now, counts)

    def _persona_pks(self, personas: str | None) -> list[int] | None:
        if personas is None:
            return None
        p = self.store.tables.personas
        keys = json.loads(personas)
        with self.store.read() as conn:
            return [int(pk) for pk in conn.scalars(select(p.c.pk).where(p.c.key.in_(keys)))]

    def _release(self, pk: int) -> None:
        w = self.store.tables.webhooks
        with self.store.write() as conn:
            conn.execute(
                w.update().where(w.c.pk == pk, w.c.attempts == 0).values(next_attempt_at=None)
            )

    def _settle(
        self,
        row: Any,
        batch: Batch,
        body: bytes,
        delivery_id: str,
        error: str | None,
        now: datetime,
        counts: DeliveryCounts,
    ) -> None:
        """Write the outcome of one POST (the cursor moves in the same transaction)."""
        w = self.store.tables.webhooks
        where = and_(w.c.pk == row.pk, w.c.delivery_id == delivery_id)
        done = {
            "cursor_seq": batch.end_seq,
            "cursor_part": batch.end_part,
            "attempts": 0,
            "next_attempt_at": None,
            "delivery_id": None,
            "batch_seq": None,
            "batch_part": None,
        }
        attempts = int(row.attempts) + 1
        with self.store.write() as conn:
            if error is None:
                conn.execute(w.update().where(where).values(**done, last_error=None))
                outcome = "delivered"
            elif attempts >= self.settings.webhook_max_attempts:
                conn.execute(
                    self.store.tables.webhook_dead_letters.insert().values(
                        webhook_pk=row.pk,
                        first_seq=batch.events[0]["seq"],
                        last_seq=batch.events[-1]["seq"],
                        payload=body.decode(),
                        attempts=attempts,
                        last_error=error[:MAX_ERROR],
                        failed_at=now,
                        delivery_id=delivery_id,
                    )
                )
                conn.execute(w.update().where(where).values(**done, last_error=error[:MAX_ERROR]))
                outcome = "dead_lettered"
            else:
                wait = backoff_s(self.settings, attempts, self._rng)
                conn.execute(
                    w.update()
                    .where(where)
                    .values(
                        attempts=attempts,
                        next_attempt_at=now + timedelta(seconds=wait),
                        last_error=error[:MAX_ERROR],
                    )
                )
                outcome = "failed"
        self.metrics.record_webhook_delivery(outcome)
        if outcome == "delivered":
            counts.delivered += 1
            counts.events += len(batch.events)
        elif outcome == "failed":
            counts.failed += 1
            log.warning("webhook %s: attempt %d failed: %s", row.pk, attempts, error)
        else:
            counts.dead_lettered += 1
            log.error(
                "webhook %s: batch of seq %s-%s dead-lettered after %d attempts: %s",
                row.pk,
                batch.events[0]["seq"],
                batch.events[-1]["seq"],
                attempts,
                error,
            )


def redeliver(
    store: Store,
    settings: Settings,
    dead_letter_pk: int,
    *,
    actor: str | None = None,
    source: str = "cli",
    metrics: Metrics | None = None,
) -> dict[str, Any]:
    """Send a dead letter's payload again, once, now (same delivery id, fresh
    timestamp and signature). Marks it redelivered on a 2xx; raises
    DeliveryError (and keeps the error on the dead letter) otherwise."""
    letter = get_dead_letter(store, dead_letter_pk)
    with store.read() as conn:
        hook = webhook_row(conn, store, letter.webhook_pk)
    delivery_id = letter.delivery_id or uuid.uuid4().hex
    error = post(
        hook.url, hook.secret, letter.payload.encode(), delivery_id, settings.webhook_timeout_s
    )
    d = store.tables.webhook_dead_letters
    values: dict[str, Any] = {"attempts": letter.attempts + 1}
    if error is None:
        values |= {"redelivered_at": utcnow(), "last_error": None}
    else:
        values["last_error"] = error[:MAX_ERROR]
    with store.write() as conn:
        conn.execute(d.update().where(d.c.pk == letter.pk).values(**values))
        record(
            conn,
            store,
            actor=actor,
            action="webhook.redeliver",
            target=str(letter.webhook_pk),
            detail={"dead_letter": letter.pk, "error": error},
            source=source,
        )
    (metrics or default_metrics()).record_webhook_delivery(
        "delivered" if error is None else "failed"
    )
    if error is not None:
        raise DeliveryError(
            f"redelivery of dead letter {letter.pk} to {hook.url} failed: {error}; "
            "it stays in the dead letters"
        )
    return get_dead_letter(store, letter.pk).to_json()
