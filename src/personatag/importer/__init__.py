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

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from personatag.config import Settings
from personatag.errors import InputError
from personatag.importer.loaders import LOADERS
from personatag.importer.readers import KINDS, READERS, check_file, check_utf8, file_spec
from personatag.importer.values import Reject, Row
from personatag.store import Store

__all__ = ["KINDS", "ImportResult", "import_file"]

DEFAULT_BATCH_SIZE: int = Settings.model_fields["batch_size"].default
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

RejectCallback = Callable[[int, str], None]


@dataclass(frozen=True)
class ImportResult:
    inserted: int
    updated: int
    rejected: int


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
    check_file(path)
    name = _format(path, fmt)
    spec = file_spec(store, kind)
    check_utf8(path)
    load = LOADERS[kind]
    inserted = updated = rejected = 0

    def reject(item: Reject) -> None:
        nonlocal rejected
        rejected += 1
        if on_reject is not None:
            on_reject(item.line, item.reason)

    def flush(batch: list[Row]) -> None:
        nonlocal inserted, updated
        ins, upd, rejects = load(store, spec, batch)
        inserted += ins
        updated += upd
        for item in rejects:
            reject(item)

    batch: list[Row] = []
    for item in READERS[name](path, spec):
        if isinstance(item, Reject):
            reject(item)
            continue
        batch.append(item)
        if len(batch) >= batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    if inserted or updated:
        store.analyze()
    return ImportResult(inserted=inserted, updated=updated, rejected=rejected)
