"""Applying an ongoing criterion's answers to memberships, inside one transaction.

The stream, a criterion's swap-in and reconciliation all end here. For one
criterion, `evaluated` contacts were checked and `matched` ones hold it:

- a matched contact without the criterion's membership row gets one, unless
  pinned out (pins win); the log says `enter` only if they held the persona
  through no other source;
- with exit policy `remove`, an evaluated contact that no longer matches
  loses the criterion's row; the log says `exit` only if no other source
  (another criterion, an ad hoc request, a pin-in) still holds the persona.

(The rules themselves are in rules.py.) The writes run as statements compiled
from the table definitions once and executed row-wise on the driver: at stream
rates SQLAlchemy's per-row parameter handling would cost more than the writes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from personatag.domain import Change, PinKind
from personatag.memberships import grants, rules
from personatag.memberships.apply import STATISTICS_ROWS
from personatag.memberships.log import insert_bulk_entry, insert_indexed_entries
from personatag.store import Store
from personatag.store.rowwise import (
    Prepared,
    bound,
    fetch_tuples,
    grouped,
    in_parts,
    once_per_table,
)
from personatag.store.schema import Tables

_LOG_COLUMNS = (
    "at",
    "persona_pk",
    "contact_pk",
    "change",
    "source",
    "request_pk",
    "criterion_pk",
    "actor",
    "reason",
)


@dataclass(frozen=True)
class _Statements:
    """The writer's statements, compiled once per dialect (see store.rowwise)."""

    log: Prepared


# A membership row's key and columns, as Writer.flush deletes and inserts
# them (Backend.delete_int_rows, insert_int_rows: one statement on PostgreSQL).
KEY_COLUMNS = ("persona_pk", "contact_pk", "source")
ADD_COLUMNS = (*KEY_COLUMNS, "grant_pk")


def _statements(tables: Tables) -> _Statements:
    m = tables.membership_rows

    def build() -> _Statements:
        return _Statements(
            log=Prepared(tables.membership_log.insert(), _LOG_COLUMNS),
        )

    return once_per_table(m, "memberships.rows", build)


@dataclass
class Holders:
    """Who holds which persona through which sources, for the contacts at hand."""

    sources: dict[tuple[int, int], set[int]] = field(default_factory=dict)
    pinned_out: set[tuple[int, int]] = field(default_factory=set)
    # (persona pk, source) -> the contacts holding the persona through it: built
    # from `sources` on first use, then kept in step with it by Writer.decide
    # (the only writer of `sources` once loaded).
    _by_source: dict[tuple[int, int], set[int]] | None = field(
        default=None, repr=False, compare=False
    )

    def holding(self, persona_pk: int, source: int) -> set[int]:
        """The contacts holding `persona_pk` through `source` (live: do not modify)."""
        if self._by_source is None:
            index: dict[tuple[int, int], set[int]] = {}
            for (ppk, cpk), srcs in self.sources.items():
                for src in srcs:
                    got = index.get((ppk, src))
                    if got is None:
                        index[(ppk, src)] = {cpk}
                    else:
                        got.add(cpk)
            self._by_source = index
        return self._by_source.setdefault((persona_pk, source), set())

    @classmethod
    def load(cls, conn: Connection, store: Store, wanted: Mapping[int, Collection[int]]) -> Holders:
        """Rows of the given contacts in the personas wanted for each (contact pk ->
        persona pks), read as `grouped` plans them."""
        t = store.tables
        m, p = t.membership_rows, t.pins
        out = cls()
        sources = out.sources
        for personas, cpks in grouped(wanted):
            for within in in_parts(store.backend, m.c.contact_pk, cpks):
                q = select(m.c.persona_pk, m.c.contact_pk, m.c.source).where(
                    m.c.persona_pk.in_(personas), within
                )
                for ppk, cpk, src in fetch_tuples(conn, q):
                    key = (ppk, cpk)
                    held = sources.get(key)
                    if held is None:
                        sources[key] = {src}
                    else:
                        held.add(src)
        everyone = sorted(c for c, ppks in wanted.items() if ppks)
        all_personas = sorted(set().union(*wanted.values()))
        for within in in_parts(store.backend, p.c.contact_pk, everyone):
            q2 = select(p.c.persona_pk, p.c.contact_pk).where(
                p.c.persona_pk.in_(all_personas),
                within,
                p.c.kind == PinKind.OUT.value,
            )
            out.pinned_out.update((int(a), int(b)) for a, b in conn.execute(q2))
        return out

    @classmethod
    def load_persona(cls, conn: Connection, store: Store, persona_pk: int) -> Holders:
        """Every row of one persona (for set-wide work: swaps, reconciliation)."""
        t = store.tables
        m, p = t.membership_rows, t.pins
        out = cls()
        q = select(m.c.contact_pk, m.c.source).where(m.c.persona_pk == persona_pk)
        for cpk, src in conn.execute(q):
            out.sources.setdefault((persona_pk, int(cpk)), set()).add(int(src))
        q2 = select(p.c.contact_pk).where(
            p.c.persona_pk == persona_pk, p.c.kind == PinKind.OUT.value
        )
        out.pinned_out.update((persona_pk, int(c)) for c in conn.scalars(q2))
        return out


@dataclass
class Outcome:
    entered: list[tuple[int, int]] = field(default_factory=list)  # (persona, contact) logged
    exited: list[tuple[int, int]] = field(default_factory=list)
    rows_added: int = 0
    rows_removed: int = 0


class Writer:
    """Collects membership and log writes, then runs them as a few statements."""

    def __init__(
        self,
        store: Store,
        at: datetime,
        bulk_threshold: int,
        labels: dict[int, str] | None = None,
        compact: int = 0,
    ) -> None:
        self.labels = labels or {}
        self.store = store
        self.at = at
        self.bulk_threshold = bulk_threshold
        # At least this many enters (or exits) of one persona through one
        # criterion become one compact entry, indexed by contact (0: never).
        self.compact = compact
        # Rows to add and remove, by (persona pk, contact pk, source): a row added
        # and removed again before the flush is neither (flushing removes first).
        self.inserts: dict[tuple[int, int, int], None] = {}
        self.deletes: dict[tuple[int, int, int], None] = {}
        # (persona_pk, change, criterion_pk, contact_pk), in the order they happened
        self.logs: list[tuple[int, str, int, int]] = []
        self.outcome = Outcome()

    def decide(
        self,
        holders: Holders,
        persona_pk: int,
        criterion_pk: int,
        exit_remove: bool,
        evaluated: Iterable[int],
        matched: Collection[int],
    ) -> list[int]:
        """Apply one criterion's answers (rules.answer); returns the contacts
        whose persona changed as a whole."""
        changed: list[int] = []
        sources = holders.sources
        held = holders.holding(persona_pk, criterion_pk)
        # Only an answer that moves a source matters (most move none): a match
        # not held through this criterion, or with exit policy `remove` a held
        # non-match. Found by set lookups first, in the order answered.
        if exit_remove:
            moving = [c for c in evaluated if (c in matched) is not (c in held)]
        else:
            moving = [c for c in evaluated if c in matched and c not in held]
        for cpk in moving:
            key = (persona_pk, cpk)
            srcs = sources.get(key)
            had = srcs is not None and criterion_pk in srcs
            hit = cpk in matched
            if hit == had or not (hit or exit_remove):
                continue  # moved already (a contact answered twice)
            if srcs is None:
                srcs = set()
            change = rules.answer(srcs, criterion_pk, hit, exit_remove, key in holders.pinned_out)
            if srcs and key not in sources:
                sources[key] = srcs
            if criterion_pk in srcs:
                held.add(cpk)
            else:
                held.discard(cpk)
            if change is not None:
                self.logs.append((persona_pk, change.value, criterion_pk, cpk))
                moved = self.outcome.entered if change is Change.ENTER else self.outcome.exited
                moved.append(key)
                changed.append(cpk)
            row = (persona_pk, cpk, criterion_pk)
            if criterion_pk in srcs:
                if row in self.deletes:
                    del self.deletes[row]  # still stored: keep it
                else:
                    self.inserts[row] = None
            elif had:
                if row in self.inserts:
                    del self.inserts[row]  # never stored: nothing to remove
                else:
                    self.deletes[row] = None
        return changed

    def _unique(self) -> bool:
        """Whether each (persona, contact) is logged once: only then can its
        entries be grouped without changing any contact's order of changes."""
        return len({(p, c) for p, _, _, c in self.logs}) == len(self.logs)

    def _reason(self, change: str, criterion_pk: int, reason: str | None) -> str:
        if reason is not None:
            return reason
        label = self.labels.get(criterion_pk, f"criterion pk {criterion_pk}")
        return f"matches {label}" if change == Change.ENTER.value else f"left {label}"

    def flush(self, conn: Connection, reason: str | None = None) -> Outcome:
        """Write everything; `reason` (default: what the criterion did) goes in the log."""
        t = self.store.tables
        statements = _statements(t)
        at = bound(conn, t.membership_log.c.at, self.at)
        self.store.backend.delete_int_rows(conn, t.membership_rows, KEY_COLUMNS, list(self.deletes))
        if self.inserts:
            # One grant for the flush: the rows' source names their criterion.
            grant = grants.add(conn, self.store, self.at)
            self.store.backend.insert_int_rows(
                conn, t.membership_rows, ADD_COLUMNS, [(p, c, s, grant) for p, c, s in self.inserts]
            )
        if len(self.inserts) >= STATISTICS_ROWS:
            # Lookups by contact depend on them (SQLite: schema.py, membership_rows).
            self.store.backend.analyze_skip_scan(conn, t.membership_rows)
        # Each (persona, contact) once: the changes of one persona, change and
        # criterion are grouped (which never reorders one contact's changes to
        # one persona). A group larger than `bulk_threshold` (a request's) is one
        # entry pruned by its pk range; one of at least `compact` (a stream
        # step's) one entry indexed by contact. The rest are a row each, in the
        # order the changes happened.
        done: set[tuple[int, str, int]] = set()
        entries: list[tuple[dict[str, Any], Any]] = []
        if self.logs and self._unique():
            groups: dict[tuple[int, str, int], list[int]] = {}
            for persona_pk, change, criterion_pk, cpk in self.logs:
                groups.setdefault((persona_pk, change, criterion_pk), []).append(cpk)
            for (persona_pk, change, criterion_pk), pks in groups.items():
                ranged = len(pks) > self.bulk_threshold
                if not ranged and not (self.compact and len(pks) >= self.compact):
                    continue
                import numpy as np

                values = {
                    "at": self.at,
                    "persona_pk": persona_pk,
                    "change": change,
                    "source": criterion_pk,
                    "request_pk": None,
                    "criterion_pk": criterion_pk,
                    "actor": None,
                    "reason": self._reason(change, criterion_pk, reason),
                }
                ids = np.unique(np.asarray(pks, dtype=np.int64))
                if ranged:
                    insert_bulk_entry(conn, self.store, values, ids)
                else:
                    entries.append((values, ids))
                done.add((persona_pk, change, criterion_pk))
        insert_indexed_entries(conn, self.store, entries)
        single = [e for e in self.logs if e[:3] not in done] if done else self.logs
        statements.log.executemany(
            conn,
            [
                (at, p, cpk, change, crit, None, crit, None, self._reason(change, crit, reason))
                for p, change, crit, cpk in single
            ],
        )
        self.outcome.rows_added = len(self.inserts)
        self.outcome.rows_removed = len(self.deletes)
        return self.outcome
