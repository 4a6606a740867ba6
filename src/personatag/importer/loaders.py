"""Writing batches of rows: upserts by id, and reads/logins by external id."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, or_, update

from personatag.importer.readers import Spec
from personatag.importer.values import Reject, Row
from personatag.store import Store, changefeed, versions
from personatag.store.bulk import bulk_writer


def _load_entities(store: Store, spec: Spec, rows: list[Row]) -> tuple[int, int, list[Reject]]:
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
    store: Store, spec: Spec, groups: dict[tuple[str, ...], list[Sequence[Any]]], rows: int
) -> tuple[int, int, list[Reject]]:
    inserted = 0
    with store.write() as conn:
        writer = bulk_writer(conn)
        table = store.tables.contacts if spec.kind == "contacts" else store.tables.publications
        for cols, group in groups.items():
            ins, _ = writer.upsert(table, [spec.table_columns[c] for c in cols], group)
            inserted += ins
            if spec.kind == "contacts":
                key = cols.index("id")
                pks = writer.lookup_pks(table, [r[key] for r in group]).values()
                changefeed.record(
                    conn, store, changefeed.KIND_CONTACT, pks, [c for c in cols if c != "id"]
                )
        versions.bump(conn, store.tables, [table.name])
    return inserted, rows - inserted, []


def _load_events(store: Store, spec: Spec, rows: list[Row]) -> tuple[int, int, list[Reject]]:
    """Insert reads or logins, resolving external ids; known events are skipped."""
    is_reads = spec.kind == "reads"
    time_col = "read_at" if is_reads else "login_at"
    tables = store.tables
    rejects: list[Reject] = []
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
                rejects.append(Reject(line, f"unknown contact id {obj['contact_id']!r}"))
                continue
            at = obj[time_col]
            if is_reads:
                ppk = pub_pks.get(obj["publication_id"])
                if ppk is None:
                    rejects.append(
                        Reject(line, f"unknown publication id {obj['publication_id']!r}")
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
        if is_reads:
            pubs = changefeed.publication_fields(row[2] for row in good)
            changefeed.record(conn, store, changefeed.KIND_READ, (row[0] for row in good), pubs)
        else:
            changefeed.record(conn, store, changefeed.KIND_LOGIN, (row[0] for row in good))
        if newest:
            changefeed.record(conn, store, changefeed.KIND_CONTACT, newest, ["last_login_at"])
        changed = ["reads"] if is_reads else ["logins", "contacts"]
        versions.bump(conn, tables, changed)
    return inserted, len(good) - inserted, rejects


LOADERS: dict[str, Callable[[Store, Spec, list[Row]], tuple[int, int, list[Reject]]]] = {
    "contacts": _load_entities,
    "publications": _load_entities,
    "reads": _load_events,
    "logins": _load_events,
}
