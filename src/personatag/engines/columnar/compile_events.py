"""Behavioural predicates over a Frame: `count(read|login [where ...], N days)`
and `persona("key")`.

Counts: per segment, the events in the window `as_of - N days < at <= as_of`
(two binary searches when the segment is sorted), kept where the publication
passes `where` (evaluated once per publication, gathered by the publication
rows) and the row is live, then counted per contact row with np.bincount.
Personas: the frame's pk sets turned into row masks, or combined as bitmaps
first when a subtree is persona algebra alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np
from pyroaring import BitMap

from personatag.criteria.ast import COMPARATORS, Count
from personatag.criteria.errors import CriteriaError
from personatag.engines.columnar.compile_values import DAY_US, Ctx, Leaf, Tri
from personatag.engines.columnar.frame import Array, Events, Frame

# publication rows -> whether a read of that publication counts
PublicationFilter: TypeAlias = Callable[[Ctx], Array]


def count_leaf(node: Count, where: PublicationFilter | None) -> Leaf:
    cmp, k = COMPARATORS[node.op], node.value
    key = ("count", node.event, node.where, node.days)

    def leaf(ctx: Ctx) -> Tri:
        n = ctx.table.n
        counts = ctx.memo.get(key)
        if counts is None:
            counts = ctx.memo[key] = event_counts(ctx, node.event, node.days, where)
        if counts is _NONE:
            return Tri(np.full(n, bool(cmp(0, k)), dtype=bool), None)
        return Tri(np.asarray(cmp(counts, k), dtype=bool), None)

    return leaf


_NONE: Any = object()  # no event counts: every contact has 0


def event_counts(ctx: Ctx, event: str, days: int, where: PublicationFilter | None) -> Any:
    """Per contact row, the events of `event` in the window (an int array), or
    `_NONE` when no event counts at all."""
    frame = ctx.frame
    segments = frame.reads if event == "read" else frame.logins
    lo, hi = ctx.as_of - days * DAY_US, ctx.as_of
    publications: Array | None = None
    if event == "read" and where is not None:
        publications = where(ctx)
        if not publications.any():
            return _NONE
        if publications.all():
            publications = None
    total: Array | None = None
    for segment in segments:
        rows = _segment_rows(segment, lo, hi, publications)
        if len(rows) == 0:
            continue
        counted = np.bincount(rows, minlength=frame.contacts.n)
        if total is None:
            total = counted
        else:
            total += counted
    return _NONE if total is None else total


def _segment_rows(segment: Events, lo: int, hi: int, publications: Array | None) -> Array:
    """The contact rows of the segment's counted events in (lo, hi]."""
    if segment.sorted:
        a, b = np.searchsorted(segment.at, [lo, hi], side="right")
        rows = segment.row[a:b]
        keep = None if segment.live is None else segment.live[a:b]
        pubs = segment.publication[a:b] if segment.publication is not None else None
    else:
        at = segment.at
        keep = at > lo
        keep &= at <= hi
        if segment.live is not None:
            keep &= segment.live
        rows, pubs = segment.row, segment.publication
    if publications is not None:
        passes = publications[pubs]
        keep = passes if keep is None else keep & passes
    return rows if keep is None else rows[keep]


# ---- personas -----------------------------------------------------------------------


def persona_set(frame: Frame, key: str) -> Any:
    """The frame's pk set for persona `key`: a BitMap or a sorted array."""
    if frame.personas is None:
        raise CriteriaError(
            f'persona("{key}"): this columnar frame carries no persona sets'
            " (build it with the memberships)"
        )
    return frame.personas(key)


def pks_to_mask(frame: Frame, pks: Any) -> Array:
    """Row mask of the contacts whose pks are in `pks` (a BitMap or a sorted array)."""
    pk = np.asarray(frame.pk)
    n = len(pk)
    mask = np.zeros(n, dtype=bool)
    if isinstance(pks, BitMap):
        pks = np.frombuffer(pks.to_array(), dtype=np.uint32)
    pks = np.asarray(pks)
    if n == 0 or len(pks) == 0:
        return mask
    first, last = int(pk[0]), int(pk[-1])
    a = np.searchsorted(pks, first, side="left")
    b = np.searchsorted(pks, last, side="right")
    inside = pks[a:b].astype(np.int64)
    if last - first == n - 1:  # dense pks: the row is the pk's offset
        mask[inside - first] = True
        return mask
    rows = np.searchsorted(pk, inside)
    mask[rows[pk[rows] == inside]] = True
    return mask


def persona_leaf(key: str) -> Leaf:
    def leaf(ctx: Ctx) -> Tri:
        return Tri(pks_to_mask(ctx.frame, persona_set(ctx.frame, key)), None)

    return leaf
