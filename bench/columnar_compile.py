"""The columnar compiler's evaluation time against plain numpy masks of the
same predicates, on a synthetic Frame (arrays made directly with numpy, no store).

    .venv/bin/python bench/columnar_compile.py --contacts 10000000 --reads 100000000

Cases (each compiled once, then evaluated R times alternating with its anchor;
best and median printed, the ratio of the bests):

- attribute: `region = "EMEA" and seniority >= 3` (string codes with NULLs, an
  int column with NULLs); anchor: `(codes == EMEA) & (seniority >= 3)`, which
  ignores NULLs, the machine's limit for the same work.
- behavioural: `count(read where sector = "Energy", 90d) >= 5` (a year of
  reads, half of them by 5% of the contacts, 8 sectors) over one sorted
  read segment (with a live mask, ~0.1% superseded) and a small unsorted one;
  anchor: two binary searches, the publication mask gathered, one bincount,
  on the sorted segment alone without its live mask (also timed: the plan
  on that one segment, no live mask).
- persona algebra: `persona("a") and not persona("b")` over two personas of
  half the contacts each (BitMaps); anchor: the same BitMap difference turned
  into a mask with numpy.

Then a string predicate over an email column of --distinct values: its first
evaluation (once per distinct value, in Python) and the next.

Prints times, plan/anchor ratios and the peak RSS after the data is built and
at the end.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pyroaring import BitMap

from personatag.criteria import parse
from personatag.domain import FieldType
from personatag.engines.columnar.compile import compile_columnar, frame_catalog
from personatag.engines.columnar.compile_values import DAY_US, micros
from personatag.engines.columnar.frame import Column, Events, Frame, Table

AS_OF = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)
REGIONS = np.array(["EMEA", "AMER", "APAC", "LATAM", "Middle East"], dtype=object)
SECTORS = np.array(
    ["Energy", "Financials", "Utilities", "Materials", "Industrials", "Health", "Tech", "Retail"],
    dtype=object,
)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(contacts: int, reads: int, seed: int) -> tuple[Frame, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    n, publications = contacts, 50_000
    region = rng.integers(0, len(REGIONS), n, dtype=np.int32)
    region_nulls = rng.random(n, dtype=np.float32) < 0.05
    region[region_nulls] = -1
    seniority = rng.integers(0, 10, n, dtype=np.int64)
    seniority_nulls = rng.random(n, dtype=np.float32) < 0.05
    people = Table(
        np.arange(1, n + 1, dtype=np.int64),
        {
            "region": Column(FieldType.STRING, region, region_nulls, REGIONS),
            "seniority": Column(FieldType.INT, seniority, seniority_nulls),
        },
    )
    sector = rng.integers(0, len(SECTORS), publications, dtype=np.int32)
    pubs = Table(
        np.arange(1, publications + 1, dtype=np.int64),
        {"sector": Column(FieldType.STRING, sector, None, SECTORS)},
    )
    # One year of reads, evenly spread and ascending in time: one sorted segment.
    hi = micros(AS_OF)
    lo = hi - 365 * DAY_US
    at = np.arange(reads, dtype=np.int64)
    at *= (hi - lo) // max(reads, 1)
    at += lo + 1
    rows = rng.integers(0, n, reads, dtype=np.int32)
    rows[::2] //= 20  # half the reads by the first 5% of contacts: heavy readers
    pub_rows = rng.integers(0, publications, reads, dtype=np.int32)
    live = np.ones(reads, dtype=bool)
    dead = rng.integers(0, reads, reads // 1000)
    live[dead] = False
    delta = len(dead)
    base = Events(rows, at, pub_rows, live, sorted=True)
    later = Events(rows[dead].copy(), at[dead].copy(), pub_rows[dead].copy(), None, sorted=False)
    half = BitMap(range(1, n + 1, 2))
    other = BitMap(range(1, n + 1, 3))
    sets = {"a": half, "b": other}
    frame = Frame(people, pubs, (base, later), (), sets.__getitem__)
    raw = {
        "region": region,
        "seniority": seniority,
        "sector": sector,
        "at": at,
        "rows": rows,
        "pubs": pub_rows,
        "sets": sets,
        "delta": delta,
    }
    return frame, raw


def timed(
    plan: Callable[[], Any], anchor: Callable[[], Any], repeat: int
) -> tuple[list[float], list[float], Any, Any]:
    """Both, alternating (the machine is shared: a busy spell hits both alike)."""
    out, ref = plan(), anchor()  # warm: per-dictionary results, page faults
    plan_times, anchor_times = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        out = plan()
        plan_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = anchor()
        anchor_times.append(time.perf_counter() - t)
    return plan_times, anchor_times, out, ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contacts", type=int, default=10_000_000)
    ap.add_argument("--reads", type=int, default=100_000_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--distinct", type=int, default=1_000_000, help="distinct emails")
    args = ap.parse_args()

    t0 = time.perf_counter()
    frame, raw = build(args.contacts, args.reads, args.seed)
    print(
        f"synthetic frame: {args.contacts:,} contacts, {args.reads:,} reads"
        f" (+{raw['delta']:,} in an unsorted segment), built in"
        f" {time.perf_counter() - t0:.1f} s; peak RSS {peak_rss_mib():,.0f} MiB"
    )
    catalog = frame_catalog(frame)
    n = args.contacts
    emea = int(np.flatnonzero(REGIONS == "EMEA")[0])
    energy = int(np.flatnonzero(SECTORS == "Energy")[0])
    hi = micros(AS_OF)
    lo = hi - 90 * DAY_US

    def attribute_anchor() -> Any:
        return (raw["region"] == emea) & (raw["seniority"] >= 3)

    def behavioural_anchor() -> Any:
        a, b = np.searchsorted(raw["at"], [lo, hi], side="right")
        keep = (raw["sector"] == energy)[raw["pubs"][a:b]]
        return np.bincount(raw["rows"][a:b][keep], minlength=n) >= 5

    def persona_anchor() -> Any:
        diff = raw["sets"]["a"] - raw["sets"]["b"]
        mask = np.zeros(n, dtype=bool)
        mask[np.frombuffer(diff.to_array(), dtype=np.uint32).astype(np.int64) - 1] = True
        return mask

    behavioural = 'count(read where sector = "Energy", 90d) >= 5'
    base = frame.reads[0]
    one_segment = replace(frame, reads=(replace(base, live=None),))
    cases = [
        ("attribute", 'region = "EMEA" and seniority >= 3', attribute_anchor, frame),
        ("behavioural", behavioural, behavioural_anchor, frame),
        ("  1 seg, no live", behavioural, behavioural_anchor, one_segment),
        ("persona algebra", 'persona("a") and not persona("b")', persona_anchor, frame),
    ]
    print(
        f"{'case':<16} {'plan best':>10} {'median':>8} {'anchor':>8} {'ratio':>6} {'matches':>11}"
    )
    for name, text, anchor, on in cases:
        t = time.perf_counter()
        plan = compile_columnar(parse(text), catalog)
        compile_ms = (time.perf_counter() - t) * 1000
        plan_times, anchor_times, mask, a_mask = timed(
            lambda plan=plan, on=on: plan(on, AS_OF), anchor, args.repeat
        )
        best, median, a_best = min(plan_times), statistics.median(plan_times), min(anchor_times)
        print(
            f"{name:<16} {best * 1000:>8.1f}ms {median * 1000:>6.1f}ms {a_best * 1000:>6.1f}ms"
            f" {best / a_best:>6.2f} {int(mask.sum()):>11,}   (compile {compile_ms:.2f} ms;"
            f" anchor matches {int(a_mask.sum()):,})"
        )
    # A string predicate runs once per distinct value, in Python: the first
    # evaluation over a large dictionary pays for it, later ones reuse it.
    distinct = args.distinct
    emails = np.array([f"reader{i}@firm{i % 5000}.example" for i in range(distinct)], dtype=object)
    codes = np.random.default_rng(args.seed).integers(0, distinct, n, dtype=np.int32)
    columns = {**frame.contacts.columns, "email": Column(FieldType.STRING, codes, None, emails)}
    with_email = replace(frame, contacts=Table(frame.contacts.pk, columns))
    for text in ('email ilike "%@FIRM1%"', 'email starts_with "reader1"'):
        plan = compile_columnar(parse(text), frame_catalog(with_email))
        t = time.perf_counter()
        plan(with_email, AS_OF)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        plan(with_email, AS_OF)
        warm = time.perf_counter() - t
        print(
            f"{text} over {distinct:,} distinct values: first {cold * 1000:,.0f} ms,"
            f" then {warm * 1000:,.1f} ms"
        )
    print(f"peak RSS at the end: {peak_rss_mib():,.0f} MiB")


if __name__ == "__main__":
    main()
