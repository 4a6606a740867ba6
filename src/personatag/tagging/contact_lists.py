"""Explicit contact lists: a file of contact ids, loaded into a temp table."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    Column,
    Connection,
    Integer,
    Text,
    exists,
    select,
)

from personatag.errors import InputError
from personatag.importer.readers import check_file, check_utf8
from personatag.store import Store
from personatag.store.matchset import TempPks, fresh, temp_table

_ID_HEADERS = ("contact_id", "id")


@dataclass(frozen=True, slots=True)
class FailedRow:
    line: int
    contact_id: str
    reason: str
    persona: str | None = None


def read_contact_ids(path: Path) -> Iterator[tuple[int, str]]:
    """(line, id) pairs from a plain list (one id per line) or a CSV whose
    header has a `contact_id` (or `id`) column. Blank lines are skipped."""
    check_file(path, "contact list")
    check_utf8(path)
    with path.open(encoding="utf-8-sig", newline="") as handle:
        first = handle.readline()
        header = next(csv.reader([first]), [])
        names = [h.strip().lower() for h in header]
        column = next((names.index(h) for h in _ID_HEADERS if h in names), None)
        if column is None:  # a plain list: the first line is an id too
            lines = enumerate(itertools.chain([first], handle), start=1)
            yield from ((n, raw.strip()) for n, raw in lines if raw.strip())
            return
        reader = csv.reader(handle)  # its line_num counts from line 2
        start = 2
        try:
            for row in reader:
                line, start = start, reader.line_num + 2
                if row and any(cell.strip() for cell in row):
                    yield line, row[column].strip() if column < len(row) else ""
        except csv.Error as exc:
            raise InputError(f"{path}:{start}: {exc}") from None


CHUNK = 10_000  # ids per insert into the list's temp table


class LoadedList:
    """Contact pks of a list, in a temp table on one connection.

    `ids` is read once, CHUNK ids at a time, straight into the temp table: the
    ids are held in memory once (by the caller), never copied into per-id
    rows for the whole list. `chunks` counts the inserts.
    """

    def __init__(
        self,
        conn: Connection,
        store: Store,
        ids: Iterable[tuple[int, str]],
        persona: str | None = None,
    ) -> None:
        self.raw = fresh(
            conn, temp_table("pt_list_raw", Column("line", Integer), Column("id", Text))
        )
        self.pks = TempPks(conn, "pt_list").table
        self.failed: list[FailedRow] = []
        self.chunks = 0
        good: list[dict[str, object]] = []
        for line, cid in ids:
            if not cid:
                self.failed.append(FailedRow(line, cid, "empty contact id", persona))
            elif "\x00" in cid:
                self.failed.append(FailedRow(line, cid, "NUL byte in contact id", persona))
            else:
                good.append({"line": line, "id": cid})
                if len(good) == CHUNK:
                    self._insert(conn, good)
        if good:
            self._insert(conn, good)
        c = store.tables.contacts
        unknown = conn.execute(
            select(self.raw.c.line, self.raw.c.id)
            # NOT EXISTS: an anti-join on the unique id index; NOT IN over 10M
            # ids degrades to a rescan per row on PostgreSQL past work_mem.
            .where(~exists().where(c.c.id == self.raw.c.id))
            .order_by(self.raw.c.line)
        )
        self.failed += [
            FailedRow(line, cid, f"unknown contact id {cid!r}", persona) for line, cid in unknown
        ]
        self.failed.sort(key=lambda f: f.line)
        conn.execute(
            self.pks.insert().from_select(
                ["pk"],
                select(c.c.pk).where(c.c.id.in_(select(self.raw.c.id))),
            )
        )

    def _insert(self, conn: Connection, rows: list[dict[str, object]]) -> None:
        conn.execute(self.raw.insert(), rows)
        self.chunks += 1
        rows.clear()

    def drop(self, conn: Connection) -> None:
        self.pks.drop(conn, checkfirst=True)
        self.raw.drop(conn, checkfirst=True)
