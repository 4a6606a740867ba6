"""A folder of arrays on disk: tables (pk and columns) and event arrays as
.npy files, opened memory-mapped (`mmap_mode='r'`), so opening costs a few
system calls per file and pages load when a criterion touches them.

A string dictionary is one UTF-8 text of its strings separated by NUL (split
in C at open), or JSON when a string holds a NUL. `meta.json` lists what the
folder holds; it is written last, so a folder without it is incomplete.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from personatag.domain import FieldType
from personatag.engines.columnar.frame import Array, Column, Table
from personatag.files import atomic_write

META = "meta.json"


def _at(stem: Path, suffix: str) -> Path:
    return stem.parent / f"{stem.name}.{suffix}"


def _save(path: Path, array: Array) -> None:
    with open(path, "wb") as out:
        np.save(out, np.ascontiguousarray(array), allow_pickle=False)


def _load(path: Path) -> Array:
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _save_dictionary(stem: Path, dictionary: Array) -> None:
    # Streamed a block at a time: a compaction writes a 10M-string
    # dictionary without a second list of it or its whole text.
    nul = any("\x00" in str(s) for s in dictionary)
    _write_words(stem, (str(s) for s in dictionary), nul)


BLOCK = 65_536  # strings per write of a dictionary


def _write_words(stem: Path, words: Iterable[str], nul: bool) -> int:
    """Write `words` as the dictionary of `stem` (JSON when `nul`: a string
    holds a NUL), a block at a time; how many were written."""
    n = 0
    it = iter(words)
    if nul:
        with open(_at(stem, "dict.json"), "w", encoding="utf-8") as out:
            out.write("[")
            while block := list(itertools.islice(it, BLOCK)):
                out.write(("," if n else "") + json.dumps(block)[1:-1])
                n += len(block)
            out.write("]")
        return n
    with open(_at(stem, "dict.txt"), "wb") as raw:
        while block := list(itertools.islice(it, BLOCK)):
            raw.write((b"\x00" if n else b"") + "\x00".join(block).encode())
            n += len(block)
    return n


def write_dictionary(folder: Path, name: str, index: int, words: Iterable[str], nul: bool) -> int:
    """Write the dictionary of column `index` of table `name` from the sorted
    `words` (consumed as they come: never held whole); how many. `nul`: some
    word holds a NUL. Pass the count to write_column as `size`."""
    return _write_words(folder / f"{name}.{index}", words, nul)


def _load_dictionary(stem: Path, size: int) -> Array:
    out = np.empty(size, dtype=object)
    if size == 0:
        return out
    text = _at(stem, "dict.txt")
    if text.exists():
        out[:] = text.read_bytes().decode().split("\x00")
    else:
        out[:] = json.loads(_at(stem, "dict.json").read_text())
    return out


def link_files(source: Path, target: Path, prefix: str) -> None:
    """Hard-link the files of `source` whose names start with `prefix` into
    `target` (copied where a link cannot be made): files are never changed
    in place, so two folders can share them."""
    for path in source.iterdir():
        if path.name.startswith(prefix) and path.is_file():
            try:
                os.link(path, target / path.name)
            except OSError:
                shutil.copyfile(path, target / path.name)


def write_table(
    folder: Path,
    name: str,
    table: Table,
    fields: Mapping[str, FieldType],
    reuse: tuple[Path, Mapping[str, list[Any]]] | None = None,
) -> Any:
    """Write `table` as `name`.* files; the meta entry describing it. With
    `reuse` (a folder holding the same table with the same pks and fields,
    and the meta entries of its fields whose values are unchanged) those
    fields' files are hard-linked, not written."""
    if reuse is not None:
        link_files(reuse[0], folder, f"{name}.pk.")
    else:
        _save(folder / f"{name}.pk.npy", np.asarray(table.pk, dtype=np.int64))
    described = []
    for i, (field, kind) in enumerate(fields.items()):
        if reuse is not None and field in reuse[1]:
            link_files(reuse[0], folder, f"{name}.{i}.")
            described.append(reuse[1][field])
            continue
        described.append(write_column(folder, name, i, field, kind, column_of(table, field)))
    return {"n": len(table.pk), "fields": described}


class DamagedFile(Exception):
    """A column's files cannot be read (truncated, foreign, missing): the copy
    must be rebuilt."""


def write_pk(folder: Path, name: str, pk: Array) -> None:
    """The pk file of table `name` (write_column writes its columns)."""
    _save(folder / f"{name}.pk.npy", np.asarray(pk, dtype=np.int64))


def write_column(
    folder: Path,
    name: str,
    index: int,
    field: str,
    kind: FieldType,
    col: Column,
    size: int | None = None,
) -> list[Any]:
    """Write column number `index` of table `name`; its meta entry. `size`:
    the column's dictionary was written apart (write_dictionary), `size`
    strings, and `col` holds none."""
    stem = folder / f"{name}.{index}"
    parts = {"values": col.values, "nulls": col.nulls, "offsets": col.offsets}
    parts["items"] = col.items
    for part, array in parts.items():
        if array is not None:
            _save(_at(stem, f"{part}.npy"), array)
    size = size or 0
    if col.dictionary is not None:
        size = len(col.dictionary)
        _save_dictionary(stem, col.dictionary)
    return [field, kind.value, col.nulls is not None, size]


class LazyColumns(Mapping[str, Column]):
    """Columns by field name, each made on first access and then kept
    (DamagedFile when its files cannot be read)."""

    def __init__(
        self,
        makers: Mapping[str, Callable[[], Column]],
        nulls: Mapping[str, Callable[[], Array | None]] | None = None,
        kinds: Mapping[str, FieldType] | None = None,
    ) -> None:
        self._makers = dict(makers)
        self._made: dict[str, Column] = {}
        # A column's type and a reader of its NULL mask alone, where known:
        # `is null` needs no values nor the dictionary, which for `id` or
        # `email` is millions of strings (~1 s to read at 10M).
        self._nulls = dict(nulls or {})
        self._kinds = dict(kinds or {})

    def kind(self, key: str) -> FieldType:
        """The column's type, without making it when the table's meta names it."""
        found = self._kinds.get(key)
        return self[key].kind if found is None else found

    def __getitem__(self, key: str) -> Column:
        col = self._made.get(key)
        if col is None:
            make = self._makers[key]
            try:
                col = self._made[key] = make()
            except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
                raise DamagedFile(f"column {key!r}: {type(exc).__name__}: {exc}") from exc
        return col

    def nulls(self, key: str) -> Array | None:
        """The column's NULL mask (None: no NULLs), without making the column
        when it is not made yet and its mask can be read alone."""
        col = self._made.get(key)
        read = self._nulls.get(key)
        if col is not None or read is None:
            return self[key].nulls
        try:
            return read()
        except (OSError, ValueError) as exc:
            raise DamagedFile(f"column {key!r}: {type(exc).__name__}: {exc}") from exc

    def peek(self, key: str) -> Column:
        """The column, made (when it is not yet) without keeping it."""
        col = self._made.get(key)
        return self._makers[key]() if col is None else col

    def __contains__(self, key: object) -> bool:  # without making the column
        return key in self._makers

    def __iter__(self) -> Iterator[str]:
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)


def column_of(table: Table, name: str) -> Column:
    """`table`'s column `name`, not kept by a lazy table that had not made it
    (a writer or an overlay reads each column once)."""
    columns = table.columns
    return columns.peek(name) if isinstance(columns, LazyColumns) else columns[name]


def read_column(folder: Path, name: str, index: int, entry: list[Any]) -> Column:
    _field, kind_name, has_nulls, size = entry
    kind = FieldType(kind_name)
    stem = folder / f"{name}.{index}"

    def part(p: str) -> Array:
        return _load(_at(stem, f"{p}.npy"))

    nulls = part("nulls") if has_nulls else None
    if kind is FieldType.LIST:
        return Column(
            kind,
            np.empty(0, dtype=np.int32),
            nulls,
            dictionary=_load_dictionary(stem, size),
            offsets=part("offsets"),
            items=part("items"),
        )
    dictionary = _load_dictionary(stem, size) if kind is FieldType.STRING else None
    return Column(kind, part("values"), nulls, dictionary=dictionary)


def read_table(folder: Path, name: str, meta: Any) -> Table:
    """The table `name` of `folder`, memory-mapped, its columns made lazily."""
    makers: dict[str, Callable[[], Column]] = {}
    nulls: dict[str, Callable[[], Array | None]] = {}
    for i, entry in enumerate(meta["fields"]):

        def make(i: int = i, entry: list[Any] = entry) -> Column:
            return read_column(folder, name, i, entry)

        def null_mask(i: int = i, has_nulls: bool = entry[2]) -> Array | None:
            return _load(_at(folder / f"{name}.{i}", "nulls.npy")) if has_nulls else None

        makers[entry[0]] = make
        nulls[entry[0]] = null_mask
    kinds = {entry[0]: FieldType(entry[1]) for entry in meta["fields"]}
    return Table(_load(folder / f"{name}.pk.npy"), LazyColumns(makers, nulls, kinds))


def write_arrays(folder: Path, name: str, arrays: Mapping[str, Array | None]) -> list[str]:
    """Write each array as `name.KEY.npy`; the keys written."""
    keys = []
    for key, array in arrays.items():
        if array is not None:
            _save(folder / f"{name}.{key}.npy", array)
            keys.append(key)
    return keys


def read_arrays(folder: Path, name: str, keys: list[str]) -> dict[str, Array]:
    return {key: _load(folder / f"{name}.{key}.npy") for key in keys}


def write_meta(folder: Path, meta: Any) -> None:
    atomic_write(folder / META, json.dumps(meta))


def read_meta(folder: Path) -> Any:
    return json.loads((folder / META).read_text())
