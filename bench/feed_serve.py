"""Serving the feed: one contact's feed under load, and every contact's feed at once.

    .venv/bin/python bench/feed_serve.py --contacts 1000000 [--keep | --reuse DIR]

A fresh SQLite store with --contacts generated contacts (about 10k reports,
10M reads at 1M), a few personas tagged by ad hoc criteria and a few content
rules (a boost, a filter, a cap). Then:

(a) in-process: FeedModel.build, and `recommend` for random contacts, p50/p99;
(b) `personatag serve` (no dispatcher) on a free loopback port and an open-loop
    load generator (bench/api.py's): GET /api/v1/contacts/{id}/feed for random
    contacts at each --rates value for --seconds, latency from the scheduled
    send time — goal p99 < 50 ms;
(c) `recommend_all` (recommend_many in one forked process per CPU) over every
    contact (or --precompute-sample contacts, extrapolated, said so in the
    output) — goal < 5 min for 1M.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

from personatag import accounts
from personatag.config import load_settings
from personatag.definitions.personas import add_persona
from personatag.domain import Action
from personatag.generate import generate
from personatag.store import Store, open_store
from personatag.tagging.adhoc import AdhocRequest, run_adhoc

# The open-loop load generator and helpers of the API bench (same folder).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from api import finish, free_port, load, report, start_serve

FEED = "/api/v1/contacts/{id}/feed"
TIMEOUT = 60.0

PERSONAS = {
    # key: (name, ad hoc criterion)
    "corp-treasurers": ("Corporate Treasurers", 'job_title ilike "%treasurer%"'),
    "energy-readers": ("Energy readers", 'count(read where sector = "Energy", 90d) >= 2'),
    "emea-senior": ("EMEA senior", 'region = "EMEA" and seniority >= 4'),
}


def prepare(store: Store, contacts: int) -> None:
    settings = load_settings()
    t0 = time.perf_counter()
    result = generate(store, contacts=contacts, seed=1)
    print(
        f"generated {result.contacts:,} contacts, {result.publications:,} publications, "
        f"{result.reads:,} reads in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    for key, (name, expr) in PERSONAS.items():
        add_persona(store, key, name=name, category="bench")
        t0 = time.perf_counter()
        request = AdhocRequest(persona=key, action=Action.TAG, expr=expr, actor="bench")
        run_adhoc(store, request, settings)
        print(f"tagged {key} in {time.perf_counter() - t0:.1f} s", flush=True)
    accounts.create_user(store, "bench", "Bench-password-1", "viewer", actor="bench")


def top_up_publications(store: Store, target: int) -> int:
    """Add synthetic reports (no reads) until there are `target`: generate makes
    about one per 1,000 contacts, the goal is stated for 10k. The new ones copy
    the series, sector, asset class and region of existing ones, published
    evenly over the year before the newest. Returns how many were added."""
    from datetime import timedelta

    from personatag.store import versions

    p = store.tables.publications
    with store.read() as conn:
        existing = [dict(r._mapping) for r in conn.execute(select(p).order_by(p.c.pk))]
    missing = target - len(existing)
    if missing <= 0 or not existing:
        return 0
    newest = max(r["published_at"] for r in existing if r["published_at"] is not None)
    rng = random.Random(5)
    rows = []
    for n in range(missing):
        src = existing[n % len(existing)]
        at = newest - timedelta(seconds=rng.uniform(0, 365 * 86400))
        rows.append(
            {
                "id": f"pb{n:06d}",
                "title": f"{src['series']}: note {n}",
                "published_at": at,
                "asset_class": src["asset_class"],
                "sector": src["sector"],
                "region": src["region"],
                "series": src["series"],
            }
        )
    with store.write() as conn:
        conn.execute(p.insert(), rows)
        versions.bump(conn, store.tables, ["publications"])
    return missing


def add_rules(store: Store) -> None:
    from personatag.recommend.rules import add_rule, list_rules

    if list_rules(store, "corp-treasurers"):
        return
    add_rule(store, "corp-treasurers", "boost", expr='asset_class = "Rates"', weight=2.0, actor="b")
    add_rule(store, "energy-readers", "boost", expr='sector = "Energy"', weight=1.5, actor="b")
    add_rule(store, "emea-senior", "filter", expr='region != "APAC"', actor="b")
    add_rule(store, "emea-senior", "cap", cap=2, actor="b")


def in_process(store: Store, contacts: int, samples: int, precompute_sample: int | None) -> None:
    from personatag.domain import utcnow
    from personatag.recommend.model import FeedModel
    from personatag.recommend.rules import rules_for_model

    as_of = utcnow()
    t0 = time.perf_counter()
    model = FeedModel.build(store, as_of)
    print(f"FeedModel.build: {time.perf_counter() - t0:.1f} s", flush=True)
    rules = rules_for_model(store, as_of)
    with store.read() as conn:
        pks = list(conn.scalars(select(store.tables.contacts.c.pk)))
    rng = random.Random(7)
    ms = []
    for pk in rng.sample(pks, min(samples, len(pks))):
        t1 = time.perf_counter()
        model.recommend(pk, 10, as_of=as_of, rules=rules)
        ms.append((time.perf_counter() - t1) * 1000)
    report("in-process recommend(k=10)", ms)
    if precompute_sample and precompute_sample < len(pks):
        chosen = rng.sample(pks, precompute_sample)
        t1 = time.perf_counter()
        model.recommend_all(chosen, 10, as_of=as_of, rules=rules)
        took = time.perf_counter() - t1
        total = took * len(pks) / len(chosen)
        print(
            f"recommend_all (one process per CPU) over a sample of {len(chosen):,} contacts: "
            f"{took:.1f} s, "
            f"EXTRAPOLATED to all {len(pks):,}: {total:.0f} s "
            f"(goal < 300 s: {'met' if total < 300 else 'NOT met'})",
            flush=True,
        )
    else:
        t1 = time.perf_counter()
        feeds = model.recommend_all(pks, 10, as_of=as_of, rules=rules)
        took = time.perf_counter() - t1
        print(
            f"recommend_all (one process per CPU) over all {len(feeds):,} contacts: {took:.1f} s "
            f"(goal < 300 s: {'met' if took < 300 else 'NOT met'})",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contacts", type=int, default=1_000_000)
    ap.add_argument("--rates", default="50,100", help="comma-separated requests/s")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--samples", type=int, default=2000, help="in-process recommend calls")
    ap.add_argument(
        "--precompute-sample",
        type=int,
        default=None,
        help="time recommend_all over this many contacts and extrapolate (default: all)",
    )
    ap.add_argument(
        "--publications", type=int, default=10_000, help="top the catalogue up to this many"
    )
    ap.add_argument("--prepare-only", action="store_true", help="generate and tag, then stop")
    ap.add_argument("--skip-in-process", action="store_true")
    ap.add_argument(
        "--reuse", type=Path, help="a data dir an earlier run left (--keep): skip generating"
    )
    ap.add_argument("--keep", action="store_true", help="keep the data dir for --reuse")
    args = ap.parse_args()

    workdir = args.reuse or Path(tempfile.mkdtemp(prefix="pt-bench-feed-"))
    os.environ["PERSONATAG_DATA_DIR"] = str(workdir)
    settings = load_settings()
    store = open_store(settings.resolved_store_url, create=True)
    try:
        with store.read() as conn:
            empty = not conn.scalar(select(func.count()).select_from(store.tables.contacts))
        if empty:  # a new dir, or --reuse of one an earlier --prepare-only run did not fill
            prepare(store, args.contacts)
        added = top_up_publications(store, args.publications)
        if added:
            print(f"added {added:,} synthetic reports without reads (to {args.publications:,})")
        with store.read() as conn:
            n_pubs = conn.scalar(select(func.count()).select_from(store.tables.publications))
            n_contacts = conn.scalar(select(func.count()).select_from(store.tables.contacts))
        print(f"store: {n_contacts:,} contacts, {n_pubs:,} publications", flush=True)
        if args.prepare_only:
            return
        add_rules(store)
        if not args.skip_in_process:
            in_process(store, int(n_contacts or 0), args.samples, args.precompute_sample)
        token, _ = accounts.create_token(store, "bench", f"bench-{time.time_ns()}", actor="bench")
    finally:
        store.dispose()
        if args.prepare_only and args.keep:
            print(f"kept {workdir} (--reuse {workdir})")
    ids = [f"c{i:08d}" for i in random.Random(3).sample(range(1, args.contacts + 1), 5000)]

    port = free_port()
    server = start_serve(port)
    try:
        # The first request builds the server's model; time it on its own.
        t0 = time.perf_counter()
        load(port, token, ids[:1], 1.0, 1.0, path=FEED, timeout=TIMEOUT)
        print(f"first feed request (builds the model): {time.perf_counter() - t0:.1f} s")
        for rate in [float(r) for r in args.rates.split(",")]:
            load(port, token, ids, rate, 2.0, path=FEED, timeout=TIMEOUT)  # warm up
            lat = load(port, token, ids, rate, args.seconds, path=FEED, timeout=TIMEOUT)
            report(
                f"GET /contacts/{{id}}/feed at {rate:.0f} req/s for {args.seconds:.0f} s",
                [x * 1000 for x in lat],
                goal=50,
            )
    finally:
        finish(server, workdir, args.reuse, args.keep)


if __name__ == "__main__":
    main()
