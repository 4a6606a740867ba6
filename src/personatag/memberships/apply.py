"""The applier: the only writer of memberships.

Set-based: every step is one SQL statement over the matched contacts, so a
10M-contact request never loops over contacts in Python. Runs inside the
caller's write transaction, so a failure leaves memberships as they were.
Idempotent: a contact that already holds the persona is counted as `already`
and not written again. Pins win (rules.py): a pinned-out contact is never
tagged, a pinned-in contact is never untagged; the log says enter or exit only
for contacts whose persona changes as a whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    exists,
    func,
    literal,
    not_,
    or_,
    select,
)

from personatag.domain import SOURCE_ADHOC, Action, Change, PinKind
from personatag.memberships import grants, rules
from personatag.memberships.log import IdCapture, LogContext, log_from_select
from personatag.store import Store

log = logging.getLogger(__name__)


class BulkChanges(Protocol):
    """Told about bulk changes as soon as their contact pks are known, so work
    on them (a changes file) can run beside the rest of the transaction."""

    def start(self, change: str, ids: Any, labels: bytes | None = None) -> None:
        """These pks will probably change (may be dropped if they do not).
        `labels`, when known, are their contact ids, UTF-8 and NUL-separated,
        in the same order."""

    def confirm(self, change: str, ids: Any) -> None:
        """These pks changed, as one bulk log entry (in log order)."""


@dataclass(frozen=True)
class ApplyCounts:
    matched: int
    tagged: int = 0
    untagged: int = 0
    already: int = 0
    pinned: int = 0


# Reading the entered ids back after the insert costs ~0.13 us per entered
# contact; capturing them on a second connection during the insert costs
# ~0.04 us per contact in the table (both scans share the machine). Capture
# pays when at least this share of contacts will enter.
CAPTURE_SHARE = 0.3
# With a changes file to build as well (the dispatcher), the captured scan
# also spares a pk -> contact id lookup per changed contact afterwards.
CAPTURE_SHARE_WITH_CHANGES = 0.05
# A write that adds at least this many rows refreshes the planner's statistics
# of memberships (sampled: milliseconds), which lookups by contact rely on.
STATISTICS_ROWS = 1_000


def _sampled_share(
    conn: Connection, store: Store, where: ColumnElement[bool], ranges: int = 16, width: int = 4096
) -> float:
    """Estimate the share of contacts for which `where` holds, from a few pk ranges
    spread over the table (rowid seeks: milliseconds on 10M contacts)."""
    c = store.tables.contacts
    # Two statements: SQLite answers a lone min() or max() from the b-tree edge,
    # but min() and max() together with a full scan.
    lo = conn.scalar(select(func.min(c.c.pk)))
    hi = conn.scalar(select(func.max(c.c.pk)))
    if lo is None or hi is None:
        return 0.0
    step = max((hi - lo + 1) // ranges, width)
    sample = or_(*(c.c.pk.between(a, a + width - 1) for a in range(lo, hi + 1, step)))
    total, hits = conn.execute(
        select(func.count(), func.count().filter(where)).select_from(c).where(sample)
    ).one()
    return hits / total if total else 0.0


def _one_run(conn: Connection, store: Store, persona_pk: int, rows: int) -> tuple[int, int] | None:
    """The smallest and largest contact pk of a persona's `rows` rows (one
    source each) when those are consecutive pks (two primary-key seeks); else None."""
    m = store.tables.membership_rows
    lo = conn.scalar(select(func.min(m.c.contact_pk)).where(m.c.persona_pk == persona_pk))
    hi = conn.scalar(select(func.max(m.c.contact_pk)).where(m.c.persona_pk == persona_pk))
    if lo is None or hi is None or hi - lo + 1 != rows:
        return None
    return int(lo), int(hi)


def _count(conn: Connection, store: Store, where: ColumnElement[bool]) -> int:
    c = store.tables.contacts
    return int(conn.scalar(select(func.count()).select_from(c).where(where)) or 0)


def _count_held(conn: Connection, store: Store, held: Any, condition: ColumnElement[bool]) -> int:
    """How many distinct contacts of `held` (a select of contact pks) match,
    checking the condition per held contact."""
    c = store.tables.contacts
    ids = held.distinct().subquery()
    pk = next(iter(ids.c))
    matches = exists(select(c.c.pk).where(c.c.pk == pk, condition))
    return int(conn.scalar(select(func.count()).select_from(ids).where(matches)) or 0)


def apply_adhoc(
    conn: Connection,
    store: Store,
    *,
    action: Action,
    condition: ColumnElement[bool],
    ctx: LogContext,
    dry_run: bool,
    bulk_threshold: int,
    portable: bool = False,
    bulk: BulkChanges | None = None,
    known_pks: Any = None,
) -> ApplyCounts:
    """Tag or untag every contact for which `condition` (over contacts) is TRUE.

    `portable`: the condition means the same on any connection (it uses no
    temp table), so work may be shared with a second connection.
    `known_pks`: the sorted pks `condition` selects, when the engine already
    has them (Flink): a tag that excludes nobody then logs them without
    reading them back.
    """
    store.lock_persona(conn, ctx.persona_pk)
    if action is Action.TAG:
        return _tag(conn, store, condition, ctx, dry_run, bulk_threshold, portable, bulk, known_pks)
    return _untag(conn, store, condition, ctx, dry_run, bulk_threshold, bulk)


def _tag(
    conn: Connection,
    store: Store,
    condition: ColumnElement[bool],
    ctx: LogContext,
    dry_run: bool,
    bulk_threshold: int,
    portable: bool,
    bulk: BulkChanges | None,
    known_pks: Any = None,
) -> ApplyCounts:
    t = store.tables
    c, m = t.contacts, t.membership_rows
    p = ctx.persona_pk
    # Contacts that hold the persona already (through any source) do not enter;
    # pinned-out ones gain no source. These two counts are driven by the
    # (usually small) member and pin sets.
    if known_pks is not None:
        # The match is a set of pks in a temp table: SQLite would scan it all
        # to probe the (often empty) members; walk the members instead.
        already = _count_held(conn, store, rules.members(t, p), condition)
        pinned = _count_held(conn, store, rules.pinned(t, p, PinKind.OUT), condition)
    else:
        already = _count(conn, store, and_(condition, c.c.pk.in_(rules.members(t, p))))
        pinned = _count(conn, store, and_(condition, c.c.pk.in_(rules.pinned(t, p, PinKind.OUT))))
    enter = condition
    # Skip per-contact probes that cannot exclude anyone: on a first run this
    # keeps the insert as cheap as a hand-written INSERT ... SELECT.
    if already:
        enter = and_(
            enter,
            not_(exists().where(m.c.persona_pk == p, m.c.contact_pk == c.c.pk)),
        )
    if pinned:
        enter = and_(enter, c.c.pk.not_in(rules.pinned(t, p, PinKind.OUT)))
    if dry_run:
        tagged = _count(conn, store, enter)
        return ApplyCounts(
            matched=tagged + already + pinned, tagged=tagged, already=already, pinned=pinned
        )
    # One grant (when, which request and criterion) for every row this request adds.
    grant = grants.add(
        conn, store, ctx.at, request_pk=ctx.request_pk, criterion_pk=ctx.criterion_pk
    )
    rows = select(
        literal(p, type_=m.c.persona_pk.type),
        c.c.pk,
        literal(SOURCE_ADHOC, type_=m.c.source.type),
        literal(grant, type_=m.c.grant_pk.type),
    ).where(enter)
    cols = ["persona_pk", "contact_pk", "source", "grant_pk"]
    capture = None
    # With nobody excluded, the known pks are the ones that will enter.
    known = known_pks if known_pks is not None and not already and not pinned else None
    if known is not None and bulk is not None and len(known) > bulk_threshold:
        bulk.start(Change.ENTER.value, known)
    # A persona without rows: afterwards all its rows are this request's, and
    # when they are one run of consecutive pks (everyone matched), two seeks
    # give the log its ids instead of a read of every row.
    empty = (
        known is None
        and not already
        and conn.scalar(select(m.c.contact_pk).where(m.c.persona_pk == p).limit(1)) is None
    )
    share = None
    if known is None and portable and store.is_shared_file:
        share = _sampled_share(conn, store, enter)
    if (
        share is not None
        and not (empty and bulk is None and share == 1.0)
        and share >= (CAPTURE_SHARE if bulk is None else CAPTURE_SHARE_WITH_CHANGES)
    ):
        # With a changes file to build, the same scan also returns the contact
        # ids, so its lines need no second lookup per pk.
        if bulk is None:
            capture = IdCapture(store, select(c.c.pk).where(enter).order_by(c.c.pk))
        else:
            capture = IdCapture(
                store,
                select(c.c.pk, c.c.id).where(enter).order_by(c.c.pk),
                lambda ids, labels: bulk.start(Change.ENTER.value, ids, labels),
            )
        log.debug("audit ids captured on a second connection")
    try:
        # preserve_rowcount: SQLAlchemy only promises rowcount for UPDATE/DELETE.
        tagged = conn.execute(
            m.insert().from_select(cols, rows), execution_options={"preserve_rowcount": True}
        ).rowcount
    except BaseException:
        if capture is not None:
            capture.abandon()
        raise
    if tagged >= STATISTICS_ROWS:
        # Lookups by contact depend on them (SQLite: schema.py, membership_rows).
        store.backend.analyze_skip_scan(conn, m)
    entered = select(m.c.contact_pk).where(
        m.c.persona_pk == p, m.c.source == SOURCE_ADHOC, m.c.grant_pk == grant
    )
    ids = capture.result() if capture is not None else None
    run = None
    if known is not None and tagged == len(known):
        ids = known
        # Sorted and unique: one run of consecutive pks when its ends are
        # len - 1 apart; its log entry is then encoded from the two ends.
        if bulk is None and tagged > bulk_threshold and known[-1] - known[0] + 1 == tagged:
            ids, run = None, (int(known[0]), int(known[-1]))
    if ids is None and empty and tagged > bulk_threshold:
        run = _one_run(conn, store, p, tagged)
        if run is not None:
            log.debug("audit ids are one run of consecutive pks")
            if bulk is not None:  # a changes file lists the pks themselves
                import numpy as np  # only bulk changes need it; keeps CLI start-up light

                ids, run = np.arange(run[0], run[1] + 1, dtype=np.int64), None
    logged = log_from_select(
        conn,
        store,
        ctx,
        Change.ENTER.value,
        entered,
        count=tagged,
        bulk_threshold=bulk_threshold,
        ids=ids if ids is not None and tagged > bulk_threshold else None,
        run=run,
    )
    if bulk is not None and logged is not None:
        bulk.confirm(Change.ENTER.value, logged)
    if already:
        # Contacts that hold the persona only through other sources (an ongoing
        # criterion, a pin-in) now also hold it through this request, so it
        # survives that source going away. Not a change of membership: no log.
        other = select(m.c.contact_pk).where(m.c.persona_pk == p, m.c.source != SOURCE_ADHOC)
        adhoc = select(m.c.contact_pk).where(m.c.persona_pk == p, m.c.source == SOURCE_ADHOC)
        extra = select(
            literal(p, type_=m.c.persona_pk.type),
            c.c.pk,
            literal(SOURCE_ADHOC, type_=m.c.source.type),
            literal(grant, type_=m.c.grant_pk.type),
        ).where(condition, c.c.pk.in_(other), ~exists(adhoc.where(m.c.contact_pk == c.c.pk)))
        added = conn.execute(
            m.insert().from_select(cols, extra), execution_options={"preserve_rowcount": True}
        ).rowcount
    else:
        added = 0
    if not tagged and not added:
        grants.discard(conn, store, grant)  # no row took it
    return ApplyCounts(
        matched=tagged + already + pinned, tagged=tagged, already=already, pinned=pinned
    )


def _untag(
    conn: Connection,
    store: Store,
    condition: ColumnElement[bool],
    ctx: LogContext,
    dry_run: bool,
    bulk_threshold: int,
    bulk: BulkChanges | None,
) -> ApplyCounts:
    t = store.tables
    c, m = t.contacts, t.membership_rows
    p = ctx.persona_pk
    matched = _count(conn, store, condition)
    pinned = _count(conn, store, and_(condition, c.c.pk.in_(rules.pinned(t, p, PinKind.IN))))
    # Those who hold the persona through no pin-in: after the delete below they
    # hold it through no source (a pin-in's row stays), so they exit.
    leaving = select(c.c.pk).where(
        condition,
        c.c.pk.in_(rules.members(t, p)),
        c.c.pk.not_in(rules.pinned(t, p, PinKind.IN)),
    )
    untagged = int(conn.scalar(select(func.count()).select_from(leaving.subquery())) or 0)
    already = matched - untagged - pinned
    if dry_run or (untagged == 0 and pinned == 0):
        return ApplyCounts(matched=matched, untagged=untagged, already=already, pinned=pinned)
    logged = log_from_select(
        conn, store, ctx, Change.EXIT.value, leaving, count=untagged, bulk_threshold=bulk_threshold
    )
    if bulk is not None and logged is not None:
        bulk.confirm(Change.EXIT.value, logged)
    matched_pks = select(c.c.pk).where(condition)
    conn.execute(
        m.delete().where(
            m.c.persona_pk == p,
            rules.removable_by_rules(t),
            m.c.contact_pk.in_(matched_pks),
        )
    )
    return ApplyCounts(matched=matched, untagged=untagged, already=already, pinned=pinned)
