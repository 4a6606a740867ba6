"""The delta: what changed since the base, re-read from the store.

A feed row names contacts. A contact change re-reads their rows; a read
(login) change re-reads every read (login) of those contacts, and the base's
events of them are masked dead (`Events.live`), since reads have no key of
their own to update by. A contact change with no field list (a new contact,
or every field: `generate`) re-reads their reads and logins too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, select

from personatag.domain import PUBLICATION_FIELDS, FieldType
from personatag.engines.columnar import load
from personatag.engines.columnar.frame import Array, Events, Frame, Table
from personatag.engines.columnar.patch import NotAppendable, overlay, upsert_rows
from personatag.engines.columnar.segment import (
    read_arrays,
    read_meta,
    read_table,
    write_arrays,
    write_meta,
    write_table,
)
from personatag.store import Store, changefeed
from personatag.store.ids import decode_ids

FEED_BATCH = 50_000
EVENT_KINDS = ("reads", "logins")


def _no_events(kind: str) -> dict[str, Array]:
    out = {"contact": np.zeros(0, np.int64), "at": np.zeros(0, np.int64)}
    if kind == "reads":
        out["publication"] = np.zeros(0, np.int64)
    return out


@dataclass(frozen=True)
class Delta:
    contacts: Table  # changed and new contacts, ascending pk
    publications: Table | None  # every publication, when they changed
    # per event kind: the contacts whose events were re-read, and those events
    pks: dict[str, Array]
    events_of: dict[str, dict[str, Array]]

    @staticmethod
    def empty() -> Delta:
        return Delta(
            Table(np.zeros(0, np.int64), {}),
            None,
            {k: np.zeros(0, np.int64) for k in EVENT_KINDS},
            {k: _no_events(k) for k in EVENT_KINDS},
        )

    @property
    def size(self) -> int:
        return self.contacts.n + sum(len(p) for p in self.pks.values())

    @property
    def events(self) -> int:
        return sum(len(e["at"]) for e in self.events_of.values())


def _feed(conn: Connection, store: Store, after: int, head: int) -> dict[str, Any]:
    """Contacts named by feed rows in (after, head]: by kind, with the contacts
    whose change names no fields."""
    ch = store.tables.changes
    named: dict[str, list[Any]] = {"contact": [], "read": [], "login": [], "all": []}
    query = select(ch.c.seq, ch.c.kind, ch.c.contact_pk, ch.c.pks, ch.c.fields)
    while after < head:
        rows = conn.execute(
            query.where(ch.c.seq > after, ch.c.seq <= head).order_by(ch.c.seq).limit(FEED_BATCH)
        ).all()
        if not rows:
            break
        for _seq, kind, contact_pk, pks, fields in rows:
            if kind not in named:
                continue
            ids: Any = [contact_pk] if contact_pk is not None else decode_ids(pks)
            named[kind].append(np.asarray(ids, dtype=np.int64))
            if kind == changefeed.KIND_CONTACT and fields is None:
                named["all"].append(np.asarray(ids, dtype=np.int64))
        after = int(rows[-1][0])
    return {
        k: np.unique(np.concatenate(v)) if v else np.zeros(0, np.int64) for k, v in named.items()
    }


def catch_up(
    conn: Connection,
    store: Store,
    fields: list[list[str]],
    delta: Delta,
    offset: int,
    head: int,
) -> tuple[Delta, int]:
    """`delta` with the changes of feed rows (offset, head] re-read; (delta, head)."""
    if head <= offset:
        return delta, offset
    named = _feed(conn, store, offset, head)
    kinds = {name: FieldType(kind) for name, kind in fields}
    contacts = delta.contacts
    if len(named["contact"]):
        fresh = load.contacts(conn, store, kinds, named["contact"])
        contacts = fresh if contacts.n == 0 else upsert_rows(contacts, fresh)
    pks = dict(delta.pks)
    events_of = dict(delta.events_of)
    for kind, feed_kind in (("reads", "read"), ("logins", "login")):
        wanted = np.union1d(named[feed_kind], named["all"])
        if not len(wanted):
            continue
        fresh_events = load.events(conn, store, kind, wanted)
        old = events_of[kind]
        keep = ~np.isin(old["contact"], wanted)
        events_of[kind] = {
            key: np.concatenate([np.asarray(old[key])[keep], fresh_events[key]]) for key in old
        }
        pks[kind] = np.union1d(pks[kind], wanted)
    return Delta(contacts, delta.publications, pks, events_of), head


def write_delta(path: Path, delta: Delta) -> None:
    meta: dict[str, Any] = {}
    if delta.contacts.n:
        kinds = {name: col.kind for name, col in delta.contacts.columns.items()}
        meta["contacts"] = write_table(path, "contacts", delta.contacts, kinds)
    if delta.publications is not None:
        meta["publications"] = write_table(
            path, "publications", delta.publications, PUBLICATION_FIELDS
        )
    for kind in EVENT_KINDS:
        meta[kind] = write_arrays(path, kind, {"pks": delta.pks[kind], **delta.events_of[kind]})
    write_meta(path, meta)


def read_delta(path: Path) -> Delta:
    meta = read_meta(path)
    empty = Delta.empty()
    contacts = read_table(path, "contacts", meta["contacts"]) if "contacts" in meta else None
    pubs = (
        read_table(path, "publications", meta["publications"]) if "publications" in meta else None
    )
    pks, events_of = {}, {}
    for kind in EVENT_KINDS:
        arrays = read_arrays(path, kind, meta[kind])
        pks[kind] = arrays.pop("pks")
        events_of[kind] = arrays
    if contacts is not None:  # the delta is small: make its columns now
        contacts = Table(np.asarray(contacts.pk), dict(contacts.columns.items()))
    return Delta(contacts or empty.contacts, pubs, pks, events_of)


def frame_of(
    path: Path, meta: Any, contacts: Table, pubs: Table, delta: Delta, offset: int
) -> Frame:
    """The base at `path` (its `contacts` and `pubs` already opened) with
    `delta` laid over it."""
    merged, _rows = overlay(contacts, delta.contacts) if delta.contacts.n else (contacts, None)
    if delta.publications is not None:
        old = np.asarray(pubs.pk)
        new = np.asarray(delta.publications.pk)
        if len(new) < len(old) or not np.array_equal(new[: len(old)], old):
            raise NotAppendable("publications were removed or renumbered")
        pubs = delta.publications
    n = merged.n
    segments: dict[str, list[Events]] = {}
    for kind in EVENT_KINDS:
        base = read_arrays(path, kind, meta[kind])
        changed = delta.pks[kind]
        live = None
        if len(changed):
            pk = np.asarray(merged.pk)
            rows = np.minimum(np.searchsorted(pk, changed), max(n - 1, 0))
            dead = np.zeros(n, dtype=np.bool_)
            if n:
                dead[rows[pk[rows] == changed]] = True
            live = ~dead[np.asarray(base["row"])]
        segs = [Events(base["row"], base["at"], base.get("publication"), live, sorted=True)]
        extra = delta.events_of[kind]
        if len(extra["at"]):
            order = np.argsort(extra["at"], kind="stable")
            segs.append(
                Events(
                    load.rows_of(merged.pk, np.asarray(extra["contact"])[order]),
                    np.asarray(extra["at"])[order],
                    (
                        load.rows_of(pubs.pk, np.asarray(extra["publication"])[order])
                        if kind == "reads"
                        else None
                    ),
                    sorted=True,
                )
            )
        segments[kind] = segs
    return Frame(
        contacts=merged,
        publications=pubs,
        reads=tuple(segments["reads"]),
        logins=tuple(segments["logins"]),
        offset=offset,
    )
