"""The reference for the columnar copy: the store read by plain SELECTs, and a
Frame turned back into the same plain Python form, so a test compares the two."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from sqlalchemy import text

from personatag.domain import (
    CUSTOM_COLUMN_PREFIX,
    PUBLICATION_FIELDS,
    STANDARD_CONTACT_FIELDS,
    FieldType,
)
from personatag.engines.columnar.frame import ODD, Column, Events, Frame, Table
from personatag.store import Store
from personatag.store.types import to_micros


def _plain(kind: FieldType, value: Any) -> Any:
    if value is None:
        return None
    if kind is FieldType.TIMESTAMP:
        return int(value) if isinstance(value, int) else to_micros(value)
    if kind is FieldType.LIST:
        import json

        return tuple(value if isinstance(value, list) else json.loads(value))
    if kind is FieldType.BOOL:
        return bool(value)
    if kind is FieldType.FLOAT:
        return float(value)
    if kind is FieldType.INT:
        return int(value)
    return str(value)


def reference(store: Store) -> dict[str, Any]:
    """Contacts, publications, reads and logins by plain SELECTs."""
    out: dict[str, Any] = {}
    with store.read() as conn:
        fields: dict[str, FieldType] = dict(STANDARD_CONTACT_FIELDS)
        for name, kind in conn.execute(text("SELECT name, type FROM attributes")):
            fields[name] = FieldType(kind)
        cols = [n if n in STANDARD_CONTACT_FIELDS else CUSTOM_COLUMN_PREFIX + n for n in fields]
        rows = conn.execute(text(f"SELECT pk, {', '.join(cols)} FROM contacts ORDER BY pk"))
        # ODD: no field holds a value of another type (these stores are
        # written through personatag; test_copy_odd.py writes such values).
        out["contacts"] = {
            int(r[0]): {
                **{f: _plain(k, v) for (f, k), v in zip(fields.items(), r[1:], strict=True)},
                ODD: None,
            }
            for r in rows
        }
        pub_cols = ", ".join(PUBLICATION_FIELDS)
        rows = conn.execute(text(f"SELECT pk, {pub_cols} FROM publications ORDER BY pk"))
        out["publications"] = {
            int(r[0]): {
                **{
                    f: _plain(k, v)
                    for (f, k), v in zip(PUBLICATION_FIELDS.items(), r[1:], strict=True)
                },
                ODD: None,
            }
            for r in rows
        }
        out["reads"] = Counter(
            (int(a), int(b), int(c))
            for a, b, c in conn.execute(
                text("SELECT contact_pk, read_at, publication_pk FROM reads")
            )
        )
        out["logins"] = Counter(
            (int(a), int(b))
            for a, b in conn.execute(text("SELECT contact_pk, login_at FROM logins"))
        )
    return out


def _column_values(col: Column, n: int) -> list[Any]:
    nulls = np.zeros(n, bool) if col.nulls is None else np.asarray(col.nulls)
    if col.kind is FieldType.LIST:
        assert col.offsets is not None and col.items is not None and col.dictionary is not None
        off = np.asarray(col.offsets)
        assert len(off) == n + 1
        words = [str(w) for w in np.asarray(col.dictionary)[np.asarray(col.items)]]
        return [None if nulls[i] else tuple(words[off[i] : off[i + 1]]) for i in range(n)]
    values = np.asarray(col.values)
    assert len(values) == n
    if col.kind is FieldType.STRING:
        assert col.dictionary is not None
        assert len(set(col.dictionary)) == len(col.dictionary), "dictionary not distinct"
        assert bool(np.all((values == -1) == nulls)), "STRING nulls disagree with codes"
        d = np.asarray(col.dictionary)
        return [None if v < 0 else str(d[v]) for v in values.tolist()]
    return [None if nulls[i] else _plain(col.kind, v.item()) for i, v in enumerate(values)]


def _table(table: Table, fields: Any) -> dict[int, dict[str, Any]]:
    pk = np.asarray(table.pk)
    assert bool(np.all(pk[1:] > pk[:-1])), "pks not ascending"
    assert set(table.columns) == set(fields), (sorted(table.columns), sorted(fields))
    values = {f: _column_values(table.columns[f], table.n) for f in fields}
    return {int(p): {f: values[f][i] for f in fields} for i, p in enumerate(pk.tolist())}


def _events(frame: Frame, segments: Any, reads: bool) -> Counter[Any]:
    out: Counter[Any] = Counter()
    pk = np.asarray(frame.contacts.pk)
    pub = np.asarray(frame.publications.pk)
    for seg in segments:
        assert isinstance(seg, Events)
        at = np.asarray(seg.at)
        if seg.sorted:
            assert bool(np.all(at[1:] >= at[:-1])), "segment marked sorted is not"
        live = np.ones(len(at), bool) if seg.live is None else np.asarray(seg.live)
        rows = np.asarray(seg.row)[live]
        if reads:
            pubs = np.asarray(seg.publication)[live]
            out.update(zip(pk[rows].tolist(), at[live].tolist(), pub[pubs].tolist(), strict=True))
        else:
            out.update(zip(pk[rows].tolist(), at[live].tolist(), strict=True))
    return out


def from_frame(frame: Frame, store: Store) -> dict[str, Any]:
    fields = {**store.catalog().contact_fields, ODD: FieldType.STRING}
    return {
        "contacts": _table(frame.contacts, fields),
        "publications": _table(frame.publications, {**PUBLICATION_FIELDS, ODD: FieldType.STRING}),
        "reads": _events(frame, frame.reads, True),
        "logins": _events(frame, frame.logins, False),
    }


def assert_exact(frame: Frame, store: Store) -> None:
    """The frame holds exactly what the store holds (and its offset is the feed's head)."""
    got, want = from_frame(frame, store), reference(store)
    for part in ("contacts", "publications", "reads", "logins"):
        if got[part] != want[part]:
            if isinstance(want[part], dict):
                diff = {
                    k: (got[part].get(k), want[part].get(k))
                    for k in set(got[part]) | set(want[part])
                    if got[part].get(k) != want[part].get(k)
                }
            else:
                diff = {"extra": got[part] - want[part], "missing": want[part] - got[part]}
            raise AssertionError(f"{part} differ: {str(diff)[:2000]}")
    with store.read() as conn:
        head = int(conn.scalar(text("SELECT coalesce(max(seq), 0) FROM changes")) or 0)
    assert frame.offset == head
