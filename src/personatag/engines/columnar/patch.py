"""Row operations on encoded tables: take rows, concatenate, and lay a delta
(newer rows of some contacts, and new contacts) over a base table."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from personatag.domain import FieldType
from personatag.engines.columnar.encode import concat, decode, encode, extend, take
from personatag.engines.columnar.frame import Array, Column, Table
from personatag.engines.columnar.segment import LazyColumns, column_of


class NotAppendable(Exception):
    """A delta names a new pk below the base's largest: the copy must be rebuilt."""


def _gather(offsets: Array, starts: Array, lengths: Array) -> tuple[Array, Array]:
    """(new offsets, source index of each item) for rows whose items start at
    `starts` and number `lengths`."""
    del offsets
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    total = int(new_offsets[-1])
    source = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
    return new_offsets, source


def take_column(col: Column, index: Array) -> Column:
    nulls = None if col.nulls is None else np.asarray(col.nulls)[index]
    if nulls is not None and not bool(nulls.any()):
        nulls = None
    if col.kind is not FieldType.LIST:
        return Column(col.kind, np.asarray(col.values)[index], nulls, dictionary=col.dictionary)
    offsets = np.asarray(col.offsets)
    lengths = (offsets[1:] - offsets[:-1])[index]
    new_offsets, source = _gather(offsets, offsets[:-1][index], lengths)
    return Column(
        col.kind,
        col.values,
        nulls,
        dictionary=col.dictionary,
        offsets=new_offsets,
        items=np.asarray(col.items)[source],
    )


def take_rows(table: Table, index: Array) -> Table:
    return Table(
        np.asarray(table.pk)[index],
        {name: take_column(col, index) for name, col in table.columns.items()},
    )


def concat_tables(a: Table, b: Table) -> Table:
    """Rows of `a` then rows of `b` (dictionaries merged)."""
    columns = {}
    for name, col in a.columns.items():
        columns[name] = encode(concat([decode(col), decode(b.columns[name])], col.kind))
    return Table(np.concatenate([np.asarray(a.pk), np.asarray(b.pk)]), columns)


def upsert_rows(old: Table, new: Table) -> Table:
    """`old` with the rows of `new` replacing or joining them, ascending pk."""
    if old.n == 0:
        return new
    keep = ~np.isin(np.asarray(old.pk), np.asarray(new.pk))
    merged = concat_tables(_take_raw(old, keep), new)
    return take_rows(merged, np.argsort(np.asarray(merged.pk), kind="stable"))


def _take_raw(table: Table, mask: Array) -> Table:
    return Table(
        np.asarray(table.pk)[mask],
        {name: encode(take(decode(col), mask)) for name, col in table.columns.items()},
    )


def _words(col: Column) -> list[str]:
    return [] if col.dictionary is None else list(col.dictionary)


def patch_column(base: Column, delta: Column, rows: Array, n_total: int) -> Column:
    """`base` (n_base rows) grown to `n_total` rows, rows `rows` set from `delta`."""
    kind = base.kind
    nulls = np.zeros(n_total, dtype=np.bool_)
    base_n = len(np.asarray(base.offsets)) - 1 if kind is FieldType.LIST else len(base.values)
    if base.nulls is not None:
        nulls[:base_n] = base.nulls
    nulls[rows] = False if delta.nulls is None else np.asarray(delta.nulls)
    has_nulls = nulls if bool(nulls.any()) else None
    if kind is FieldType.LIST:
        dictionary, remap, moved = extend(base.dictionary, _words(delta))
        b_off, d_off = np.asarray(base.offsets), np.asarray(delta.offsets)
        b_items = np.asarray(base.items)
        if moved is not None:
            b_items = moved[b_items]
        starts = np.zeros(n_total, dtype=np.int64)
        lengths = np.zeros(n_total, dtype=np.int64)
        starts[:base_n] = b_off[:-1]
        lengths[:base_n] = b_off[1:] - b_off[:-1]
        starts[rows] = len(b_items) + d_off[:-1]
        lengths[rows] = d_off[1:] - d_off[:-1]
        items = np.concatenate([b_items, remap[np.asarray(delta.items)]]).astype(np.int32)
        offsets, source = _gather(b_off, starts, lengths)
        return Column(
            kind,
            np.empty(0, dtype=np.int32),
            has_nulls,
            dictionary=dictionary,
            offsets=offsets,
            items=items[source],
        )
    values = np.zeros(n_total, dtype=np.asarray(base.values).dtype)
    values[:base_n] = base.values
    if kind is FieldType.STRING:
        dictionary, remap, moved = extend(base.dictionary, _words(delta))
        if moved is not None:  # code -1 (NULL) picks the appended -1
            values[:base_n] = np.append(moved, np.int32(-1))[values[:base_n]]
        values[rows] = np.append(remap, np.int32(-1))[np.asarray(delta.values)]
        return Column(kind, values, has_nulls, dictionary=dictionary)
    values[rows] = delta.values
    return Column(kind, values, has_nulls)


def overlay(base: Table, delta: Table) -> tuple[Table, Array]:
    """`base` with `delta`'s rows laid over it (new pks appended); the rows of
    `delta`'s pks in the result. Raises NotAppendable when a new pk is not
    above every base pk."""
    base_pk = np.asarray(base.pk)
    delta_pk = np.asarray(delta.pk)
    n_base = len(base_pk)
    if delta.n == 0:
        return base, np.zeros(0, dtype=np.int64)
    rows = np.searchsorted(base_pk, delta_pk)
    exists = rows < n_base
    exists[exists] = base_pk[rows[exists]] == delta_pk[exists]
    new = delta_pk[~exists]
    if len(new) and n_base and int(new.min()) <= int(base_pk[-1]):
        raise NotAppendable(f"contact pk {int(new.min())} is below the copy's newest")
    rows[~exists] = n_base + np.arange(len(new))
    n_total = n_base + len(new)
    makers: dict[str, Callable[[], Column]] = {}
    for name in base.columns:

        def make(name: str = name) -> Column:
            return patch_column(column_of(base, name), delta.columns[name], rows, n_total)

        makers[name] = make
    return Table(np.concatenate([base_pk, new]), LazyColumns(makers)), rows


def apply_patches(table: Table, patches: Mapping[str, Table]) -> Table:
    """`table` with each patched field's rows set from its patch (a table of
    that one field, ascending pk, every pk in `table`)."""
    patches = {name: p for name, p in patches.items() if p.n and name in table.columns}
    if not patches:
        return table
    pk = np.asarray(table.pk)
    makers: dict[str, Callable[[], Column]] = {}
    for name in table.columns:
        patch = patches.get(name)
        if patch is None:

            def same(name: str = name) -> Column:
                return table.columns[name]

            makers[name] = same
            continue
        rows = np.searchsorted(pk, np.asarray(patch.pk))
        if bool(np.any(rows >= len(pk))) or not np.array_equal(pk[rows], np.asarray(patch.pk)):
            raise NotAppendable(f"a patch of {name!r} names a contact the copy does not hold")

        def make(name: str = name, patch: Table = patch, rows: Array = rows) -> Column:
            return patch_column(column_of(table, name), patch.columns[name], rows, len(pk))

        makers[name] = make
    return Table(pk, LazyColumns(makers))
