"""A match an engine computed as contact pks (Flink's result files, the
columnar engine's masks), handed to the applier as a condition on contacts.

A few runs of consecutive pks become pk ranges; otherwise the pks go into a
temp table on the applier's connection, in key order (the b-tree fills at its
end). The sorted pks are also given to the applier as they are
(`known_pks`), so a tag can skip evaluating the condition at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Column, ColumnElement, Connection, or_, select, text

from personatag.engines.base import Match
from personatag.store import Store
from personatag.store.matchset import fresh, temp_table

_LOAD_CHUNK = 1_000_000
_MAX_RUNS = 32


class PksMatch(Match):
    materialized = True

    def __init__(self, pks: npt.NDArray[np.int64], *, presorted: bool = False) -> None:
        """`pks` in any order with repeats, or ascending and unique when `presorted`."""
        pks = np.asarray(pks, dtype=np.int64)
        self.pks = pks if presorted else sorted_unique(pks)
        self._table: Any = None

    def known_pks(self) -> npt.NDArray[np.int64]:
        return self.pks

    def condition(self, conn: Connection, store: Store) -> ColumnElement[bool]:
        pks = self.pks
        pk = store.tables.contacts.c.pk
        spans = runs(pks)
        if spans is not None:
            # A few runs of consecutive pks (large shares often are): pk range
            # scans, with no temp table to fill.
            return or_(*(pk.between(lo, hi) for lo, hi in spans))
        if len(pks) == 0:
            return pk.is_(None)  # a pk is never NULL: nobody
        b = store.backend
        table = fresh(
            conn, temp_table(f"pt_matched_{b.name}", Column("pk", b.temp_pk_type, primary_key=True))
        )
        self._table = table
        insert = text(f"INSERT INTO {table.name} (pk) {b.int_rows_sql('pks')}")
        for start in range(0, len(pks), _LOAD_CHUNK):
            chunk = pks[start : start + _LOAD_CHUNK]
            conn.execute(insert, {"pks": b.bind_ints(chunk.tolist())})
        b.analyze_temp(conn, table)
        return pk.in_(select(table.c.pk))

    def close(self, conn: Connection) -> None:
        if self._table is not None:
            self._table.drop(conn, checkfirst=True)
            self._table = None


def runs(pks: npt.NDArray[np.int64]) -> list[tuple[int, int]] | None:
    """Sorted unique pks as at most _MAX_RUNS (first, last) runs of consecutive
    pks, or None when they make more (or there are none)."""
    if len(pks) == 0:
        return None
    if pks[-1] - pks[0] + 1 == len(pks):
        return [(int(pks[0]), int(pks[-1]))]  # one run: no 80 MB diff at 10M
    breaks = np.flatnonzero(np.diff(pks) != 1)
    if len(breaks) >= _MAX_RUNS:
        return None
    starts = [0, *(breaks + 1).tolist()]
    ends = [*breaks.tolist(), len(pks) - 1]
    return [(int(pks[a]), int(pks[b])) for a, b in zip(starts, ends, strict=True)]


def sorted_unique(pks: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """`pks` ascending without repeats."""
    # np.unique hashes in NumPy 2 (10 s for 10M here); a sort and a diff take ~1 s.
    if len(pks) == 0:
        return pks
    ordered = np.sort(pks, kind="stable")
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]
