"""Reconciliation: each criterion's memberships against a full evaluation.

The stream applies changes; now and then (a round every `stream_reconcile_s`
seconds, one criterion per idle step) a criterion is evaluated set-based and
its memberships compared with the answer. Contacts with changes still waiting
in the feed or a due re-check are the stream's to settle, not drift. Drift is
repaired (unless asked not to), counted in the metrics and recorded.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Protocol

from sqlalchemy import select

from personatag.config import Settings
from personatag.domain import utcnow
from personatag.engines.local.stream import ongoing as og
from personatag.engines.local.stream import partitions, rechecks
from personatag.engines.local.stream.evaluate import evaluate_set
from personatag.engines.local.stream.inputs import changes_between
from personatag.memberships import rules
from personatag.memberships.rows import Holders, Outcome, Writer
from personatag.metrics import Metrics
from personatag.store import Store, changefeed

log = logging.getLogger("personatag.engines.local.stream.processor")


class Host(Protocol):
    """What reconciliation needs from the processor it runs in."""

    store: Store
    settings: Settings
    metrics: Metrics
    name: str
    base: str
    partition: tuple[int, int] | None

    def criteria(self) -> og.Index: ...


class Rounds:
    """Which criterion the next idle step reconciles (a round every `every` s)."""

    def __init__(self) -> None:
        self.queue: list[int] = []
        self.last_round = time.monotonic()
        self.began = False  # the last `next` began a round

    def next(self, index: og.Index, every: float) -> og.Ongoing | None:
        """The criterion to reconcile now, or None (disabled, or not time yet)."""
        self.began = False
        if every <= 0 or not index.criteria:
            return None
        if not self.queue:
            if time.monotonic() - self.last_round < every:
                return None
            self.last_round = time.monotonic()
            self.queue = [c.pk for c in index.criteria]
            self.began = True
        crit_pk = self.queue.pop(0)
        return index.by_pk.get(crit_pk)


def reconcile(
    host: Host, crit: og.Ongoing, *, repair: bool = True, now: datetime | None = None
) -> dict[str, int]:
    """Compare `crit`'s memberships with a full evaluation now; repair drift.

    Contacts with changes still waiting in the feed (or a due re-check) are
    left to the stream: their difference is not drift.
    """
    now = now or utcnow()
    store = host.store
    t = store.tables
    with store.read() as conn:
        # Where the stream has got to (every partition, when it runs in them).
        offset = partitions.least(conn, store, host.base)
        catalog = store.catalog(conn)
        full = set(evaluate_set(conn, store, crit, catalog, now).tolist())
    with store.write() as conn:
        store.lock_persona(conn, crit.persona_pk)
        holders = Holders.load_persona(conn, store, crit.persona_pk)
        # Read after the lock, so a partition's commit since the evaluation
        # (of a change the evaluation may have missed) is pending, not drift.
        pending: set[int] = set()
        for ch in changes_between(conn, store, offset, changefeed.head(conn, store)):
            pending.update(ch.pks)
        rc = t.stream_rechecks
        pending.update(
            conn.scalars(
                select(rc.c.contact_pk).where(rc.c.criterion_pk == crit.pk, rc.c.due_at <= now)
            )
        )
        current = {c for (_, c), s in holders.sources.items() if crit.pk in s}
        missing = {
            c
            for c in full - current - pending
            if rules.may_gain((crit.persona_pk, c) in holders.pinned_out)
        }
        extra = (current - full - pending) if crit.exit_remove else set()
        outcome = Outcome()
        if repair and (missing or extra):
            writer = Writer(store, now, host.settings.bulk_log_threshold)
            writer.decide(
                holders, crit.persona_pk, crit.pk, crit.exit_remove, missing | extra, missing
            )
            outcome = writer.flush(conn, reason=f"reconciliation of {crit.label}")
            rechecks.recheck_readers(conn, store, host.criteria(), outcome, now)
        conn.execute(
            t.reconciliations.insert().values(
                at=now,
                criterion_pk=crit.pk,
                offset_seq=offset,
                missing=len(missing),
                extra=len(extra),
                repaired=bool(repair and (missing or extra)),
            )
        )
    drift = len(missing) + len(extra)
    host.metrics.record_reconciliation(crit.label, drift)
    host.metrics.record_memberships(entered=len(outcome.entered), exited=len(outcome.exited))
    if drift:
        log.warning(
            "reconciliation of %s: %d missing, %d extra%s",
            crit.label,
            len(missing),
            len(extra),
            " (repaired)" if repair else "",
        )
    return {"missing": len(missing), "extra": len(extra), "offset": offset}
