"""Applying an ongoing criterion's answers to memberships, inside one transaction.

The stream, a criterion's swap-in and reconciliation all end here. For one
criterion, `evaluated` contacts were checked and `matched` ones hold it:

- a matched contact without the criterion's membership row gets one, unless
  pinned out (pins win); the log says `enter` only if they held the persona
  through no other source;
- with exit policy `remove`, an evaluated contact that no longer matches
  loses the criterion's row; the log says `exit` only if no other source
  (another criterion, an ad hoc request, a pin-in) still holds the persona.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, select

from personatag.domain import Change, PinKind
from personatag.engines.local.stream.inputs import chunks, grouped
from personatag.store import Store
from personatag.store.types import to_micros


def executemany(conn: Connection, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
    """Run `sql` (with ? placeholders) once per row on the driver's cursor."""
    if conn.dialect.paramstyle in ("format", "pyformat"):
        sql = sql.replace("?", "%s")
    conn.exec_driver_sql(sql, rows)


def fetch_tuples(conn: Connection, query: Select[Any]) -> list[tuple[Any, ...]]:
    """Run `query` on the driver's cursor, in `conn`'s transaction, and return
    plain tuples: building a Row per result costs more than the read itself when
    a batch reads hundreds of thousands of rows. No result types are applied, so
    only for columns the driver already returns as wanted (integers). The raw
    cursor does not begin a transaction by itself: run something through
    `conn` first (as every caller does) when it must read inside one."""
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.construct_params()
    args: Any = (
        tuple(params[name] for name in compiled.positiontup or ())
        if compiled.positional
        else params
    )
    cur = conn.connection.cursor()
    try:
        cur.execute(str(compiled), args)
        return list(cur.fetchall())
    finally:
        cur.close()


@dataclass
class Holders:
    """Who holds which persona through which sources, for the contacts at hand."""

    sources: dict[tuple[int, int], set[int]] = field(default_factory=dict)
    pinned_out: set[tuple[int, int]] = field(default_factory=set)

    @classmethod
    def load(cls, conn: Connection, store: Store, wanted: Mapping[int, Collection[int]]) -> Holders:
        """Rows of the given contacts in the personas wanted for each (contact pk ->
        persona pks), read as `grouped` plans them."""
        t = store.tables
        m, p = t.memberships, t.pins
        out = cls()
        sources = out.sources
        for personas, cpks in grouped(wanted):
            for part in chunks(cpks):
                q = select(m.c.persona_pk, m.c.contact_pk, m.c.source).where(
                    m.c.persona_pk.in_(personas), m.c.contact_pk.in_(part)
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
        for part in chunks(everyone):
            q2 = select(p.c.persona_pk, p.c.contact_pk).where(
                p.c.persona_pk.in_(all_personas),
                p.c.contact_pk.in_(part),
                p.c.kind == PinKind.OUT.value,
            )
            out.pinned_out.update((int(a), int(b)) for a, b in conn.execute(q2))
        return out

    @classmethod
    def load_persona(cls, conn: Connection, store: Store, persona_pk: int) -> Holders:
        """Every row of one persona (for set-wide work: swaps, reconciliation)."""
        t = store.tables
        m, p = t.memberships, t.pins
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
    ) -> None:
        self.labels = labels or {}
        self.store = store
        self.at = at
        self.bulk_threshold = bulk_threshold
        # Rows to add and remove, by (persona pk, contact pk, source): a row added
        # and removed again before the flush is neither (flushing removes first).
        self.inserts: dict[tuple[int, int, int], dict[str, object]] = {}
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
        """Apply one criterion's answers; returns the contacts whose persona changed."""
        changed: list[int] = []
        for cpk in evaluated:
            key = (persona_pk, cpk)
            srcs = holders.sources.get(key)
            has = srcs is not None and criterion_pk in srcs
            if cpk in matched:
                if has or key in holders.pinned_out:
                    continue
                if srcs is None:
                    srcs = holders.sources[key] = set()
                if not srcs:
                    self._log(persona_pk, Change.ENTER.value, criterion_pk, cpk)
                    self.outcome.entered.append(key)
                    changed.append(cpk)
                srcs.add(criterion_pk)
                row = (persona_pk, cpk, criterion_pk)
                if row in self.deletes:
                    del self.deletes[row]  # still stored: keep it
                    continue
                self.inserts[row] = {
                    "persona_pk": persona_pk,
                    "contact_pk": cpk,
                    "source": criterion_pk,
                    "since": self.at,
                    "request_pk": None,
                    "criterion_pk": criterion_pk,
                }
            elif has and exit_remove and srcs is not None:
                srcs.discard(criterion_pk)
                if not srcs:
                    self._log(persona_pk, Change.EXIT.value, criterion_pk, cpk)
                    self.outcome.exited.append(key)
                    changed.append(cpk)
                row = (persona_pk, cpk, criterion_pk)
                if self.inserts.pop(row, None) is None:
                    self.deletes[row] = None
        return changed

    def _log(self, persona_pk: int, change: str, criterion_pk: int, cpk: int) -> None:
        self.logs.append((persona_pk, change, criterion_pk, cpk))

    def _log_row(
        self, persona_pk: int, change: str, criterion_pk: int, reason: str | None, cpk: int | None
    ) -> dict[str, object]:
        if reason is None:
            label = self.labels.get(criterion_pk, f"criterion pk {criterion_pk}")
            reason = f"matches {label}" if change == Change.ENTER.value else f"left {label}"
        return {
            "at": self.at,
            "persona_pk": persona_pk,
            "contact_pk": cpk,
            "change": change,
            "source": criterion_pk,
            "request_pk": None,
            "criterion_pk": criterion_pk,
            "actor": None,
            "reason": reason,
        }

    def flush(self, conn: Connection, reason: str | None = None) -> Outcome:
        """Write everything; `reason` (default: what the criterion did) goes in the log."""
        t = self.store.tables
        log = t.membership_log
        if self.deletes:
            executemany(
                conn,
                "DELETE FROM memberships WHERE persona_pk = ? AND contact_pk = ? AND source = ?",
                list(self.deletes),
            )
        if self.inserts:
            # Straight to the driver: SQLAlchemy's per-row parameter processing
            # costs more than the insert itself at stream rates.
            since = to_micros(self.at)
            executemany(
                conn,
                "INSERT INTO memberships (persona_pk, contact_pk, source, since, request_pk, "
                "criterion_pk) VALUES (?, ?, ?, ?, NULL, ?)",
                [
                    (r["persona_pk"], r["contact_pk"], r["source"], since, r["criterion_pk"])
                    for r in self.inserts.values()
                ],
            )
        # Large and each contact once: one compact entry per persona, change and
        # criterion. Otherwise row by row, in the order the changes happened.
        groups: dict[tuple[int, str, int], list[int]] = {}
        if len(self.logs) > self.bulk_threshold and len(
            {(p, c) for p, _, _, c in self.logs}
        ) == len(self.logs):
            for persona_pk, change, criterion_pk, cpk in self.logs:
                groups.setdefault((persona_pk, change, criterion_pk), []).append(cpk)
        single: list[dict[str, object]] = []
        for persona_pk, change, criterion_pk, cpk in [] if groups else self.logs:
            single.append(self._log_row(persona_pk, change, criterion_pk, reason, cpk))
        for (persona_pk, change, criterion_pk), pks in groups.items():
            if len(pks) <= self.bulk_threshold:
                single.extend(
                    self._log_row(persona_pk, change, criterion_pk, reason, cpk) for cpk in pks
                )
                continue
            import numpy as np

            from personatag.store.ids import encode_ids

            ids = np.unique(np.asarray(pks, dtype=np.int64))
            conn.execute(
                log.insert().values(
                    **self._log_row(persona_pk, change, criterion_pk, reason, None),
                    bulk_count=len(ids),
                    bulk_ids=encode_ids(ids),
                    bulk_min=int(ids[0]),
                    bulk_max=int(ids[-1]),
                )
            )
        if single:
            executemany(
                conn,
                "INSERT INTO membership_log (at, persona_pk, contact_pk, change, source, "
                "request_pk, criterion_pk, actor, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        to_micros(r["at"]),  # type: ignore[arg-type]
                        r["persona_pk"],
                        r["contact_pk"],
                        r["change"],
                        r["source"],
                        r["request_pk"],
                        r["criterion_pk"],
                        r["actor"],
                        r["reason"],
                    )
                    for r in single
                ],
            )
        self.outcome.rows_added = len(self.inserts)
        self.outcome.rows_removed = len(self.deletes)
        return self.outcome
