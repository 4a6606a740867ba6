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
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy import Connection, select, text

from personatag.buckets import Bucket
from personatag.pipeline.audit import decode_ids
from personatag.pipeline.contact_lists import FailedRow
from personatag.store import Store


def _iso(value: Any) -> Any:
    return value.isoformat().replace("+00:00", "Z") if hasattr(value, "isoformat") else value


def _csv_field(value: str) -> str:
    if any(ch in value for ch in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


# One statement turns a chunk of contact pks into finished CSV lines, so 10M
# changes never become 10M Python rows. Ids are quoted like the csv module
# does when they hold a comma, a quote or a line break.
_NEEDS_QUOTES = {
    # instr/strpos: half the cost of GLOB or a regex per line (10M lines).
    "sqlite": "instr(c.id, ',') OR instr(c.id, '\"') OR instr(c.id, char(10)) "
    "OR instr(c.id, char(13))",
    "postgresql": "strpos(c.id, ',') > 0 OR strpos(c.id, '\"') > 0 "
    "OR strpos(c.id, chr(10)) > 0 OR strpos(c.id, chr(13)) > 0",
}
_QUOTED = "CASE WHEN {needs} THEN '\"' || replace(c.id, '\"', '\"\"') || '\"' ELSE c.id END"
_LINES_SQL = {
    "sqlite": (
        f"SELECT group_concat({_QUOTED.format(needs=_NEEDS_QUOTES['sqlite'])} || :suffix, "  # noqa: S608 - constants only
        "char(10)) FROM (SELECT value AS pk FROM json_each(:pks)) AS t "
        "JOIN contacts AS c ON c.pk = t.pk"
    ),
    "postgresql": (
        f"SELECT string_agg({_QUOTED.format(needs=_NEEDS_QUOTES['postgresql'])} || :suffix, "  # noqa: S608 - constants only
        "chr(10) ORDER BY c.pk) "
        "FROM unnest(CAST(:pks AS bigint[])) AS t(pk) JOIN contacts AS c ON c.pk = t.pk"
    ),
}
_CHUNK = 500_000


def _bulk_lines(store: Store, pks: Any, suffix: str) -> Iterator[str]:
    """CSV lines for `pks`, chunk by chunk, in pk order.

    Chunks are turned into text on two reader connections at once while the
    caller compresses the previous ones (zlib and the drivers release the GIL),
    so a 10M-line file uses both cores.
    """
    sql = text(_LINES_SQL[store.dialect])

    def lines(chunk: list[int]) -> str:
        param: Any = json.dumps(chunk) if store.dialect == "sqlite" else chunk
        with store.read() as conn:
            block = conn.execute(sql, {"pks": param, "suffix": suffix}).scalar()
        return block + "\n" if block else ""

    chunks = (pks[i : i + _CHUNK].tolist() for i in range(0, len(pks), _CHUNK))
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="changes") as pool:
        # In order, with at most three chunks in flight (bounded memory).
        pending: deque[Future[str]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(lines, chunk))
            if len(pending) >= 3:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def changes_of(conn: Connection, store: Store, request_pk: int) -> Iterator[str]:
    """Blocks of CSV lines `contact_id,persona,change` for every membership change
    of a request, in the order they were logged."""
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
        yield "".join(lines)
    bulk = conn.execute(
        select(log.c.persona_pk, log.c.change, log.c.bulk_ids)
        .where(log.c.request_pk == request_pk, log.c.bulk_count.is_not(None))
        .order_by(log.c.seq)
    )
    for persona_pk, change, blob in bulk:
        suffix = f",{_csv_field(keys[persona_pk])},{change}"
        yield from _bulk_lines(store, decode_ids(blob), suffix)


def failed_csv(rows: Sequence[FailedRow]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["row", "contact_id", "persona", "reason"])
    for f in rows:
        writer.writerow([f.line, f.contact_id, f.persona or "", f.reason])
    return out.getvalue().encode()


def changes_csv_gz(blocks: Iterator[str]) -> bytes:
    """The gzip of a header plus blocks of CSV lines."""
    buf = io.BytesIO()
    # Level 1: changes files can hold 10M lines; speed matters more than size.
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1, mtime=0) as gz:
        gz.write(b"contact_id,persona,change\n")
        for block in blocks:
            gz.write(block.encode())
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
