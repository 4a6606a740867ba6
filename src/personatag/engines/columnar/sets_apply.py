"""Applying membership-log entries to persona sets, vectorised.

Entries come as an int64 array of rows (seq, at, persona_pk, contact_pk or -1,
enter 1 / exit 0, bulk_count or 0) in seq order, with the id blocks of the
bulk entries by seq. Between two bulk entries, a run of single-contact entries
is applied per persona at once: the last entry of each contact decides
whether it holds the persona after the run (an enter adds it, an exit
removes it, whatever it held before), so a run is one union and one
difference per persona instead of a Python call per entry.
"""

from __future__ import annotations

import array
from typing import Any

import numpy as np
from pyroaring import BitMap

from personatag.engines.columnar.sets_disk import DAY_US, Held
from personatag.errors import InputError
from personatag.store.ids import decode_ids

MAX_PK = 2**32 - 1  # a BitMap holds 32-bit values
SEQ, AT, PERSONA, CONTACT, ENTER, BULK = range(6)


def to_bitmap(ids: Any) -> BitMap:
    """Integer pks (numpy or a sequence, any order) as a BitMap."""
    a = np.asarray(ids, dtype=np.int64)
    if len(a) and (int(a.min()) < 0 or int(a.max()) > MAX_PK):
        raise InputError(f"contact pk out of range for a persona set: {int(a.max())}")
    buf = array.array("I")
    buf.frombytes(a.astype(np.uint32).tobytes())
    return BitMap(buf)


def _count_days(h: Held, at: Any, enter: Any, weight: Any = None) -> None:
    days = np.asarray(at) // DAY_US
    for flag, col in ((1, 0), (0, 1)):
        mask = np.asarray(enter) == flag
        if not mask.any():
            continue
        if weight is None:
            d, n = np.unique(days[mask], return_counts=True)
        else:
            d, inv = np.unique(days[mask], return_inverse=True)
            n = np.bincount(inv, weights=np.asarray(weight)[mask]).astype(np.int64)
        for day, count in zip(d.tolist(), n.tolist(), strict=True):
            h.days.setdefault(day, [0, 0])[col] += count


def _held(personas: dict[int, Held], pk: int) -> Held:
    h = personas.get(pk)
    if h is None:
        h = personas[pk] = Held(BitMap())
    return h


def _singles(personas: dict[int, Held], rows: Any) -> None:
    for pk in np.unique(rows[:, PERSONA]).tolist():
        mine = rows[rows[:, PERSONA] == pk]
        h = _held(personas, pk)
        # The last entry per contact: unique over the reversed run.
        contacts, first = np.unique(mine[::-1, CONTACT], return_index=True)
        last_enter = mine[::-1, ENTER][first] == 1
        if last_enter.any():
            h.bitmap |= to_bitmap(contacts[last_enter])
        if (~last_enter).any():
            h.bitmap -= to_bitmap(contacts[~last_enter])
        _count_days(h, mine[:, AT], mine[:, ENTER])


def apply_entries(personas: dict[int, Held], rows: Any, blobs: dict[int, bytes]) -> set[int]:
    """Apply `rows` (see the module doc) in seq order; returns the persona pks
    touched."""
    if not len(rows):
        return set()
    bulk_at = np.flatnonzero(rows[:, BULK] > 0).tolist()
    start = 0
    for i in [*bulk_at, len(rows)]:
        if i > start:
            _singles(personas, rows[start:i])
        if i < len(rows):
            row = rows[i]
            h = _held(personas, int(row[PERSONA]))
            ids = to_bitmap(decode_ids(blobs[int(row[SEQ])]))
            if row[ENTER] == 1:
                h.bitmap |= ids
            else:
                h.bitmap -= ids
            _count_days(h, row[AT : AT + 1], row[ENTER : ENTER + 1], [len(ids)])
        start = i + 1
    return {int(p) for p in np.unique(rows[:, PERSONA]).tolist()}
