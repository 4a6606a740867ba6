"""A Frame built from a store by plain SELECTs: simple, not fast, for the
compiler's tests.

Reads can come split into segments the way a copy keeps them: a sorted one
whose superseded rows are marked not live, and an unsorted one holding those
rows again, so a count that ignores `live` or `sorted` double counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from pyroaring import BitMap
from sqlalchemy import select

from personatag.domain import Catalog, FieldType
from personatag.engines.columnar.frame import Column, Events, Frame, Table
from personatag.store import Store
from personatag.store.types import to_micros
from tests.criteria.support import CATALOG, PERSONAS, Population

_DTYPES = {FieldType.INT: np.int64, FieldType.FLOAT: np.float64, FieldType.BOOL: bool}


def column(kind: FieldType, values: Sequence[Any]) -> Column:
    """The Frame encoding of one field's values (None: NULL)."""
    nulls = np.array([v is None for v in values], dtype=bool)
    mask = nulls if nulls.any() else None
    if kind == FieldType.STRING:
        dictionary = sorted({v for v in values if v is not None})
        index = {s: i for i, s in enumerate(dictionary)}
        codes = np.array([-1 if v is None else index[v] for v in values], dtype=np.int32)
        return Column(kind, codes, mask, np.array(dictionary, dtype=object))
    if kind == FieldType.LIST:
        dictionary = sorted({s for v in values if v is not None for s in v})
        index = {s: i for i, s in enumerate(dictionary)}
        lengths = [0 if v is None else len(v) for v in values]
        offsets = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64))).astype(np.int64)
        items = np.array([index[s] for v in values if v is not None for s in v], dtype=np.int32)
        return Column(
            kind,
            np.empty(0, dtype=np.int32),
            mask,
            np.array(dictionary, dtype=object),
            offsets,
            items,
        )
    if kind == FieldType.TIMESTAMP:
        ints = [0 if v is None else to_micros(v) for v in values]
        return Column(kind, np.array(ints, dtype=np.int64), mask)
    filled = [_ZERO[kind] if v is None else v for v in values]
    return Column(kind, np.array(filled, dtype=_DTYPES[kind]), mask)


_ZERO: Mapping[FieldType, Any] = {FieldType.INT: 0, FieldType.FLOAT: 0.0, FieldType.BOOL: False}


def table(pks: Sequence[int], fields: Mapping[str, FieldType], rows: Sequence[Any]) -> Table:
    """A Table from rows (mappings of field name -> value) in pk order."""
    columns = {name: column(kind, [r.get(name) for r in rows]) for name, kind in fields.items()}
    return Table(np.array(pks, dtype=np.int64), columns)


def frame_from_store(
    store: Store,
    catalog: Catalog,
    *,
    split: bool = False,
    bitmaps: bool = True,
) -> Frame:
    """Everything the store holds, as a Frame.

    `split`: reads and logins in two segments (see the module doc); `bitmaps`:
    persona sets as BitMaps, else as sorted arrays.
    """
    t = store.tables
    with store.read() as conn:
        c = t.contacts
        cols = [c.c.pk, *(c.c[catalog.column_for(n)].label(n) for n in catalog.contact_fields)]
        contacts = conn.execute(select(*cols).order_by(c.c.pk)).mappings().all()
        p = t.publications
        pcols = [p.c.pk, *(p.c[n].label(n) for n in catalog.publication_fields)]
        publications = conn.execute(select(*pcols).order_by(p.c.pk)).mappings().all()
        reads = conn.execute(
            select(t.reads.c.contact_pk, t.reads.c.read_at, t.reads.c.publication_pk)
        ).all()
        logins = conn.execute(select(t.logins.c.contact_pk, t.logins.c.login_at)).all()
        members = conn.execute(
            select(t.personas.c.key, t.memberships.c.contact_pk).join_from(
                t.memberships, t.personas, t.personas.c.pk == t.memberships.c.persona_pk
            )
        ).all()
    people = table([r["pk"] for r in contacts], catalog.contact_fields, contacts)
    pubs = table([r["pk"] for r in publications], catalog.publication_fields, publications)

    def rows_of(pks: list[int], of: Table) -> Any:
        return np.searchsorted(of.pk, np.array(pks, dtype=np.int64)).astype(np.int32)

    read_events = _events(
        rows_of([r[0] for r in reads], people),
        [r[1] for r in reads],
        rows_of([r[2] for r in reads], pubs),
        split,
    )
    login_events = _events(
        rows_of([r[0] for r in logins], people), [r[1] for r in logins], None, split
    )
    sets: dict[str, list[int]] = {}
    for key, pk in members:
        sets.setdefault(key, []).append(pk)

    def personas(key: str) -> Any:
        pks = sorted(sets.get(key, []))
        if bitmaps:
            return BitMap(pks)
        return np.array(pks, dtype=np.uint32)

    return Frame(people, pubs, read_events, login_events, personas)


def frame_from_population(
    pop: Population,
    catalog: Catalog = CATALOG,
    *,
    spacing: int = 1,
    split: bool = False,
    bitmaps: bool = True,
) -> Frame:
    """The criteria tests' population as a Frame, without a store; contact `i`
    (1-based) gets pk `spacing * i` (spacing > 1: pks that are not dense)."""
    pks = [spacing * i for i in range(1, len(pop.contacts) + 1)]
    people = table(pks, catalog.contact_fields, pop.contacts)
    pubs = table([p["pk"] for p in pop.publications], catalog.publication_fields, pop.publications)
    pub_row = {p["pk"]: i for i, p in enumerate(pop.publications)}
    reads = _events(
        np.array([c - 1 for c, _, _ in pop.reads], dtype=np.int32),
        [at for _, at, _ in pop.reads],
        np.array([pub_row[p] for _, _, p in pop.reads], dtype=np.int32),
        split,
    )
    logins = _events(
        np.array([c - 1 for c, _ in pop.logins], dtype=np.int32),
        [at for _, at in pop.logins],
        None,
        split,
    )
    keys = {pk: key for key, pk in PERSONAS.items()}
    sets: dict[str, list[int]] = {}
    for persona_pk, contact_pk in pop.memberships:
        sets.setdefault(keys[persona_pk], []).append(spacing * contact_pk)

    def personas(key: str) -> Any:
        members = sorted(sets.get(key, []))
        return BitMap(members) if bitmaps else np.array(members, dtype=np.int64)

    return Frame(people, pubs, reads, logins, personas)


def _events(
    rows: Any, at: list[datetime], publication: Any | None, split: bool
) -> tuple[Events, ...]:
    micros = np.array([to_micros(a) for a in at], dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int32)
    if not split:
        return (Events(rows, micros, publication),)
    order = np.argsort(micros, kind="stable")
    live = np.ones(len(order), dtype=bool)
    live[::3] = False  # superseded: they come again in the second segment
    first = Events(
        rows[order],
        micros[order],
        None if publication is None else publication[order],
        live,
        sorted=True,
    )
    again = order[::3][::-1]  # unsorted on purpose
    second = Events(rows[again], micros[again], None if publication is None else publication[again])
    return (first, second)
