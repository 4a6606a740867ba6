"""Request data files: the versioned JSON and CSV formats dropped into the requests bucket.

`parse_request` turns the bytes of one file into a `RequestFile` or raises a
`RequestFileError` that names the file, the field (or CSV line) and the problem.
The JSON format is the `RequestV1` model in `personatag.schemas` (and its generated
`request-v1.schema.json`); see docs/requests.md.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, overload

from pydantic import ValidationError

from personatag.domain import Action, surrogate_at, surrogate_message
from personatag.errors import InputError
from personatag.jobs import repository as jobs
from personatag.schemas import (
    NO_NUL_PATTERN,
    SOURCES,
    RequestV1,
    as_of_time,
    key_problem,
    request_id_problem,
    show_value,
)

MAX_BYTES = 100 * 2**20
SUPPORTED_VERSIONS = (1,)
FORMATS = ("json", "csv")
CSV_COLUMNS = ("contact_id", "persona", "action")


class RequestFileError(InputError):
    """A request file that cannot be used; `source` is its name, `line` the line if known."""

    def __init__(self, source: str, problem: str, line: int | None = None) -> None:
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.line = line
        self.problem = problem


class Numbered(Sequence[tuple[int, str]]):
    """A request's ids as (line, id) pairs, made as they are read.

    `lines` are the CSV lines (an int array), or None for a JSON list (the
    1-based index). The ids are held once, in a plain list: a 1.5M-id request
    does not hold another 1.5M tuples and ints besides. Compares equal to the
    same pairs in any sequence.
    """

    __slots__ = ("ids", "lines")

    def __init__(self, ids: Sequence[str], lines: Sequence[int] | None = None) -> None:
        self.ids = ids
        self.lines = lines

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> tuple[int, str]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[int, str]]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return tuple(self)[index]
        at = range(len(self.ids))[index]  # IndexError and negative indexes as a list's
        return (at + 1 if self.lines is None else self.lines[at]), self.ids[at]

    def __iter__(self) -> Iterator[tuple[int, str]]:
        if self.lines is None:
            return enumerate(self.ids, start=1)
        return zip(self.lines, self.ids, strict=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or len(other) != len(self):
            return False
        return all(a == b for a, b in zip(self, other, strict=True))

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Numbered({len(self.ids)} ids)"


@dataclass(frozen=True)
class RequestItem:
    """One unit of work: one persona, one action, and what selects the contacts."""

    persona: str | None  # None only with a criterion (it names its persona)
    action: Action
    criterion: str | None = None
    expr: str | None = None
    # (CSV line or 1-based index, id)
    contact_ids: Sequence[tuple[int, str]] | None = None


class RowError(NamedTuple):
    """A CSV row left out of the request, for the job's failed.csv."""

    line: int
    contact_id: str
    persona: str
    reason: str


@dataclass(frozen=True)
class RequestFile:
    """A parsed, valid request file (CSV rows that could not be used are in row_errors)."""

    request_id: str
    submitted_by: str | None
    engine: str | None  # None: the batch_engine setting of the dispatcher that runs it
    dry_run: bool
    as_of: datetime | None
    items: tuple[RequestItem, ...]  # JSON: one; CSV: one per (persona, action), first seen first
    format: str  # "json" | "csv"
    row_errors: tuple[RowError, ...] = ()  # CSV rows that were left out, by line


# --- reading ------------------------------------------------------------------------


def detect_format(name: str) -> str:
    """The format, "json" or "csv", from the file name's extension (in any case)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    ext = base.rsplit(".", 1)[1].lower() if "." in base else ""
    if ext in FORMATS:
        return ext
    found = f'extension ".{ext}"' if ext else "no extension"
    raise RequestFileError(name, f"unknown request file type ({found}): use .json or .csv")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value, unit = (n / 2**20, "MiB") if n >= 2**20 else (n / 1024, "KiB")
    return f"{value:.1f}".rstrip("0").rstrip(".") + f" {unit}"


def check_size(size: int, *, name: str, max_bytes: int = MAX_BYTES) -> None:
    """Refuse a file larger than `max_bytes` before it is read."""
    if size > max_bytes:
        raise RequestFileError(
            name, f"file is too large ({_size(size)}); the limit is {_size(max_bytes)}"
        )


def _text(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RequestFileError(
            name,
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}): save it as UTF-8",
            line,
        ) from None
    text = text.removeprefix("\ufeff")
    if not text or text.isspace():
        raise RequestFileError(name, "empty file")
    return text


def request_id_from_name(name: str) -> str:
    """The request id a file name gives: its last segment without the extension
    (`in/batch-42.csv` is `batch-42`).

    The one rule for every file whose id comes from its name (a CSV file, a
    JSON file dropped without a `request_id`), in `submit`, the API and the
    dispatcher alike: a name that is not a valid request id is refused with
    RequestFileError, never folded into another id.
    """
    stem = _stem(name)
    if problem := request_id_problem(stem):
        raise RequestFileError(name, f"the request id comes from the file name and {problem}")
    return stem


def parse_request(
    data: bytes,
    *,
    name: str,
    max_bytes: int = MAX_BYTES,
    request_id: str | None = None,
    id_from_name: bool = False,
) -> RequestFile:
    """Parse and validate one request file.

    `name` (file name or bucket key) picks the format by extension and prefixes
    every message. `request_id` is used when the file gives none. Without it a
    CSV file's id comes from its name (`request_id_from_name`), and so does a
    JSON file's with `id_from_name` (what a dispatcher that may read the same
    file twice needs); otherwise a JSON file without one gets a new id.
    """
    fmt = detect_format(name)
    check_size(len(data), name=name, max_bytes=max_bytes)
    text = _text(data, name)
    if fmt == "json":
        return _parse_json(text, name, request_id, id_from_name)
    return _parse_csv(text, name, request_id)


# --- JSON ---------------------------------------------------------------------------


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _not_json_constant(word: str) -> Any:
    raise ValueError(f"{word} is not a JSON value")


def _path(loc: tuple[Any, ...]) -> str:
    out = str(loc[0]) if loc else ""
    for part in loc[1:]:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


_TYPE_PROBLEMS = {
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be an array of contact ids",
}


def _field_problem(error: Any) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        known = list(RequestV1.model_fields)
        close = difflib.get_close_matches(str(loc[0]), known, n=1)
        hint = f'did you mean "{close[0]}"?' if close else "known fields: " + ", ".join(known)
        return f"unknown field {show_value(loc[0])} ({hint})"
    where = f'field "{_path(loc)}": '
    if kind == "request_value":
        return where + str(error["ctx"]["reason"])
    got = f", got {show_value(error['input'])}"
    if kind == "literal_error" and loc == ("action",):
        return where + 'must be "tag" or "untag"' + got
    if kind in _TYPE_PROBLEMS:
        return where + _TYPE_PROBLEMS[kind] + got
    return where + str(error["msg"]) + got  # not expected: the model has no other checks


def _check_object(obj: dict[str, Any], name: str) -> RequestV1:
    supported = "supported versions: " + ", ".join(map(str, SUPPORTED_VERSIONS))
    if "version" not in obj:
        raise RequestFileError(name, f'field "version": missing; {supported}')
    version = obj["version"]
    # JSON Schema's `const: 1` accepts 1.0 but not true: do the same.
    if isinstance(version, bool) or not isinstance(version, int | float) or version != 1:
        raise RequestFileError(
            name, f'field "version": unsupported version {show_value(version)}; {supported}'
        )
    problems = []
    try:
        model = RequestV1.model_validate({**obj, "version": 1})
    except ValidationError as exc:
        problems = [_field_problem(e) for e in exc.errors()]
        model = None
    given = [key for key in SOURCES if obj.get(key) is not None]
    if len(given) != 1:
        found = " and ".join(f'"{k}"' for k in given) if given else "none"
        if len(given) == 3:
            found = '"criterion", "expr" and "contacts"'
        problems.append(f'give exactly one of "criterion", "expr" or "contacts" (found {found})')
    if obj.get("persona") is None and obj.get("criterion") is None:
        problems.append('field "persona": required unless "criterion" is given')
    if problems or model is None:
        raise RequestFileError(name, "; ".join(problems))
    return model


def _no_surrogates(obj: dict[str, Any], name: str) -> None:
    """Refuse a lone surrogate (a JSON "\\ud800" escape) in any key or string: it is
    not Unicode text, and no store, file or terminal takes it."""
    todo: list[tuple[Any, str]] = [(obj, "")]
    while todo:
        item, path = todo.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                at = surrogate_at(key)
                if at is not None:
                    raise RequestFileError(name, f"a key {surrogate_message(key, at)}")
                todo.append((value, f"{path}.{key}" if path else key))
        elif isinstance(item, list):
            # Strings are checked here: a path per item only for what nests
            # (a 1.5M-id list would otherwise hold 1.5M paths at once).
            for i, value in enumerate(item):
                if not isinstance(value, str):
                    todo.append((value, f"{path}[{i}]"))
                elif (at := surrogate_at(value)) is not None:
                    raise RequestFileError(
                        name, f'field "{path}[{i}]": {surrogate_message(value, at)}'
                    )
        elif isinstance(item, str):
            at = surrogate_at(item)
            if at is not None:
                raise RequestFileError(name, f'field "{path}": {surrogate_message(item, at)}')


def _parse_json(text: str, name: str, request_id: str | None, id_from_name: bool) -> RequestFile:
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_not_json_constant)
    except json.JSONDecodeError as exc:
        raise RequestFileError(
            name, f"not valid JSON: {exc.msg} (column {exc.colno})", exc.lineno
        ) from None
    except _DuplicateKey as exc:
        raise RequestFileError(
            name, f"key {show_value(exc.args[0])} appears more than once: give each field once"
        ) from None
    except ValueError as exc:  # NaN, Infinity, more digits than int() reads
        if "integer string conversion" in str(exc):
            raise RequestFileError(
                name, "not valid JSON: a number of more than 4,300 digits"
            ) from None
        raise RequestFileError(name, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestFileError(name, "not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise RequestFileError(name, f"expected a JSON object ({{...}}), got {show_value(obj)}")
    _no_surrogates(obj, name)
    model = _check_object(obj, name)
    del obj  # the model holds what is needed (a big list would be held twice)
    ids = None if model.contacts is None else Numbered(model.contacts)
    item = RequestItem(
        persona=model.persona,
        action=Action(model.action),
        criterion=model.criterion,
        expr=model.expr,
        contact_ids=ids,
    )
    return RequestFile(
        request_id=model.request_id
        or _given_id(request_id, name)
        or (request_id_from_name(name) if id_from_name else jobs.new_request_id()),
        submitted_by=model.submitted_by,
        engine=model.engine,
        dry_run=model.dry_run,
        as_of=None if model.as_of is None else as_of_time(model.as_of),
        items=(item,),
        format="json",
    )


def _given_id(request_id: str | None, name: str) -> str | None:
    if request_id is not None and (problem := request_id_problem(request_id)):
        raise RequestFileError(name, f"request id {problem}")
    return request_id


def request_to_json(req: RequestFile) -> dict[str, Any]:
    """The canonical version 1 JSON form of a single-item request.

    A CSV request with several (persona, action) groups or with rows left out
    has no JSON form: RequestFileError.
    """
    if len(req.items) != 1 or req.row_errors:
        why = "rows that were left out" if req.row_errors else f"{len(req.items)} items"
        raise RequestFileError(
            req.request_id, f"a request with {why} cannot be written as one JSON request"
        )
    item = req.items[0]
    out: dict[str, Any] = {
        "version": 1,
        "request_id": req.request_id,
        "submitted_by": req.submitted_by,
    }
    if item.persona is not None:
        out["persona"] = item.persona
    out["action"] = item.action.value
    if req.engine is not None:
        out["engine"] = req.engine
    out["dry_run"] = req.dry_run
    if item.criterion is not None:
        out["criterion"] = item.criterion
    if item.expr is not None:
        out["expr"] = item.expr
    if item.contact_ids is not None:
        out["contacts"] = [cid for _, cid in item.contact_ids]
    if req.as_of is not None:
        out["as_of"] = req.as_of.isoformat()
    _check_object(out, req.request_id)  # what we write must read back
    return out


# --- CSV ----------------------------------------------------------------------------


def _stem(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0]


def _header(reader: Any, name: str) -> tuple[int, dict[str, int]]:
    """(line of the header, column -> index)."""
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        line = reader.line_num
        columns: dict[str, int] = {}
        expected = ",".join(CSV_COLUMNS)
        for index, raw in enumerate(row):
            col = raw.strip().lower()
            if col in columns:
                raise RequestFileError(name, f"duplicate column {show_value(col)}", line)
            if col not in CSV_COLUMNS:
                hint = "; is the file comma-separated?" if ";" in col or "\t" in col else ""
                raise RequestFileError(
                    name, f"unknown column {show_value(col)}: the header is {expected}{hint}", line
                )
            columns[col] = index
        missing = [c for c in CSV_COLUMNS if c not in columns]
        if missing:
            names = " and ".join(f'"{c}"' for c in missing)
            raise RequestFileError(name, f"missing column {names}: the header is {expected}", line)
        return line, columns
    raise RequestFileError(name, f"no header row: the header is {','.join(CSV_COLUMNS)}")


def _row_problems(cid: str, persona: str, action: str) -> list[str]:
    problems = []
    if not cid:
        problems.append("contact_id is empty")
    elif not re.fullmatch(NO_NUL_PATTERN, cid):
        problems.append("contact_id contains a NUL character")
    if not persona:
        problems.append("persona is empty")
    elif problem := key_problem(persona, "persona key"):
        problems.append(f"persona {problem}")
    if not action:
        problems.append("action is empty")
    elif action not in ("tag", "untag"):
        problems.append(f"action must be tag or untag, got {show_value(action)}")
    return problems


_LINE = re.compile(r"[^\r\n]*(?:\r\n?|\n)|[^\r\n]+\Z")


def _lines(text: str) -> Iterator[str]:
    """The lines of `text` with their ends, as `io.StringIO(text, newline="")`
    gives them, one at a time (a StringIO of the whole text takes 4 bytes a
    character)."""
    return (m.group() for m in _LINE.finditer(text))


def _parse_csv(text: str, name: str, request_id: str | None) -> RequestFile:
    if request_id is None:
        request_id = request_id_from_name(name)
    else:
        _given_id(request_id, name)
    reader = csv.reader(_lines(text))
    start = 1
    groups: dict[tuple[str, str], _Rows] = {}
    errors: list[RowError] = []
    rows = wrong_width = 0
    try:
        header_line, columns = _header(reader, name)
        width = len(columns)
        at = columns["contact_id"], columns["persona"], columns["action"]
        start = header_line + 1
        for row in reader:
            # A quoted field may span lines: a row starts where the last one ended.
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            rows += 1
            cid, persona, action = (row[i].strip() if i < len(row) else "" for i in at)
            if len(row) != width:
                wrong_width += 1
                reason = f"expected {width} fields like the header, got {len(row)}"
                errors.append(RowError(line, cid, persona, reason))
            elif problems := _row_problems(cid, persona, action):
                errors.append(RowError(line, cid, persona, "; ".join(problems)))
            else:
                rows_of = groups.get((persona, action))
                if rows_of is None:
                    rows_of = groups[(persona, action)] = _Rows(array("q"), [])
                rows_of.lines.append(line)
                rows_of.ids.append(cid)
    except csv.Error as exc:
        raise RequestFileError(name, f"not valid CSV: {exc}", start) from None
    if not rows:
        raise RequestFileError(name, "no rows after the header")
    if wrong_width * 2 > rows:
        raise RequestFileError(
            name,
            f"{wrong_width} of {rows} rows do not have {width} fields like the header: "
            "is the file comma-separated?",
        )
    errors += _contradictions(groups)
    items = tuple(
        RequestItem(persona=persona, action=Action(action), contact_ids=Numbered(ids, lines))
        for (persona, action), (lines, ids) in groups.items()
        if ids
    )
    return RequestFile(
        request_id=request_id,
        submitted_by=None,
        engine=None,
        dry_run=False,
        as_of=None,
        items=items,
        format="csv",
        row_errors=tuple(sorted(errors)),
    )


class _Rows(NamedTuple):
    """The rows of one (persona, action) group of a CSV file: lines and ids."""

    lines: array[int]
    ids: list[str]


def _contradictions(groups: dict[tuple[str, str], _Rows]) -> list[RowError]:
    """Take out rows that both tag and untag one contact with one persona.

    Which of the two should win is not knowable, so neither is applied. Only
    personas with both actions in the file are checked (the common case is free).
    """
    errors = []
    for (persona, action), tag_rows in groups.items():
        if action != "tag" or (persona, "untag") not in groups:
            continue
        untag_rows = groups[(persona, "untag")]
        both = set(tag_rows.ids) & set(untag_rows.ids)
        if not both:
            continue
        reason = (
            f"contact is both tagged and untagged with persona {show_value(persona)} in this file"
        )
        for rows in (tag_rows, untag_rows):
            pairs = list(zip(rows.lines, rows.ids, strict=True))
            errors += [RowError(line, cid, persona, reason) for line, cid in pairs if cid in both]
            kept = [(line, cid) for line, cid in pairs if cid not in both]
            rows.lines[:] = array("q", (line for line, _ in kept))
            rows.ids[:] = [cid for _, cid in kept]
    return errors
