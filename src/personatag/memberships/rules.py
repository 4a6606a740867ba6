"""The membership rules, once. Every writer here (set-based tag and untag, pins,
the stream's row-wise apply, swaps, retiring) and every model of a writer (the
stream's cascade, which works out in memory what a step will hold) uses them.

- A contact holds persona P while at least one source holds it: one membership
  row per source (an ongoing criterion, an ad hoc request, a manual pin-in).
- Pins win: a pinned-out contact gains no source from a rule, and the row of a
  pin-in (source SOURCE_MANUAL) is removed only by a pin or an unpin, never by a
  rule, so a pinned-in contact always holds P.
- The log says `enter` or `exit` only when P is held or not held as a whole: a
  source added beside another, or removed while another remains, is no change.

Python forms for writers that decide contact by contact, SQL forms for the
set-based ones; both say the same.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import ColumnElement, Select, select

from personatag.domain import SOURCE_MANUAL, Change, PinKind
from personatag.store.schema import Tables


def holds(sources: Collection[int]) -> bool:
    """Whether a contact holding P through `sources` holds P."""
    return bool(sources)


def logged(before: bool, after: bool) -> Change | None:
    """What the log says when holding P goes from `before` to `after`."""
    if before == after:
        return None
    return Change.ENTER if after else Change.EXIT


def may_gain(pinned_out: bool) -> bool:
    """Pins win: whether a rule may give a contact a source of P."""
    return not pinned_out


def answer(
    sources: set[int], source: int, matched: bool, exit_remove: bool, pinned_out: bool
) -> Change | None:
    """Apply one criterion's answer (`source` is the criterion's pk) to the sources
    a contact holds P through, in place; returns what the log says.

    A match adds the source unless the contact is pinned out; a non-match drops
    it only under exit policy `remove`.
    """
    before = holds(sources)
    if matched:
        if may_gain(pinned_out):
            sources.add(source)
    elif exit_remove:
        sources.discard(source)
    return logged(before, holds(sources))


# ---- the same in SQL ---------------------------------------------------------


def members(tables: Tables, persona_pk: int) -> Select[Any]:
    """The pks of contacts that hold P (any source), repeated per source."""
    r = tables.membership_rows
    return select(r.c.contact_pk).where(r.c.persona_pk == persona_pk)


def pinned(tables: Tables, persona_pk: int, kind: PinKind) -> Select[Any]:
    """The pks of contacts pinned `kind` for P."""
    p = tables.pins
    return select(p.c.contact_pk).where(p.c.persona_pk == persona_pk, p.c.kind == kind.value)


def removable_by_rules(tables: Tables) -> ColumnElement[bool]:
    """The membership rows a rule (an untag, a criterion's exit) may remove: all
    but a pin-in's."""
    return tables.membership_rows.c.source != SOURCE_MANUAL
