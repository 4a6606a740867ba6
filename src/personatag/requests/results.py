"""Result files: every request, success or failure, leaves a report in `results`.

    results/<request_id>/summary.json    status, counts, timings, engine, error
    results/<request_id>/failed.csv      row, contact_id, persona, reason
    results/<request_id>/changes.csv.gz  contact_id, persona, change (enter|exit)

summary.json is written last, so its presence means the other two are there.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from isal import igzip
from sqlalchemy import Connection, select

from personatag.buckets import Bucket
from personatag.memberships.apply import BulkChanges
from personatag.store import Store
from personatag.store.ids import decode_ids
from personatag.tagging.contact_lists import FailedRow


def _iso(value: Any) -> Any:
    return value.isoformat().replace("+00:00", "Z") if hasattr(value, "isoformat") else value


def _csv_field(value: str) -> str:
    if any(ch in value for ch in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


# A chunk of contact pks becomes its ids in one statement, so 10M changes never
# become 10M Python rows. Where the store's text can hold NUL (SQLite) the ids
# come NUL-separated, so one str.replace makes the CSV lines; ids with a comma,
# quote or line break are quoted like the csv module does. Elsewhere the store
# quotes them and returns the lines.
_CHUNK = 500_000
_SPECIAL = (",", '"', "\n", "\r")


def _member(data: str | bytes) -> bytes:
    # One gzip member per chunk: members compress on separate threads and
    # concatenate into one valid .gz file. ISA-L's deflate makes the same
    # format ~4x faster than zlib at the same size, and releases the GIL.
    raw = data.encode() if isinstance(data, str) else data
    return igzip.compress(raw, compresslevel=1, mtime=0)


def _lines_from_ids(ids: str, suffix: str) -> str:
    if not any(ch in ids for ch in _SPECIAL):
        return ids.replace("\x00", suffix + "\n") + suffix + "\n"
    return "".join(f"{_csv_field(i)}{suffix}\n" for i in ids.split("\x00"))


def _member_of(store: Store, chunk: list[int], suffix: str) -> bytes:
    backend = store.backend
    with store.read() as conn:
        ids = backend.contact_id_lines(conn, chunk, suffix)
    if not ids:
        return b""
    if backend.id_lines_nul_separated:
        return _member(_lines_from_ids(ids, suffix))
    return _member(ids + "\n")


_SPECIAL_BYTES = (b",", b'"', b"\n", b"\r")


def _member_of_labels(ids: bytes, suffix: str) -> bytes:
    """The gzip member of the CSV lines for NUL-separated UTF-8 ids."""
    if not ids:
        return b""
    if any(ch in ids for ch in _SPECIAL_BYTES):
        return _member(_lines_from_ids(ids.decode(), suffix))
    end = (suffix + "\n").encode()
    return _member(ids.replace(b"\x00", end) + end)


def _label_parts(labels: bytes, size: int = 4 * 2**20) -> Iterator[bytes]:
    """NUL-separated ids in parts of about `size` bytes, split between ids."""
    start = 0
    while start < len(labels):
        end = labels.find(b"\x00", start + size)
        if end < 0:
            yield labels[start:]
            return
        yield labels[start:end]
        start = end + 1


def _sorted(pks: Any) -> bool:
    # The log keeps a bulk entry's pks sorted; labels in another order would
    # put the lines out of the log's order, so they are used only when sorted.
    return len(pks) < 2 or bool((pks[1:] > pks[:-1]).all())


def _chunks(pks: Any) -> Iterator[list[int]]:
    return (pks[i : i + _CHUNK].tolist() for i in range(0, len(pks), _CHUNK))


def _bulk_members(store: Store, pks: Any, suffix: str) -> Iterator[bytes]:
    """Gzip members of the CSV lines for `pks`, chunk by chunk, in pk order,
    built on two reader connections and threads at once."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="changes") as pool:
        # In order, with at most three chunks in flight (bounded memory).
        pending: deque[Future[bytes]] = deque()
        for chunk in _chunks(pks):
            pending.append(pool.submit(_member_of, store, chunk, suffix))
            if len(pending) >= 3:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class ChangesBuilder:
    """Builds the changes file of one job while the job still runs.

    The applier reports a bulk change's contact pks as soon as it knows them
    (applier.BulkChanges), often before its insert ends; contact ids do not
    change inside the job, so readers can turn them into CSV lines at once on
    other connections. `changes_of` then uses the finished parts in log order.
    If the job fails, the parts are simply dropped.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="changes")
        self._lock = threading.Lock()
        self._started: dict[tuple[str, str], tuple[int, list[Future[bytes]]]] = {}
        self._confirmed: deque[tuple[str, str, list[Future[bytes]]]] = deque()

    def for_persona(self, persona: str) -> BulkChanges:
        builder = self

        class _Hook:
            def start(self, change: str, ids: Any, labels: bytes | None = None) -> None:
                builder.start(persona, change, ids, labels)

            def confirm(self, change: str, ids: Any) -> None:
                builder.confirm(persona, change, ids)

        return _Hook()

    def start(self, persona: str, change: str, ids: Any, labels: bytes | None = None) -> None:
        suffix = f",{_csv_field(persona)},{change}"
        if labels is not None and _sorted(ids):
            futures = [
                self._pool.submit(_member_of_labels, part, suffix) for part in _label_parts(labels)
            ]
        else:
            futures = [self._pool.submit(_member_of, self.store, c, suffix) for c in _chunks(ids)]
        with self._lock:
            self._started[(persona, change)] = (len(ids), futures)

    def confirm(self, persona: str, change: str, ids: Any) -> None:
        with self._lock:
            started = self._started.pop((persona, change), None)
        if started is None or started[0] != len(ids):
            self.start(persona, change, ids)
            with self._lock:
                started = self._started.pop((persona, change))
        with self._lock:
            self._confirmed.append((persona, change, started[1]))

    def reset(self) -> None:
        """Forget every part reported so far (their transaction rolled back and
        runs again)."""
        with self._lock:
            parts = [f for _, fs in self._started.values() for f in fs]
            parts += [f for *_, fs in self._confirmed for f in fs]
            self._started.clear()
            self._confirmed.clear()
        for f in parts:
            f.cancel()

    def take(self, persona: str, change: str) -> list[Future[bytes]] | None:
        """The parts of the next bulk entry in log order, if they are for (persona, change)."""
        with self._lock:
            if self._confirmed and self._confirmed[0][:2] == (persona, change):
                return self._confirmed.popleft()[2]
        return None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def changes_of(
    conn: Connection, store: Store, request_pk: int, prebuilt: ChangesBuilder | None = None
) -> Iterator[bytes]:
    """Gzip members of the CSV lines `contact_id,persona,change` for every
    membership change of a request, in the order they were logged."""
    t = store.tables
    log, c = t.membership_log, t.contacts
    keys = {pk: key for pk, key in conn.execute(select(t.personas.c.pk, t.personas.c.key))}
    single = conn.execute(
        select(c.c.id, log.c.persona_pk, log.c.change)
        .join(c, c.c.pk == log.c.contact_pk)
        .where(log.c.request_pk == request_pk, log.c.contact_pk.is_not(None))
        .order_by(log.c.seq)
    )
    lines = [f"{_csv_field(cid)},{_csv_field(keys[p])},{change}\n" for cid, p, change in single]
    if lines:
        yield _member("".join(lines))
    bulk = conn.execute(
        select(log.c.persona_pk, log.c.change, log.c.bulk_ids)
        .where(log.c.request_pk == request_pk, log.c.bulk_count.is_not(None))
        .order_by(log.c.seq)
    )
    for persona_pk, change, blob in bulk:
        parts = prebuilt.take(keys[persona_pk], change) if prebuilt is not None else None
        if parts is not None:
            yield from (f.result() for f in parts)
            continue
        suffix = f",{_csv_field(keys[persona_pk])},{change}"
        yield from _bulk_members(store, decode_ids(blob), suffix)


def failed_csv(rows: Sequence[FailedRow]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["row", "contact_id", "persona", "reason"])
    for f in rows:
        writer.writerow([f.line, f.contact_id, f.persona or "", f.reason])
    return out.getvalue().encode()


def changes_csv_gz(members: Iterable[bytes]) -> bytes:
    """A .gz file: the header, then the given gzip members, concatenated."""
    return b"".join([_member("contact_id,persona,change\n"), *members])


def write_results(
    results: Bucket,
    store: Store,
    *,
    request_id: str,
    summary: dict[str, Any],
    failures: Sequence[FailedRow] = (),
    request_pk: int | None = None,
    prebuilt: ChangesBuilder | None = None,
) -> None:
    """Write the three result files of a request (summary.json last)."""
    results.put(f"{request_id}/failed.csv", failed_csv(failures))
    if request_pk is not None and summary.get("status") in ("succeeded", "partial"):
        with store.read() as conn:
            data = changes_csv_gz(changes_of(conn, store, request_pk, prebuilt))
    else:
        data = changes_csv_gz(iter(()))
    results.put(f"{request_id}/changes.csv.gz", data)
    body = json.dumps(summary, indent=2, sort_keys=True, default=_iso)
    results.put(f"{request_id}/summary.json", body.encode() + b"\n")
