"""What each kind of file holds, and reading CSV and JSON Lines files into rows."""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personatag.domain import (
    CUSTOM_COLUMN_PREFIX,
    PUBLICATION_FIELDS,
    STANDARD_CONTACT_FIELDS,
    FieldType,
)
from personatag.errors import InputError
from personatag.importer.values import TEXT_PARSERS, BadValue, Reject, Row, json_value
from personatag.store import Store

KINDS = ("contacts", "publications", "reads", "logins")


@dataclass(frozen=True)
class Spec:
    kind: str
    fields: Mapping[str, FieldType]  # file column -> type, in canonical order
    required: tuple[str, ...]  # columns every file and every row must have
    table_columns: Mapping[str, str]  # file column -> table column


def file_spec(store: Store, kind: str) -> Spec:
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
        return Spec(kind, fields, ("id",), columns)
    if kind == "publications":
        return Spec(kind, PUBLICATION_FIELDS, ("id",), {n: n for n in PUBLICATION_FIELDS})
    if kind == "reads":
        fields = {
            "contact_id": FieldType.STRING,
            "publication_id": FieldType.STRING,
            "read_at": FieldType.TIMESTAMP,
        }
        return Spec(kind, fields, tuple(fields), {"read_at": "read_at"})
    if kind == "logins":
        fields = {"contact_id": FieldType.STRING, "login_at": FieldType.TIMESTAMP}
        return Spec(kind, fields, tuple(fields), {"login_at": "login_at"})
    raise InputError(f"unknown import kind {kind!r}: use one of {', '.join(KINDS)}")


def _check_columns(path: Path, cols: Sequence[str], spec: Spec, where: str = "") -> None:
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


def check_file(path: Path, what: str = "") -> None:
    """Raise InputError unless `path` is a regular file this process can read."""
    label = f"{what} {path}" if what else str(path)
    if path.is_dir():
        raise InputError(f"{label}: is a directory, not a file: give the path of one file")
    if not path.exists():
        raise InputError(f"{label}: no such file")
    if not path.is_file():
        raise InputError(f"{label}: not a regular file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise InputError(f"{label}: cannot be read ({exc.strerror or exc})") from None


def check_utf8(path: Path) -> None:
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


def _csv_rows(path: Path, spec: Spec) -> Iterator[Row | Reject]:
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
        typed = [(i, TEXT_PARSERS[spec.fields[c]], c) for i, c in enumerate(cols)]
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
                yield Reject(line, f"malformed CSV: {exc}")
                if reader.line_num < start:  # no progress: stop rather than loop
                    return
                start = reader.line_num + 1
                continue
            start = reader.line_num + 1
            if not record:
                continue  # a blank line
            if len(record) != width:
                yield Reject(line, f"expected {width} fields, found {len(record)}")
                continue
            nul = next((c for c, cell in zip(cols, record, strict=True) if "\x00" in cell), None)
            if nul is not None:
                # PostgreSQL cannot store NUL in text; refuse it on every store alike.
                yield Reject(line, f"{nul}: NUL byte in value")
                continue
            values: list[Any] = [None if cell == "" else cell for cell in record]
            try:
                for i, parse, col in typed:
                    cell = values[i]
                    if cell is not None:
                        try:
                            values[i] = parse(cell)
                        except BadValue as exc:
                            raise BadValue(f"{col}: {exc}") from None
                for i, col in required:
                    if values[i] is None:
                        raise BadValue(f"missing {col}")
            except BadValue as exc:
                yield Reject(line, str(exc))
                continue
            yield Row(line, cols, values)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        dup = next(k for i, (k, _) in enumerate(pairs) if any(k == p[0] for p in pairs[:i]))
        raise BadValue(f"duplicate key {dup!r}")
    return obj


def _jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line, object) per non-blank line, or (line, reason) when it is not an object."""
    with path.open(encoding="utf-8-sig") as f:
        for line_no, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
            except BadValue as exc:
                yield line_no, str(exc)
                continue
            except ValueError as exc:
                if "integer string conversion" in str(exc):  # Python reads up to 4,300
                    yield line_no, "invalid JSON: a number of more than 4,300 digits"
                else:
                    yield line_no, f"invalid JSON: {exc}"
                continue
            except RecursionError:
                yield line_no, "invalid JSON: nested too deeply (a row is one flat object)"
                continue
            if not isinstance(obj, dict):
                yield line_no, "expected a JSON object"
                continue
            yield line_no, obj


def _jsonl_check_columns(path: Path, spec: Spec) -> None:
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


def _jsonl_rows(path: Path, spec: Spec) -> Iterator[Row | Reject]:
    _jsonl_check_columns(path, spec)
    fields = spec.fields
    for line_no, obj in _jsonl_objects(path):
        if isinstance(obj, str):
            yield Reject(line_no, obj)
            continue
        cols = tuple(obj)
        values: list[Any] = []
        try:
            for col in cols:
                ft = fields.get(col)
                if ft is None:
                    raise BadValue(f"unknown column {col!r}")
                try:
                    values.append(json_value(ft, obj[col]))
                except BadValue as exc:
                    raise BadValue(f"{col}: {exc}") from None
            for col in spec.required:
                if col not in obj or values[cols.index(col)] in (None, ""):
                    raise BadValue(f"missing {col}")
        except BadValue as exc:
            yield Reject(line_no, str(exc))
            continue
        yield Row(line_no, cols, values)


READERS: dict[str, Callable[[Path, Spec], Iterator[Row | Reject]]] = {
    "csv": _csv_rows,
    "jsonl": _jsonl_rows,
}
