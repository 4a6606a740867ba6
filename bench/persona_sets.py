"""Persona sets: algebra, load in a new process, catch-up, size over time.

    .venv/bin/python bench/persona_sets.py [--contacts 1000000] [--log-rows 1000000]

1. Algebra over two 10M-contact personas (random halves of 20M pks,
   synthesized as BitMaps): every figure `persona stats` gives for a pair
   (and, a not b, or, Jaccard; cardinalities only) and the materialised
   sets. Goal <= 10 ms; anchor: numpy AND + popcount of the same sets as
   packed bits.
2. A SQLite store of 2N contacts (default N = 1M) in /work/data/persona-sets
   (or --workdir), every other one (N, scattered) tagged with one `run_adhoc`
   (a bulk log entry): the catch-up of sets that were current before the tag,
   against the tag itself and a rebuild from the memberships.
3. A new process that opens the store and the sets on disk and answers the
   size of that 1M-member persona, against a new process that opens the store
   and runs one query (imports and the store's table descriptions, which
   every command pays).
4. Size over time from a log of --log-rows single-contact entries over a
   year (written straight into the log: a bench, not a writer): the sets'
   per-day counts against persona_view.size_history's aggregate query, and
   the catch-up over those rows.

Prints best-of-R times and ratios; a ratio <= 1 against a goal meets it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pyroaring import FrozenBitMap
from sqlalchemy import text

from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.domain import Action
from personatag.engines.columnar.sets import PersonaSets, sets_folder
from personatag.engines.columnar.sets_apply import to_bitmap
from personatag.engines.columnar.sets_stats import history, pair
from personatag.memberships import persona_view
from personatag.store import open_store
from personatag.tagging.adhoc import AdhocRequest, run_adhoc

ROOT = Path(__file__).resolve().parent.parent
GOAL_ALGEBRA_S = 0.010

FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :n)
INSERT INTO contacts (pk, id, seniority, region, created_at, updated_at)
SELECT i, printf('c%09d', i), i % 10, CASE i % 2 WHEN 0 THEN 'EMEA' ELSE 'AMER' END, :t, :t
FROM n
"""

NEW_PROCESS = """
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from personatag.store import open_store
store = open_store(sys.argv[1])
t1 = time.perf_counter()
if sys.argv[3] == "sets":
    from personatag.engines.columnar.sets import PersonaSets
    sets = PersonaSets(store, Path(sys.argv[2])).refresh()
    size = len(sets.get("half"))
    rebuilds = sets.rebuilds
else:  # what every command does first: the table descriptions and a query
    from sqlalchemy import func, select
    with store.read() as conn:
        conn.scalar(select(func.count()).select_from(store.tables.personas))
    size, rebuilds = 0, 0
t2 = time.perf_counter()
print(json.dumps({"open_s": t1 - t0, "answer_s": t2 - t1, "size": size, "rebuilds": rebuilds}))
"""


def best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def ms(s: float) -> str:
    return f"{s * 1000:9.3f} ms"


def algebra(repeat: int) -> None:
    print("== 1. algebra over two 10M-contact personas (random halves of 20M pks)")
    rng = np.random.default_rng(7)
    ids_a = rng.choice(20_000_000, 10_000_000, replace=False)
    ids_b = rng.choice(20_000_000, 10_000_000, replace=False)
    a, b = FrozenBitMap(to_bitmap(ids_a)), FrozenBitMap(to_bitmap(ids_b))
    pa = np.packbits(np.isin(np.arange(20_000_000), ids_a))
    pb = np.packbits(np.isin(np.arange(20_000_000), ids_b))
    anchor = best(lambda: int(np.bitwise_count(pa & pb).sum()), repeat)
    cases: dict[str, Callable[[], Any]] = {
        "pair figures (and, a-b, b-a, or, jaccard)": lambda: pair(a, b),
        "a and b (materialised)": lambda: a & b,
        "a and not b (materialised)": lambda: a - b,
        "a or b (materialised)": lambda: a | b,
    }
    print(f"  anchor numpy packed AND + popcount: {ms(anchor)}")
    for name, fn in cases.items():
        t = best(fn, repeat)
        print(f"  {name:<42} {ms(t)}  /goal {t / GOAL_ALGEBRA_S:7.4f}  /numpy {t / anchor:6.3f}")
    dense_a = FrozenBitMap(range(0, 10_000_000))
    dense_b = FrozenBitMap(range(5_000_000, 15_000_000))
    t = best(lambda: pair(dense_a, dense_b), repeat)
    print(f"  {'pair figures, consecutive pks':<42} {ms(t)}  /goal {t / GOAL_ALGEBRA_S:7.4f}")


def store_part(workdir: Path, n: int, log_rows: int, repeat: int) -> None:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    url = f"sqlite:///{workdir / 'bench.db'}"
    store = open_store(url, create=True)
    now = datetime.now(UTC)
    t_micros = int(now.timestamp() * 1_000_000)
    with store.write() as conn:
        conn.execute(text(FILL), {"n": 2 * n, "t": t_micros})
    store.analyze()
    add_persona(store, "half", name="Every other contact", category="bench")
    folder = sets_folder(workdir, store)
    sets = PersonaSets(store, folder).refresh()
    print(f"== 2. catch-up after a {n:,}-contact tag (every other of {2 * n:,}; SQLite)")
    t = time.perf_counter()
    run_adhoc(
        store,
        AdhocRequest(persona="half", action=Action.TAG, expr='region = "EMEA"'),
        Settings(),
    )
    tag_s = time.perf_counter() - t
    t = time.perf_counter()
    sets.refresh()
    catch_s = time.perf_counter() - t
    assert len(sets.get("half")) == n
    rebuild_s = best(lambda: PersonaSets(store, None).refresh(), repeat)
    print(f"  the tag (run_adhoc, in process):      {ms(tag_s)}")
    print(f"  catch-up of the sets after it:        {ms(catch_s)}  /tag {catch_s / tag_s:6.3f}")
    print(f"  rebuild from the memberships (anchor): {ms(rebuild_s)}  catch-up/rebuild "
          f"{catch_s / rebuild_s:6.3f}")  # fmt: skip
    sets.save()
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"  sets on disk: {size:,} bytes")

    print(f"== 3. a new process answers the size of a {n:,}-member persona")

    def run(what: str) -> dict[str, Any]:
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", NEW_PROCESS, url, str(folder), what],
            capture_output=True,
            text=True,
            check=True,
        )
        data: dict[str, Any] = json.loads(out.stdout)
        data["wall_s"] = time.perf_counter() - t
        return data

    bare = min((run("bare") for _ in range(repeat)), key=lambda d: d["wall_s"])
    loaded = min((run("sets") for _ in range(repeat)), key=lambda d: d["wall_s"])
    assert loaded["size"] == n and loaded["rebuilds"] == 0, loaded
    print(f"  process that opens the store, one query (anchor): {ms(bare['wall_s'])}")
    print(f"  process that loads the sets and answers:    {ms(loaded['wall_s'])}  "
          f"/anchor {loaded['wall_s'] / bare['wall_s']:6.3f}")  # fmt: skip
    print(f"  after open_store: sets {ms(loaded['answer_s'])}, anchor {ms(bare['answer_s'])}")

    print(f"== 4. size over time from {log_rows:,} single-contact log entries over a year")
    add_persona(store, "moves", name="Moves", category="bench")
    pk = sets.info("moves").pk
    rng = np.random.default_rng(3)
    contacts = rng.integers(1, n + 1, log_rows)
    year_us = 365 * 86_400_000_000
    at = np.sort(t_micros - rng.integers(0, year_us, log_rows))
    # enter on a contact's odd appearances, exit on its even ones: a valid log
    order = np.argsort(contacts, kind="stable")
    nth = np.empty(log_rows, dtype=np.int64)
    sorted_c = contacts[order]
    starts = np.r_[0, np.flatnonzero(sorted_c[1:] != sorted_c[:-1]) + 1]
    run_len = np.diff(np.r_[starts, log_rows])
    nth[order] = np.arange(log_rows) - np.repeat(starts, run_len)
    change = np.where(nth % 2 == 0, "enter", "exit")
    rows = [
        {"at": int(at[i]), "p": pk, "c": int(contacts[i]), "ch": str(change[i])}
        for i in range(log_rows)
    ]
    with store.write() as conn:
        conn.execute(
            text(
                "INSERT INTO membership_log (at, persona_pk, contact_pk, change, source) "
                "VALUES (:at, :p, :c, :ch, 0)"
            ),
            rows,
        )
    t = time.perf_counter()
    sets.refresh()
    catch_rows_s = time.perf_counter() - t
    print(f"  catch-up over the {log_rows:,} entries:  {ms(catch_rows_s)}  "
          f"({log_rows / catch_rows_s:,.0f} entries/s)")  # fmt: skip
    today = now.date()

    def sql() -> Any:
        with store.read() as conn:
            return persona_view.size_history(conn, store, pk, 365, today=today).as_json()

    sql_s = best(sql, repeat)
    sets_s = best(lambda: history(sets, "moves", 365, today=today), repeat)
    assert history(sets, "moves", 365, today=today) == sql()
    print(f"  size_history SQL, 365 days (anchor): {ms(sql_s)}")
    print(f"  persona sets' daily counts, 365 days: {ms(sets_s)}  /anchor {sets_s / sql_s:6.4f}")
    store.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contacts", type=int, default=1_000_000)
    ap.add_argument("--log-rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=Path("/work/data/persona-sets"))
    ap.add_argument("--skip-store", action="store_true", help="only the algebra")
    args = ap.parse_args()
    algebra(args.repeat)
    if not args.skip_store:
        store_part(args.workdir, args.contacts, args.log_rows, args.repeat)


if __name__ == "__main__":
    main()
