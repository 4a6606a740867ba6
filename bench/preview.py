"""Preview latency on a populated store (e.g. after `personatag generate`).

    PERSONATAG_STORE_URL=sqlite:///path/store.db .venv/bin/python bench/preview.py

Times `preview` (count, sample, enter/exit against a persona) in-process, best
of R runs after one warm-up, for an attribute criterion and a behavioural one,
next to the anchor: a hand-written `SELECT count(*)` with the same predicate,
in the same run. Goals (issue #2, 10M contacts / 100M reads on SQLite):
attribute < 1 s, behavioural < 10 s.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta

from sqlalchemy import func, select, text

from personatag.config import load_settings
from personatag.domain import utcnow
from personatag.store import open_store
from personatag.store.types import to_micros
from personatag.tagging.preview import preview

ATTRIBUTE = ('region = "EMEA" and seniority >= 3', "region = 'EMEA' AND seniority >= 3")
BEHAVIOURAL = 'count(read where sector = "Energy", 90d) >= 5'


def behavioural_anchor(as_of_micros: int) -> str:
    lo = as_of_micros - timedelta(days=90) // timedelta(microseconds=1)
    return (
        "SELECT count(*) FROM (SELECT r.contact_pk FROM publications p JOIN reads r "
        "ON r.publication_pk = p.pk WHERE p.sector = 'Energy' "
        f"AND r.read_at > {lo} AND r.read_at <= {as_of_micros} "
        "GROUP BY r.contact_pk HAVING count(*) >= 5)"
    )


def best(fn, repeats: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    fn()  # warm the cache: every timed run sees the same state
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--persona", default=None, help="compare with this persona's members")
    args = ap.parse_args()
    store = open_store(load_settings().resolved_store_url)
    t = store.tables
    with store.read() as conn:
        n_contacts = conn.scalar(select(func.count()).select_from(t.contacts))
        n_reads = conn.scalar(select(func.count()).select_from(t.reads))
    print(
        f"store {store.engine.url.render_as_string()}: {n_contacts:,} contacts, {n_reads:,} reads"
    )
    as_of = utcnow()
    rows = []
    for label, expr, anchor_sql in (
        ("attribute", ATTRIBUTE[0], f"SELECT count(*) FROM contacts WHERE {ATTRIBUTE[1]}"),
        ("behavioural", BEHAVIOURAL, behavioural_anchor(to_micros(as_of))),
    ):
        ours, result = best(
            lambda e=expr: preview(store, e, persona=args.persona, as_of=as_of), args.repeats
        )

        def anchor(sql: str = anchor_sql) -> int:
            with store.read() as conn:
                return int(conn.execute(text(sql)).scalar() or 0)

        base, count = best(anchor, args.repeats)
        assert isinstance(result, dict)
        if result["count"] != count:
            raise SystemExit(f"{label}: preview counted {result['count']}, anchor {count}")
        row = {
            "case": label,
            "count": count,
            "preview_s": round(ours, 3),
            "anchor_count_s": round(base, 3),
            "ratio": round(ours / base, 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    store.dispose()


if __name__ == "__main__":
    main()
