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

CHUNK = 1 << 22  # events per step of a window scan

# publication rows -> whether a read of that publication counts
PublicationFilter: TypeAlias = Callable[[Ctx], Array]


def count_leaf(node: Count, where: PublicationFilter | None) -> Leaf:
    cmp, k = COMPARATORS[node.op], node.value
    key = ("count", node.event, node.where, node.days)

    def leaf(ctx: Ctx) -> Tri:
        n = ctx.table.n
        if node.op in (">=", "<") and k == 0:  # every count is >= 0: nothing to count
            return Tri(np.full(n, node.op == ">=", dtype=bool), None)
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
    if publications is not None and any(s.publication is None for s in segments):
        raise ValueError(
            "a read segment of the columnar frame has no publication rows:"
            " count(read where ...) cannot filter it"
        )
    # one bincount over every segment's rows: each costs a pass over n counters
    parts = [_segment_rows(segment, lo, hi, publications) for segment in segments]
    parts = [p for p in parts if len(p)]
    if not parts:
        return _NONE
    rows = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return np.bincount(rows, minlength=frame.contacts.n)


def _segment_rows(segment: Events, lo: int, hi: int, publications: Array | None) -> Array:
    """The contact rows of the segment's counted events in (lo, hi]."""
    if segment.sorted:
        a, b = (int(i) for i in np.searchsorted(segment.at, [lo, hi], side="right"))
        if segment.live is None and publications is None:
            return segment.row[a:b]
    else:
        a, b = 0, len(segment.at)
    # In chunks: the masks and the gathers' index copies stay small and in cache.
    parts = []
    for start in range(a, b, CHUNK):
        stop = min(start + CHUNK, b)
        keep: Array | None = None
        if not segment.sorted:
            at = segment.at[start:stop]
            keep = at > lo
            keep &= at <= hi
        if segment.live is not None:
            live = segment.live[start:stop]
            keep = live if keep is None else keep & live
        if publications is not None:
            pubs: Array = segment.publication
            passes = publications[pubs[start:stop]]
            keep = passes if keep is None else keep & passes
        rows = segment.row[start:stop]
        parts.append(rows if keep is None else rows[keep])
    if not parts:
        return segment.row[:0]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


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
    a, b = _bound(pks, first, "left"), _bound(pks, last, "right")
    inside = pks[a:b].astype(np.int64)
    if last - first == n - 1:  # dense pks: the row is the pk's offset
        if first:
            inside -= first
        mask[inside] = True
        return mask
    rows = np.searchsorted(pk, inside)
    mask[rows[pk[rows] == inside]] = True
    return mask


def _bound(values: Array, x: int, side: Any) -> int:
    """np.searchsorted for one int, in the array's own dtype (a Python int
    would turn a uint32 array into an int64 copy first)."""
    info = np.iinfo(values.dtype)
    if x < info.min:
        return 0
    if x > info.max:
        return len(values)
    return int(np.searchsorted(values, values.dtype.type(x), side=side))


def persona_leaf(key: str) -> Leaf:
    def leaf(ctx: Ctx) -> Tri:
        return Tri(pks_to_mask(ctx.frame, persona_set(ctx.frame, key)), None)

    return leaf
