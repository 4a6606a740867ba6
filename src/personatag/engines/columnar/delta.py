"""The delta: what changed since the base, re-read from the store.

A feed row names contacts. A contact change that names its fields re-reads
only those fields of those contacts (a per-field patch, `Delta.patches`);
one that names none (a new contact, `generate`), a contact the copy does not
hold yet, or a field the copy does not know re-reads the whole row
(`Delta.contacts`) and the contact's reads and logins too. A read (login)
change re-reads every read (login) of those contacts, and the base's events
of them are masked dead (`Events.live`), since reads have no key of their
own to update by. Patches lie over the whole rows: a whole-row re-read drops
the contact from every patch, a patch re-read later wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, select

from personatag.domain import PUBLICATION_FIELDS, FieldType
from personatag.engines.columnar import load
from personatag.engines.columnar.frame import ODD, Array, Events, Frame, Table
from personatag.engines.columnar.patch import (
    NotAppendable,
    apply_patches,
    overlay,
    take_rows,
    upsert_rows,
)
from personatag.engines.columnar.segment import (
    read_arrays,
    read_meta,
    read_table,
    write_arrays,
    write_meta,
    write_table,
)
from personatag.store import Store, changefeed
from personatag.store.columns import parse_id_list
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
    # per field: changed contacts (ascending pk) and that field's new values
    patches: dict[str, Table] = field(default_factory=dict)

    @staticmethod
    def empty() -> Delta:
        return Delta(
            Table(np.zeros(0, np.int64), {}),
            None,
            {k: np.zeros(0, np.int64) for k in EVENT_KINDS},
            {k: _no_events(k) for k in EVENT_KINDS},
        )

    @property
    def patched(self) -> int:
        """Contacts with a patched field."""
        if not self.patches:
            return 0
        return len(np.unique(np.concatenate([np.asarray(t.pk) for t in self.patches.values()])))

    @property
    def size(self) -> int:
        return self.contacts.n + self.patched + sum(len(p) for p in self.pks.values())

    @property
    def events(self) -> int:
        return sum(len(e["at"]) for e in self.events_of.values())


@dataclass(frozen=True)
class Named:
    """The contacts feed rows name, by what changed."""

    rows: Array  # contact changes that name no fields: whole rows, reads and logins
    fields: dict[str, Array]  # contact changes naming fields, by the fields' text
    reads: Array
    logins: Array


def _ids(values: list[Array]) -> Array:
    return np.unique(np.concatenate(values)) if values else np.zeros(0, np.int64)


def _feed(conn: Connection, store: Store, after: int, head: int) -> Named:
    """Contacts named by feed rows in (after, head]. Single-contact rows are
    grouped in the store (one id list per kind and field list), so 100k of
    them cost a few rows, not 100k."""
    ch = store.tables.changes
    found: dict[tuple[str, str | None], list[Array]] = {}
    in_range = (ch.c.seq > after) & (ch.c.seq <= head) & ch.c.kind.in_(_KINDS)
    single = (
        select(ch.c.kind, ch.c.fields, store.backend.id_list(ch.c.contact_pk))
        .where(in_range, ch.c.contact_pk.is_not(None))
        .group_by(ch.c.kind, ch.c.fields)
    )
    for kind, fields, ids in conn.execute(single):
        found.setdefault((kind, fields), []).append(parse_id_list(ids))
    blocks = select(ch.c.kind, ch.c.fields, ch.c.pks).where(in_range, ch.c.contact_pk.is_(None))
    for kind, fields, pks in conn.execute(blocks):
        found.setdefault((kind, fields), []).append(np.asarray(decode_ids(pks), np.int64))
    by_kind: dict[str, list[Array]] = {k: [] for k in _KINDS}
    rows: list[Array] = []
    named_fields: dict[str, list[Array]] = {}
    for (kind, fields), parts in found.items():
        by_kind[kind].extend(parts)
        if kind != changefeed.KIND_CONTACT:
            continue
        if fields is None:
            rows.extend(parts)
        else:
            named_fields.setdefault(fields, []).extend(parts)
    return Named(
        rows=_ids(rows),
        fields={k: _ids(v) for k, v in named_fields.items()},
        reads=_ids(by_kind[changefeed.KIND_READ]),
        logins=_ids(by_kind[changefeed.KIND_LOGIN]),
    )


_KINDS = (changefeed.KIND_CONTACT, changefeed.KIND_READ, changefeed.KIND_LOGIN)


def _known(pks: Array, base_pk: Array, delta: Table) -> Array:
    """Mask of `pks` the copy holds (in the base or the delta's whole rows)."""
    out = np.zeros(len(pks), dtype=np.bool_)
    for have in (np.asarray(base_pk), np.asarray(delta.pk)):
        if len(have):
            at = np.minimum(np.searchsorted(have, pks), len(have) - 1)
            out |= have[at] == pks
    return out


def _without(table: Table, pks: Array) -> Table:
    if not len(pks) or not table.n:
        return table
    keep = ~np.isin(np.asarray(table.pk), pks)
    return table if bool(keep.all()) else take_rows(table, np.flatnonzero(keep))


def _marked(table: Table | None) -> Array:
    col = None if table is None else table.columns.get(ODD)
    if col is None or col.dictionary is None or not len(col.dictionary):
        return np.zeros(0, np.int64)
    return np.asarray(table.pk)[np.asarray(col.values) >= 0]  # type: ignore[union-attr]


def marked(base: Table, delta: Delta) -> Array:
    """The pks marked ODD in `base` or in `delta` (ascending; a contact marked
    in the base and no longer in the delta is among them)."""
    parts = [_marked(base), _marked(delta.contacts), _marked(delta.patches.get(ODD))]
    return np.unique(np.concatenate(parts))


def catch_up(
    conn: Connection,
    store: Store,
    fields: list[list[str]],
    delta: Delta,
    offset: int,
    head: int,
    base_pk: Array,
    odd: Array | None = None,
) -> tuple[Delta, int]:
    """`delta` with the changes of feed rows (offset, head] re-read; (delta, head).
    `base_pk` is the base's contact pks (ascending); `odd` those marked ODD
    (`marked`): a change to one of them re-reads its whole row, since the
    value of a field once marked was read converted and only a re-read of
    that field makes it exact."""
    if head <= offset:
        return delta, offset
    named = _feed(conn, store, offset, head)
    kinds = {name: FieldType(kind) for name, kind in fields}
    marks = {ODD: FieldType.STRING}  # with whole rows: it covers every field
    # Field-named changes of contacts the copy holds become patches; the rest
    # re-read whole rows.
    whole = [named.rows]
    patch_pks: dict[tuple[str, ...], Array] = {}
    for text, pks in named.fields.items():
        names = tuple(sorted(set(text.split(","))))
        if not names or any(n not in kinds for n in names):
            whole.append(pks)
            continue
        known = _known(pks, base_pk, delta.contacts)
        if odd is not None and len(odd):
            known &= ~np.isin(pks, odd)
        whole.append(pks[~known])
        if bool(known.any()):
            patch_pks[names] = pks[known]
    rows = _ids(whole)
    contacts = delta.contacts
    patches = {name: _without(t, rows) for name, t in delta.patches.items()}
    if len(rows):
        fresh = load.contacts(conn, store, {**kinds, **marks}, rows)
        contacts = fresh if contacts.n == 0 else upsert_rows(contacts, fresh)
    read_fields: dict[str, FieldType] = {}
    flagged: list[Array] = []
    for names, named_pks in patch_pks.items():
        wanted = np.setdiff1d(named_pks, rows, assume_unique=True)
        if not len(wanted):
            continue
        these = {n: kinds[n] for n in names}
        fresh = load.contacts(conn, store, these, wanted, flagged=flagged)
        read_fields.update(these)
        for name in names:
            _patch(patches, name, Table(fresh.pk, {name: fresh.columns[name]}))
    odd_now = _ids(flagged) if flagged else np.zeros(0, np.int64)
    if len(odd_now):
        # None of them was marked (a marked one is a whole row), so their
        # other fields were of their types when read: their marks are the
        # fields read now (all of them: one contact may be in several groups).
        _patch(patches, ODD, load.odd_rows(conn, store, read_fields, odd_now))
    pks = dict(delta.pks)
    events_of = dict(delta.events_of)
    for kind, changed in (("reads", named.reads), ("logins", named.logins)):
        wanted = np.union1d(changed, named.rows)
        if not len(wanted):
            continue
        fresh_events = load.events(conn, store, kind, wanted)
        old = events_of[kind]
        keep = ~np.isin(old["contact"], wanted)
        events_of[kind] = {
            key: np.concatenate([np.asarray(old[key])[keep], fresh_events[key]]) for key in old
        }
        pks[kind] = np.union1d(pks[kind], wanted)
    return Delta(contacts, delta.publications, pks, events_of, patches), head


def _patch(patches: dict[str, Table], name: str, table: Table) -> None:
    """Lay `table` (one field of some contacts) over the patch of `name`."""
    if not table.n:
        return
    before = patches.get(name)
    patches[name] = table if before is None or before.n == 0 else upsert_rows(before, table)


def write_delta(path: Path, delta: Delta) -> None:
    meta: dict[str, Any] = {}
    if delta.contacts.n:
        kinds = {name: col.kind for name, col in delta.contacts.columns.items()}
        meta["contacts"] = write_table(path, "contacts", delta.contacts, kinds)
    if delta.publications is not None:
        meta["publications"] = write_table(
            path, "publications", delta.publications, load.with_odd(PUBLICATION_FIELDS)
        )
    for kind in EVENT_KINDS:
        meta[kind] = write_arrays(path, kind, {"pks": delta.pks[kind], **delta.events_of[kind]})
    meta["patches"] = [
        [name, f"patch{i}", write_table(path, f"patch{i}", table, {name: table.columns[name].kind})]
        for i, (name, table) in enumerate(delta.patches.items())
        if table.n
    ]
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
    patches = {}
    for name, stem, entry in meta.get("patches", []):
        table = read_table(path, stem, entry)
        patches[name] = Table(np.asarray(table.pk), dict(table.columns.items()))
    return Delta(contacts or empty.contacts, pubs, pks, events_of, patches)


def frame_of(
    path: Path, meta: Any, contacts: Table, pubs: Table, delta: Delta, offset: int
) -> Frame:
    """The base at `path` (its `contacts` and `pubs` already opened) with
    `delta` laid over it."""
    merged, _rows = overlay(contacts, delta.contacts) if delta.contacts.n else (contacts, None)
    merged = apply_patches(merged, delta.patches)
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
