"""Python values to the Frame's column encodings (frame.py) and back.

A `Raw` column is the plain form the copy merges and re-encodes: numeric kinds
as (values, nulls) arrays, STRING and LIST as an object array of str / list of
str with None for NULL. `encode` turns it into a `Column`; dictionaries come out
sorted, so a later lookup of new strings is a binary search (`extend`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from personatag.domain import FieldType
from personatag.engines.columnar.frame import Array, Column

NUMERIC_DTYPES: dict[FieldType, Any] = {
    FieldType.INT: np.int64,
    FieldType.FLOAT: np.float64,
    FieldType.BOOL: np.bool_,
    FieldType.TIMESTAMP: np.int64,
}


@dataclass(frozen=True)
class Raw:
    kind: FieldType
    values: Array  # numeric: typed values (0 where NULL); STRING/LIST: object array
    nulls: Array  # bool, True where NULL

    def __len__(self) -> int:
        return len(self.nulls)


def raw_from_python(kind: FieldType, values: Sequence[Any]) -> Raw:
    """A Raw column from Python values (None: NULL); timestamps as int microseconds."""
    n = len(values)
    nulls = np.fromiter((v is None for v in values), dtype=np.bool_, count=n)
    if kind in NUMERIC_DTYPES:
        dtype = NUMERIC_DTYPES[kind]
        zero = dtype(0)
        out = np.fromiter((zero if v is None else v for v in values), dtype=dtype, count=n)
        return Raw(kind, out, nulls)
    obj = np.empty(n, dtype=object)
    if kind is FieldType.LIST:
        obj[:] = [None if v is None else [str(x) for x in v] for v in values]
    else:
        obj[:] = list(values)
    return Raw(kind, obj, nulls)


def _factorize(strings: Sequence[str]) -> tuple[Array, Array]:
    """(sorted distinct strings as an object array, int32 code of each input)."""
    distinct = sorted(set(strings))
    index = {s: i for i, s in enumerate(distinct)}
    codes = np.fromiter((index[s] for s in strings), dtype=np.int32, count=len(strings))
    dictionary = np.empty(len(distinct), dtype=object)
    dictionary[:] = distinct
    return dictionary, codes


def encode(raw: Raw) -> Column:
    """The Column of `raw` (frame.py's encodings)."""
    nulls = raw.nulls if bool(raw.nulls.any()) else None
    if raw.kind in NUMERIC_DTYPES:
        return Column(raw.kind, raw.values, nulls)
    present = ~raw.nulls
    if raw.kind is FieldType.STRING:
        dictionary, codes = _factorize(list(raw.values[present]))
        values = np.full(len(raw), -1, dtype=np.int32)
        values[present] = codes
        return Column(raw.kind, values, nulls, dictionary=dictionary)
    lengths = np.fromiter(
        (0 if v is None else len(v) for v in raw.values), dtype=np.int64, count=len(raw)
    )
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = [s for v in raw.values if v is not None for s in v]
    dictionary, items = _factorize(flat)
    return Column(
        raw.kind,
        np.empty(0, dtype=np.int32),
        nulls,
        dictionary=dictionary,
        offsets=offsets,
        items=items,
    )


def decode(col: Column) -> Raw:
    """The Raw form of `col` (inverse of `encode`)."""
    n = len(np.asarray(col.offsets)) - 1 if col.kind is FieldType.LIST else len(col.values)
    nulls = np.zeros(n, dtype=np.bool_) if col.nulls is None else np.asarray(col.nulls)
    if col.kind in NUMERIC_DTYPES:
        return Raw(col.kind, np.asarray(col.values), nulls)
    dictionary = np.asarray(col.dictionary, dtype=object)
    out = np.empty(n, dtype=object)
    if col.kind is FieldType.STRING:
        codes = np.asarray(col.values)
        present = codes >= 0
        out[present] = dictionary[codes[present]]
        return Raw(col.kind, out, nulls)
    offsets = np.asarray(col.offsets)
    words = dictionary[np.asarray(col.items)].tolist()
    out[:] = [None if nulls[i] else words[offsets[i] : offsets[i + 1]] for i in range(n)]
    return Raw(col.kind, out, nulls)


def concat(parts: Sequence[Raw], kind: FieldType) -> Raw:
    if not parts:
        return raw_from_python(kind, [])
    return Raw(
        kind,
        np.concatenate([p.values for p in parts]),
        np.concatenate([p.nulls for p in parts]),
    )


def take(raw: Raw, index: Array) -> Raw:
    return Raw(raw.kind, raw.values[index], raw.nulls[index])


def extend(dictionary: Array, strings: Sequence[str]) -> tuple[Array, Array, Array | None]:
    """(`dictionary` with the strings it lacks merged in, the code of each
    string, the new code of each old code or None when no string was added).

    `dictionary` must be sorted (as `encode` writes it) and so is the result:
    the strings it lacks go in at their places, not at its end, so the next
    lookup is a binary search too and each string has one code (a string
    appended out of order would be missed by the next search and appended
    again, and `contains` would find only one of its two codes)."""
    base = np.asarray(dictionary, dtype=object)
    wanted = np.empty(len(strings), dtype=object)
    wanted[:] = list(strings)
    if len(base) and len(wanted):
        at = np.minimum(np.searchsorted(base, wanted), len(base) - 1)
        found = base[at] == wanted
    else:
        at = np.zeros(len(wanted), dtype=np.int64)
        found = np.zeros(len(wanted), dtype=np.bool_)
    if bool(found.all()):
        return base, at.astype(np.int32), None
    lacking = np.asarray(sorted(set(wanted[~found].tolist())), dtype=object)
    places = np.searchsorted(base, lacking)  # ascending: `lacking` is sorted
    merged = np.insert(base, places, lacking)
    # An old code moves up by the number of strings inserted at or before it.
    moved = np.cumsum(np.bincount(places, minlength=len(base) + 1)[: len(base)], dtype=np.int32)
    moved += np.arange(len(base), dtype=np.int32)
    codes = np.searchsorted(merged, wanted).astype(np.int32)
    return merged, codes, moved
