"""Import contacts, publications, reads and logins from CSV or JSON Lines.

Files are streamed in batches; each batch is committed in its own write
transaction, so a crash loses at most the batch in flight and a re-run is
idempotent. File-level problems (not UTF-8, unknown / missing / duplicate
column) raise InputError before anything is written; a bad row is reported
through `on_reject(line, reason)` and the rest of the file still loads.

Semantics a caller must know:

- CSV: a header row; an empty cell is NULL for every column (lists included);
  lists are `;`-separated; bools are true/false/1/0/yes/no (any case);
  timestamps are ISO-8601 (no offset = UTC). Line numbers are physical lines
  (a quoted field may span lines; a row is reported at the line it starts on).
- JSON Lines: one object per line; null is NULL; lists are arrays or
  `;`-separated strings; non-string columns given as strings are read like
  CSV cells. The file's columns are the union of the keys of its objects.
- contacts / publications are upserted by `id`. Columns absent from the file
  (for JSON Lines: keys absent from an object) stay untouched on update and
  are NULL on insert. Each accepted row counts once: as inserted when it
  creates the id, otherwise as updated. When an id repeats in one file the
  rows apply in order (the last value of each column wins) and the repeats
  count as updated.
- reads / logins name contacts and publications by external id; a row with an
  unknown id is rejected. A read or login that is already stored is ignored
  and counted as updated. Importing logins also raises a contact's
  `last_login_at` to its newest imported login when that is later.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import bindparam, or_, update

from personatag.config import Settings
from personatag.domain import (
    CUSTOM_COLUMN_PREFIX,
    PUBLICATION_FIELDS,
    STANDARD_CONTACT_FIELDS,
    FieldType,
    parse_timestamp,
)
from personatag.errors import InputError
from personatag.store import Store
from personatag.store.bulk import bulk_writer

DEFAULT_BATCH_SIZE: int = Settings.model_fields["batch_size"].default
KINDS = ("contacts", "publications", "reads", "logins")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

RejectCallback = Callable[[int, str], None]


@dataclass(frozen=True)
class ImportResult:
    inserted: int
    updated: int
    rejected: int


class _Row(NamedTuple):
    line: int
    cols: tuple[str, ...]
    values: list[Any]


class _Reject(NamedTuple):
    line: int
    reason: str


class _Bad(ValueError):
    """A value that cannot be read; the message is the reason shown to people."""


# -- values -------------------------------------------------------------------

_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _show(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _int(value: int) -> int:
    if not _INT_MIN <= value <= _INT_MAX:
        raise _Bad(f"integer {value} is out of range")
    return value


def _text_int(cell: str) -> int:
    s = cell.strip()
    if not _INT_RE.match(s):
        raise _Bad(f"expected an integer, got {_show(cell)}")
    return _int(int(s))


def _text_float(cell: str) -> float:
    s = cell.strip()
    if not _FLOAT_RE.match(s):
        raise _Bad(f"expected a number, got {_show(cell)}")
    value = float(s)
    if not math.isfinite(value):
        raise _Bad(f"number {_show(cell)} is out of range")
    return value


def _text_bool(cell: str) -> bool:
    try:
        return _BOOLS[cell.strip().lower()]
    except KeyError:
        raise _Bad(f"expected true/false/1/0/yes/no, got {_show(cell)}") from None


def _text_timestamp(cell: str) -> datetime:
    try:
        return parse_timestamp(cell)
    except (ValueError, OverflowError):
        raise _Bad(
            f"expected an ISO-8601 timestamp like 2024-05-01T09:30:00Z, got {_show(cell)}"
        ) from None


def _text_list(cell: str) -> list[str]:
    items = [part.strip() for part in cell.split(";")]
    return [item for item in items if item] if "" in items else items


def _text_string(cell: str) -> str:
    return cell


# Parsers for a non-empty text cell (empty cells are NULL before these run).
_TEXT: dict[FieldType, Callable[[str], Any]] = {
    FieldType.STRING: _text_string,
    FieldType.INT: _text_int,
    FieldType.FLOAT: _text_float,
    FieldType.BOOL: _text_bool,
    FieldType.TIMESTAMP: _text_timestamp,
    FieldType.LIST: _text_list,
}


def _json_value(ft: FieldType, value: Any) -> Any:
    """A JSON value for a column of type `ft`; strings are read like CSV cells,
    except that a string column keeps its string as is (even empty)."""
    if value is None:
        return None
    if isinstance(value, str):
        if ft is FieldType.STRING:
            return value
        return None if value == "" else _TEXT[ft](value)
    kind = type(value)
    if ft is FieldType.INT and kind is int:
        return _int(value)
    if ft is FieldType.FLOAT and kind in (int, float) and math.isfinite(value):
        return float(value)
    if ft is FieldType.BOOL and (kind is bool or (kind is int and value in (0, 1))):
        return bool(value)
    if ft is FieldType.LIST and kind is list and all(isinstance(v, str) for v in value):
        return value
    expected = {
        FieldType.STRING: "a string",
        FieldType.INT: "an integer",
        FieldType.FLOAT: "a number",
        FieldType.BOOL: "true or false",
        FieldType.TIMESTAMP: "an ISO-8601 timestamp string",
        FieldType.LIST: "an array of strings or a ';'-separated string",
    }[ft]
    raise _Bad(f"expected {expected}, got {_show(value)}")


# -- what each kind of file holds ---------------------------------------------


@dataclass(frozen=True)
class _Spec:
    kind: str
    fields: Mapping[str, FieldType]  # file column -> type, in canonical order
    required: tuple[str, ...]  # columns every file and every row must have
    table_columns: Mapping[str, str]  # file column -> table column


def _spec(store: Store, kind: str) -> _Spec:
    if kind == "contacts":
        custom = store.custom_attributes()
        fields = dict(STANDARD_CONTACT_FIELDS)
        columns = {name: name for name in fields}
        for name, ft in custom:
            if name not in fields:
                fields[name] = ft
                columns[name] = CUSTOM_COLUMN_PREFIX + name
        contacts = store.tables.contacts
        if any(col not in contacts.c for col in columns.values()):
            store.refresh()  # an attribute was declared since the tables were described
        return _Spec(kind, fields, ("id",), columns)
    if kind == "publications":
        return _Spec(kind, PUBLICATION_FIELDS, ("id",), {n: n for n in PUBLICATION_FIELDS})
    if kind == "reads":
        fields = {
            "contact_id": FieldType.STRING,
            "publication_id": FieldType.STRING,
            "read_at": FieldType.TIMESTAMP,
        }
        return _Spec(kind, fields, tuple(fields), {"read_at": "read_at"})
    if kind == "logins":
        fields = {"contact_id": FieldType.STRING, "login_at": FieldType.TIMESTAMP}
        return _Spec(kind, fields, tuple(fields), {"login_at": "login_at"})
    raise InputError(f"unknown import kind {kind!r}: use one of {', '.join(KINDS)}")


def _check_columns(path: Path, cols: Sequence[str], spec: _Spec, where: str = "") -> None:
    seen: set[str] = set()
    for col in cols:
        if col in seen:
            raise InputError(f"{path}{where}: duplicate column {col!r}")
        seen.add(col)
        if col not in spec.fields:
            raise InputError(
                f"{path}{where}: unknown column {col!r} for {spec.kind}; "
                f"valid columns are {', '.join(spec.fields)}"
            )
    for col in spec.required:
        if col not in seen:
            raise InputError(f"{path}: missing required column {col!r} for {spec.kind}")


# -- reading files -------------------------------------------------------------


def _check_utf8(path: Path) -> None:
    """Raise InputError naming the first line that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as f:
        try:
            while chunk := f.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
            return
        except UnicodeDecodeError:
            pass
        f.seek(0)
        for line_no, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{path}:{line_no}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                    f"column {exc.start + 1}); save the file as UTF-8 and import it again"
                ) from None
    raise InputError(f"{path}: ends in the middle of a UTF-8 character; save it as UTF-8")


def _csv_rows(path: Path, spec: _Spec) -> Iterator[_Row | _Reject]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(f"{path}: the file is empty; expected a header row") from None
        except csv.Error as exc:
            raise InputError(f"{path}:1: cannot read the header row: {exc}") from None
        cols = tuple(h.strip() for h in header)
        _check_columns(path, cols, spec, ":1")
        width = len(cols)
        typed = [(i, _TEXT[spec.fields[c]], c) for i, c in enumerate(cols)]
        typed = [t for t in typed if spec.fields[t[2]] is not FieldType.STRING]
        required = [(cols.index(c), c) for c in spec.required]
        start = reader.line_num + 1
        while True:
            line = start
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield _Reject(line, f"malformed CSV: {exc}")
                if reader.line_num < start:  # no progress: stop rather than loop
                    return
                start = reader.line_num + 1
                continue
            start = reader.line_num + 1
            if not record:
                continue  # a blank line
            if len(record) != width:
                yield _Reject(line, f"expected {width} fields, found {len(record)}")
                continue
            values: list[Any] = [None if cell == "" else cell for cell in record]
            try:
                for i, parse, col in typed:
                    cell = values[i]
                    if cell is not None:
                        try:
                            values[i] = parse(cell)
                        except _Bad as exc:
                            raise _Bad(f"{col}: {exc}") from None
                for i, col in required:
                    if values[i] is None:
                        raise _Bad(f"missing {col}")
            except _Bad as exc:
                yield _Reject(line, str(exc))
                continue
            yield _Row(line, cols, values)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        dup = next(k for i, (k, _) in enumerate(pairs) if any(k == p[0] for p in pairs[:i]))
        raise _Bad(f"duplicate key {dup!r}")
    return obj


def _jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line, object) per non-blank line, or (line, reason) when it is not an object."""
    with path.open(encoding="utf-8-sig") as f:
        for line_no, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
            except _Bad as exc:
                yield line_no, str(exc)
                continue
            except ValueError as exc:
                yield line_no, f"invalid JSON: {exc}"
                continue
            if not isinstance(obj, dict):
                yield line_no, "expected a JSON object"
                continue
            yield line_no, obj


def _jsonl_check_columns(path: Path, spec: _Spec) -> None:
    """The file's columns are the union of its keys: validate them before writing."""
    seen: set[str] = set()
    any_object = False
    for line_no, obj in _jsonl_objects(path):
        if isinstance(obj, str):
            continue
        any_object = True
        for key in obj:
            if key not in seen:
                if key not in spec.fields:
                    _check_columns(path, [key], spec, f":{line_no}")
                seen.add(key)
    if any_object:
        for col in spec.required:
            if col not in seen:
                raise InputError(f"{path}: missing required column {col!r} for {spec.kind}")


def _jsonl_rows(path: Path, spec: _Spec) -> Iterator[_Row | _Reject]:
    _jsonl_check_columns(path, spec)
    fields = spec.fields
    for line_no, obj in _jsonl_objects(path):
        if isinstance(obj, str):
            yield _Reject(line_no, obj)
            continue
        cols = tuple(obj)
        values: list[Any] = []
        try:
            for col in cols:
                ft = fields.get(col)
                if ft is None:
                    raise _Bad(f"unknown column {col!r}")
                try:
                    values.append(_json_value(ft, obj[col]))
                except _Bad as exc:
                    raise _Bad(f"{col}: {exc}") from None
            for col in spec.required:
                if col not in obj or values[cols.index(col)] in (None, ""):
                    raise _Bad(f"missing {col}")
        except _Bad as exc:
            yield _Reject(line_no, str(exc))
            continue
        yield _Row(line_no, cols, values)


_READERS: dict[str, Callable[[Path, _Spec], Iterator[_Row | _Reject]]] = {
    "csv": _csv_rows,
    "jsonl": _jsonl_rows,
}


# -- writing batches -----------------------------------------------------------


def _load_entities(store: Store, spec: _Spec, rows: list[_Row]) -> tuple[int, int, list[_Reject]]:
    """Upsert by id; repeats of an id merge in file order (last value wins)."""
    cols0 = rows[0].cols
    if all(r.cols == cols0 for r in rows):
        # Every row has the same columns (always so for CSV): the last one of an id wins.
        key = cols0.index("id")
        latest = {r.values[key]: r.values for r in rows}
        grouped: dict[tuple[str, ...], list[Sequence[Any]]] = {cols0: list(latest.values())}
        return _upsert_groups(store, spec, grouped, len(rows))
    merged: dict[str, dict[str, Any]] = {}
    for _, cols, values in rows:
        rid = values[cols.index("id")]
        pairs = zip(cols, values, strict=True)
        seen = merged.get(rid)
        if seen is None:
            merged[rid] = dict(pairs)
        else:
            seen.update(pairs)
    groups: dict[tuple[str, ...], list[Sequence[Any]]] = {}
    for obj in merged.values():
        groups.setdefault(tuple(obj), []).append(tuple(obj.values()))
    return _upsert_groups(store, spec, groups, len(rows))


def _upsert_groups(
    store: Store, spec: _Spec, groups: dict[tuple[str, ...], list[Sequence[Any]]], rows: int
) -> tuple[int, int, list[_Reject]]:
    inserted = 0
    with store.write() as conn:
        writer = bulk_writer(conn)
        table = store.tables.contacts if spec.kind == "contacts" else store.tables.publications
        for cols, group in groups.items():
            ins, _ = writer.upsert(table, [spec.table_columns[c] for c in cols], group)
            inserted += ins
    return inserted, rows - inserted, []


def _load_events(store: Store, spec: _Spec, rows: list[_Row]) -> tuple[int, int, list[_Reject]]:
    """Insert reads or logins, resolving external ids; known events are skipped."""
    is_reads = spec.kind == "reads"
    time_col = "read_at" if is_reads else "login_at"
    tables = store.tables
    rejects: list[_Reject] = []
    good: list[tuple[Any, ...]] = []
    newest: dict[int, datetime] = {}
    with store.write() as conn:
        writer = bulk_writer(conn)
        contact_pks = writer.lookup_pks(
            tables.contacts, list({r.values[r.cols.index("contact_id")] for r in rows})
        )
        pub_pks = (
            writer.lookup_pks(
                tables.publications, list({r.values[r.cols.index("publication_id")] for r in rows})
            )
            if is_reads
            else {}
        )
        for line, cols, values in rows:
            obj = dict(zip(cols, values, strict=True))
            cpk = contact_pks.get(obj["contact_id"])
            if cpk is None:
                rejects.append(_Reject(line, f"unknown contact id {obj['contact_id']!r}"))
                continue
            at = obj[time_col]
            if is_reads:
                ppk = pub_pks.get(obj["publication_id"])
                if ppk is None:
                    rejects.append(
                        _Reject(line, f"unknown publication id {obj['publication_id']!r}")
                    )
                    continue
                good.append((cpk, at, ppk))
            else:
                good.append((cpk, at))
                if cpk not in newest or at > newest[cpk]:
                    newest[cpk] = at
        if is_reads:
            inserted = writer.insert(
                tables.reads, ["contact_pk", "read_at", "publication_pk"], good, skip_conflicts=True
            )
        else:
            inserted = writer.insert(
                tables.logins, ["contact_pk", "login_at"], good, skip_conflicts=True
            )
            if newest:
                c = tables.contacts
                at_param = bindparam("b_at", type_=c.c.last_login_at.type)
                raise_last_login = (
                    update(c)
                    .where(c.c.pk == bindparam("b_pk"))
                    .where(or_(c.c.last_login_at.is_(None), c.c.last_login_at < at_param))
                    .values(last_login_at=at_param)
                )
                conn.execute(raise_last_login, [{"b_pk": k, "b_at": v} for k, v in newest.items()])
    return inserted, len(good) - inserted, rejects


_LOADERS: dict[str, Callable[[Store, _Spec, list[_Row]], tuple[int, int, list[_Reject]]]] = {
    "contacts": _load_entities,
    "publications": _load_entities,
    "reads": _load_events,
    "logins": _load_events,
}


def _format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        name = {"csv": "csv", "jsonl": "jsonl", "ndjson": "jsonl"}.get(fmt.lower())
        if name is None:
            raise InputError(f"unknown format {fmt!r}: use csv or jsonl")
        return name
    name = FORMATS.get(path.suffix.lower())
    if name is None:
        raise InputError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; "
            "name it .csv, .jsonl or .ndjson, or pass the format (csv or jsonl)"
        )
    return name


def import_file(
    store: Store,
    kind: str,
    path: str | Path,
    *,
    fmt: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_reject: RejectCallback | None = None,
) -> ImportResult:
    """Import `path` (CSV or JSON Lines) into `store` as `kind`.

    kind: contacts | publications | reads | logins. fmt: csv | jsonl (default:
    from the extension). Rejected rows go to `on_reject(line, reason)`.
    Raises InputError for file-level problems, before writing anything.
    """
    if kind not in KINDS:
        raise InputError(f"unknown import kind {kind!r}: use one of {', '.join(KINDS)}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    path = Path(path)
    name = _format(path, fmt)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    spec = _spec(store, kind)
    _check_utf8(path)
    load = _LOADERS[kind]
    inserted = updated = rejected = 0

    def reject(item: _Reject) -> None:
        nonlocal rejected
        rejected += 1
        if on_reject is not None:
            on_reject(item.line, item.reason)

    def flush(batch: list[_Row]) -> None:
        nonlocal inserted, updated
        ins, upd, rejects = load(store, spec, batch)
        inserted += ins
        updated += upd
        for item in rejects:
            reject(item)

    batch: list[_Row] = []
    for item in _READERS[name](path, spec):
        if isinstance(item, _Reject):
            reject(item)
            continue
        batch.append(item)
        if len(batch) >= batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    return ImportResult(inserted=inserted, updated=updated, rejected=rejected)
