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
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, select

from personatag.buckets import Bucket
from personatag.domain import JobStatus
from personatag.store import Store
from personatag.store.ids import decode_ids
from personatag.tagging.changes import ChangesBuilder, bulk_members, csv_field, gzip_member
from personatag.tagging.contact_lists import FailedRow
from personatag.times import iso_any


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
    lines = [f"{csv_field(cid)},{csv_field(keys[p])},{change}\n" for cid, p, change in single]
    if lines:
        yield gzip_member("".join(lines))
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
        suffix = f",{csv_field(keys[persona_pk])},{change}"
        yield from bulk_members(store, decode_ids(blob), suffix)


def failed_csv(rows: Sequence[FailedRow]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["row", "contact_id", "persona", "reason"])
    for f in rows:
        writer.writerow([f.line, f.contact_id, f.persona or "", f.reason])
    return out.getvalue().encode()


def changes_csv_gz(members: Iterable[bytes]) -> bytes:
    """A .gz file: the header, then the given gzip members, concatenated."""
    return b"".join([gzip_member("contact_id,persona,change\n"), *members])


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
    if request_pk is not None and summary.get("status") in (JobStatus.SUCCEEDED, JobStatus.PARTIAL):
        with store.read() as conn:
            data = changes_csv_gz(changes_of(conn, store, request_pk, prebuilt))
    else:
        data = changes_csv_gz(iter(()))
    results.put(f"{request_id}/changes.csv.gz", data)
    body = json.dumps(summary, indent=2, sort_keys=True, default=iso_any)
    results.put(f"{request_id}/summary.json", body.encode() + b"\n")
