"""What the columnar engine evaluates over: contacts, publications, reads and
logins as arrays (a `Frame`), the contract between the columnar copy (which
builds and updates it) and the compiler (which evaluates criteria over it).

Rows, not pks: contact row `i` is the contact whose pk is `Frame.pk[i]`; `pk`
is ascending, so a row set turned into pks is already sorted. Publications
likewise by `Frame.publications.pk`.

Column encodings (`Column.kind` is the catalog's FieldType):

- INT: `values` int64; FLOAT: float64; BOOL: bool; TIMESTAMP: int64
  microseconds since the Unix epoch, UTC.
- STRING: `values` int32 codes into `dictionary` (an object array of distinct
  str), -1 for NULL. A predicate on strings is evaluated once per distinct
  value, then gathered through the codes.
- LIST (a list of strings): `offsets` int64 of length n + 1; the items of row
  `i` are `items[offsets[i]:offsets[i + 1]]`, int32 codes into `dictionary`.
  `values` is unused (an empty array).
- `nulls`: a bool mask, True where the value is NULL; None when no row is NULL.
  For STRING it agrees with `values == -1`; for LIST a NULL list is not an
  empty list.

Events (reads, logins) come as segments: each segment's `live` mask (None: all
live) drops rows a later segment supersedes, so a count sums over segments
without double counting. `at` is int64 microseconds; a segment with `sorted`
True has `at` ascending (windows are then two binary searches).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from personatag.domain import FieldType

# numpy arrays are typed loosely: the encodings above say what each holds.
Array = Any

# A STRING column of the copy's contacts beside their fields: the names of
# the fields whose stored value is not of the field's type, each followed by
# a comma ("seniority,"), NULL for a contact with none. SQLite takes any
# value in any column and another program may write one (2.5 or 'high' in an
# INT column); the copy reads it converted, so a criterion reading such a
# field is answered by the store instead (batch.py). No criterion can name it.
ODD = "~odd"


@dataclass(frozen=True)
class Column:
    """One field of every contact (or publication); see the module doc."""

    kind: FieldType
    values: Array
    nulls: Array | None = None
    dictionary: Array | None = None
    offsets: Array | None = None
    items: Array | None = None


@dataclass(frozen=True)
class Table:
    """Rows with a pk each (ascending) and their columns by catalog field name."""

    pk: Array
    columns: Mapping[str, Column]

    @property
    def n(self) -> int:
        return len(self.pk)


@dataclass(frozen=True)
class Events:
    """One segment of reads or logins: the contact row of each event, its time,
    and for reads the publication row."""

    row: Array  # int32 contact rows
    at: Array  # int64 microseconds, UTC
    publication: Array | None = None  # int32 publication rows (reads only)
    live: Array | None = None  # bool; None: every row counts
    sorted: bool = False  # True: `at` ascending


@dataclass(frozen=True)
class Frame:
    """Everything a criterion reads, as of the copy's feed offset.

    `personas(key)` gives the contact pks holding persona `key` now (a
    pyroaring BitMap or a sorted uint32/int64 array), from the current
    memberships; `offset` is the change-feed seq the frame reflects.
    """

    contacts: Table
    publications: Table
    reads: Sequence[Events] = ()
    logins: Sequence[Events] = ()
    personas: Callable[[str], Any] | None = None
    offset: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def pk(self) -> Array:
        return self.contacts.pk

    def rows_to_pks(self, mask: Array) -> Array:
        """The sorted contact pks of the rows where `mask` is True."""
        return np.asarray(self.contacts.pk)[np.asarray(mask, dtype=bool)]
