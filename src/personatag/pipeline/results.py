"""Result files: every request, success or failure, leaves a report in `results`.

    results/<request_id>/summary.json    status, counts, timings, engine, error
    results/<request_id>/failed.csv      row, contact_id, persona, reason
    results/<request_id>/changes.csv.gz  contact_id, persona, change (enter|exit)

summary.json is written last, so its presence means the other two are there.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, select

from personatag.buckets import Bucket
from personatag.pipeline.audit import decode_ids
from personatag.pipeline.contact_lists import FailedRow
from personatag.store import Store

_ID_CHUNK = 20_000


def _iso(value: Any) -> Any:
    return value.isoformat().replace("+00:00", "Z") if hasattr(value, "isoformat") else value


def _ids_for(conn: Connection, store: Store, pks: Sequence[int]) -> Iterator[str]:
    c = store.tables.contacts
    for start in range(0, len(pks), _ID_CHUNK):
        chunk = [int(p) for p in pks[start : start + _ID_CHUNK]]
        yield from conn.scalars(select(c.c.id).where(c.c.pk.in_(chunk)).order_by(c.c.pk))


def changes_of(conn: Connection, store: Store, request_pk: int) -> Iterator[tuple[str, str, str]]:
    """(contact id, persona key, enter|exit) for every membership change of a request."""
    t = store.tables
    log, c = t.membership_log, t.contacts
    keys = {pk: key for pk, key in conn.execute(select(t.personas.c.pk, t.personas.c.key))}
    single = conn.execute(
        select(c.c.id, log.c.persona_pk, log.c.change)
        .join(c, c.c.pk == log.c.contact_pk)
        .where(log.c.request_pk == request_pk, log.c.contact_pk.is_not(None))
        .order_by(log.c.seq)
    )
    for cid, persona_pk, change in single:
        yield cid, keys[persona_pk], change
    bulk = conn.execute(
        select(log.c.persona_pk, log.c.change, log.c.bulk_ids)
        .where(log.c.request_pk == request_pk, log.c.bulk_count.is_not(None))
        .order_by(log.c.seq)
    )
    for persona_pk, change, blob in bulk:
        for cid in _ids_for(conn, store, decode_ids(blob).tolist()):
            yield cid, keys[persona_pk], change


def failed_csv(rows: Sequence[FailedRow]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["row", "contact_id", "persona", "reason"])
    for f in rows:
        writer.writerow([f.line, f.contact_id, f.persona or "", f.reason])
    return out.getvalue().encode()


def changes_csv_gz(changes: Iterator[tuple[str, str, str]]) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=5, mtime=0) as gz:
        text = io.TextIOWrapper(gz, encoding="utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["contact_id", "persona", "change"])
        for row in changes:
            writer.writerow(row)
        text.flush()
        text.detach()
    return buf.getvalue()


def write_results(
    results: Bucket,
    store: Store,
    *,
    request_id: str,
    summary: dict[str, Any],
    failures: Sequence[FailedRow] = (),
    request_pk: int | None = None,
) -> None:
    """Write the three result files of a request (summary.json last)."""
    results.put(f"{request_id}/failed.csv", failed_csv(failures))
    if request_pk is not None and summary.get("status") in ("succeeded", "partial"):
        with store.read() as conn:
            data = changes_csv_gz(changes_of(conn, store, request_pk))
    else:
        data = changes_csv_gz(iter(()))
    results.put(f"{request_id}/changes.csv.gz", data)
    body = json.dumps(summary, indent=2, sort_keys=True, default=_iso)
    results.put(f"{request_id}/summary.json", body.encode() + b"\n")
