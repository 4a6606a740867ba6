"""Feed model vs baselines at persona share 0.2 / 0.5 / 0.8, plus serving timings.

    .venv/bin/python bench/feed.py [--contacts 200000] [--weeks 8] [--seed 2]

Generates one SQLite store per persona share (in a temporary directory), tags
the evaluation personas, runs the rolling weekly evaluation and prints the
Markdown tables docs/feed.md quotes; then times `recommend` (p50/p99) and
`recommend_many` on the middle store's last model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from personatag.config import Settings
from personatag.generate import generate
from personatag.recommend import FeedModel
from personatag.recommend.evaluate import END, evaluate, format_table, tag_personas
from personatag.store import open_store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contacts", type=int, default=200_000)
    ap.add_argument("--weeks", type=int, default=8)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--shares", default="0.2,0.5,0.8")
    ap.add_argument(
        "--reports", type=int, help="publications over the year (default: the generator's)"
    )
    ap.add_argument("--json", type=Path, help="also write the summaries here")
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory(prefix="feed-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp))
        middle = None
        for share in (float(s) for s in args.shares.split(",")):
            st = open_store(f"sqlite:///{Path(tmp) / f'{share}.db'}", create=True)
            t0 = time.monotonic()
            gen = generate(
                st,
                contacts=args.contacts,
                seed=args.seed,
                end=END,
                persona_share=share,
                reports=args.reports,
            )
            tag_personas(st, settings)
            t1 = time.monotonic()
            summary = evaluate(
                st, weeks=args.weeks, settings=settings, samples=args.samples, seed=args.seed
            )
            t2 = time.monotonic()
            out[share] = summary
            print(f"\n### persona share {share}\n")
            print(
                f"{gen.contacts:,} contacts, {gen.publications:,} reports, {gen.reads:,} reads; "
                f"{summary['units']:,} (contact, week) pairs from {summary['contacts']:,} "
                f"contacts ({summary['new_contact_units']:,} new-contact, "
                f"{summary['new_report_units']:,} new-report); generate+tag {t1 - t0:.0f} s, "
                f"evaluate {t2 - t1:.0f} s\n"
            )
            print(format_table(summary), flush=True)
            if share == 0.5:
                middle = st
            else:
                st.dispose()
        if middle is not None:
            timings(middle, settings, args.contacts)
            middle.dispose()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


def timings(st, settings: Settings, n: int) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    model = FeedModel.build(st, END, settings)
    build = time.monotonic() - t0
    rng = np.random.default_rng(0)
    pks = rng.integers(1, n + 1, 2000).tolist()
    model.recommend(pks[0])
    lat = []
    for pk in pks:
        t = time.perf_counter()
        model.recommend(pk)
        lat.append(time.perf_counter() - t)
    many = list(range(1, min(n, 50_000) + 1))
    t = time.perf_counter()
    model.recommend_many(many)
    secs = time.perf_counter() - t
    print(f"\n### serving ({n:,} contacts, {model.snap.n_pubs} reports)\n")
    print(f"- build: {build:.1f} s")
    print(
        f"- recommend: p50 {np.percentile(lat, 50) * 1e3:.2f} ms, "
        f"p99 {np.percentile(lat, 99) * 1e3:.2f} ms over {len(pks):,} contacts"
    )
    print(
        f"- recommend_many: {len(many) / secs:,.0f} contacts/s "
        f"({len(many):,} in {secs:.1f} s; 1M extrapolated: {1e6 / (len(many) / secs):.0f} s)"
    )


if __name__ == "__main__":
    main()
