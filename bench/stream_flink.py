"""Flink stream engine: sustained attribute changes, flink vs the embedded processor.

    PERSONATAG_DATA_DIR=/tmp/fs-flink PERSONATAG_FLINK_REST_PORT=18091 \\
        .venv/bin/personatag flink start        # or any cluster: --flink-url
    .venv/bin/python bench/stream_flink.py --flink-url http://127.0.0.1:18091

Two identical SQLite stores with --contacts contacts and --criteria ongoing
attribute criteria (region / seniority / job title), each followed by a stream
processor running in a thread (`run`): the embedded one and FlinkStream. A
writer sends --changes `set_contact` changes (seniority or region of a random
contact) at --rate changes/s (0: as fast as it can), the same script to each
store in turn. A monitor polls the processor's stored offset every 5 ms: a
change's latency is from its commit to the commit of the batch that applied it.

Prints, per engine, changes/s (from the first change written to the last one
applied) and p50/p99 latency, the flink/embedded ratios, and checks both
stores ended with the same memberships. Takes 2-4 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from personatag.config import Settings
from personatag.contacts import set_contact
from personatag.definitions.criteria import add_criterion
from personatag.definitions.personas import add_persona
from personatag.engines.flink.stream import FlinkStream
from personatag.engines.local.stream.processor import StreamProcessor
from personatag.store import Store, changefeed, open_store

REGIONS = ["EMEA", "AMER", "APAC", "LATAM"]
TITLES = ["CIO", "Chief Investment Officer", "Credit Analyst", "Treasurer", "Economist"]


def fill(store: Store, n: int, criteria: int) -> None:
    rng = random.Random(1)
    rows = [
        {
            "id": f"c{i:06d}",
            "region": rng.choice(REGIONS),
            "job_title": rng.choice(TITLES),
            "seniority": rng.randrange(10),
        }
        for i in range(n)
    ]
    with store.write() as conn:
        conn.execute(store.tables.contacts.insert(), rows)
    for i in range(criteria):
        key = f"p{i:02d}"
        add_persona(store, key, name=key, category="bench")
        if i % 5 == 4:
            word = TITLES[i % len(TITLES)][:4].lower()
            expr = f'job_title ilike "%{word}%" and seniority >= {i % 10}'
        else:
            expr = f'region = "{REGIONS[i % len(REGIONS)]}" and seniority >= {i % 10}'
        add_criterion(
            store, f"c{i:02d}", persona=key, expr=expr, mode="ongoing", exit_policy="remove"
        )
    store.analyze()


def script(n: int, contacts: int) -> list[tuple[str, dict[str, str]]]:
    rng = random.Random(2)
    out = []
    for _ in range(n):
        cid = f"c{rng.randrange(contacts):06d}"
        if rng.random() < 0.5:
            out.append((cid, {"seniority": str(rng.randrange(10))}))
        else:
            out.append((cid, {"region": rng.choice(REGIONS)}))
    return out


def offset(store: Store) -> int:
    with store.read() as conn:
        return changefeed.get_offset(conn, store, "stream")


def head(store: Store) -> int:
    with store.read() as conn:
        return changefeed.head(conn, store)


def backlog(store: Store, processor: StreamProcessor, changes: list[Any], label: str) -> float:
    """changes/s catching up on `changes` written while the processor was idle."""
    for cid, values in changes:
        set_contact(store, cid, values)
    t0 = time.perf_counter()
    done = processor.catch_up(timeout_s=600)
    elapsed = time.perf_counter() - t0
    print(
        f"{label:>9}: backlog of {done.changes} changes caught up in {elapsed:.2f} s "
        f"= {done.changes / elapsed:.0f}/s",
        flush=True,
    )
    return done.changes / elapsed


def sustained(
    store: Store, processor: StreamProcessor, changes: list[Any], rate: float, label: str
) -> dict[str, float]:
    """p50/p99 latency of changes written at `rate` while the processor runs."""
    stop = threading.Event()
    worker = threading.Thread(target=processor.run, args=(stop,), daemon=True)
    worker.start()
    written: dict[int, float] = {}  # feed seq -> wall time of its commit
    applied: dict[int, float] = {}  # feed seq -> wall time its batch was seen applied
    done = threading.Event()

    def monitor() -> None:
        seen = offset(store)
        while not done.is_set():
            now = time.perf_counter()
            at = offset(store)
            for seq in range(seen + 1, at + 1):
                applied[seq] = now
            seen = at
            time.sleep(0.005)

    mon = threading.Thread(target=monitor, daemon=True)
    mon.start()
    start = time.perf_counter()
    for i, (cid, values) in enumerate(changes):
        if rate > 0:
            lag = start + i / rate - time.perf_counter()
            if lag > 0:
                time.sleep(lag)
        set_contact(store, cid, values)
        written[head(store)] = time.perf_counter()
    last = head(store)
    while offset(store) < last:
        time.sleep(0.01)
    time.sleep(0.02)
    done.set()
    mon.join()
    stop.set()
    worker.join(120)
    lat = sorted(applied[s] - t for s, t in written.items() if s in applied)
    elapsed = max(applied[s] for s in written) - start
    q = statistics.quantiles(lat, n=100)
    out = {"changes_s": len(written) / elapsed, "p50": q[49], "p99": q[98]}
    print(
        f"{label:>9}: {len(written)} changes at {rate:g}/s in {elapsed:.1f} s "
        f"({out['changes_s']:.0f}/s), latency p50 {out['p50'] * 1000:.0f} ms, "
        f"p99 {out['p99'] * 1000:.0f} ms",
        flush=True,
    )
    return out


def measure(
    store: Store, processor: StreamProcessor, changes: list[Any], rate: float, label: str
) -> dict[str, float]:
    processor.catch_up(timeout_s=600)  # backfills
    # Warm up: one change through (starts the Flink job and its first generation).
    set_contact(store, changes[0][0], changes[0][1])
    processor.catch_up(timeout_s=600)
    half = len(changes) // 2
    caught_up = backlog(store, processor, changes[1:half], label)
    # Last: `run` cancels the Flink job when it stops.
    out = sustained(store, processor, changes[half:], rate, label)
    out["backlog_s"] = caught_up
    return out


def memberships(store: Store) -> set[tuple[int, int]]:
    m = store.tables.memberships
    with store.read() as conn:
        return {(int(a), int(b)) for a, b in conn.execute(select(m.c.persona_pk, m.c.contact_pk))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contacts", type=int, default=20_000)
    ap.add_argument("--criteria", type=int, default=50)
    ap.add_argument("--changes", type=int, default=3_000)
    ap.add_argument("--rate", type=float, default=200.0, help="changes/s (0: unpaced)")
    ap.add_argument("--flink-url", default=None)
    ap.add_argument("--flink-python", default=str(Path(".venv-flink/bin/python").absolute()))
    ap.add_argument("--checkpoint-s", type=float, default=1.0)
    ap.add_argument("--parallelism", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    changes = script(args.changes + 1, args.contacts)
    with tempfile.TemporaryDirectory(prefix="pt-bench-stream-") as tmp:
        results = {}
        for label in ("embedded", "flink"):
            data = Path(tmp) / label
            data.mkdir()
            settings = Settings(
                data_dir=data,
                stream_reconcile_s=0,
                flink_url=args.flink_url,
                flink_python=Path(args.flink_python),
                flink_parallelism=args.parallelism,
                stream_flink_checkpoint_s=args.checkpoint_s,
            )
            store = open_store(settings.resolved_store_url, create=True)
            t0 = time.perf_counter()
            fill(store, args.contacts, args.criteria)
            print(f"{label:>9}: store filled in {time.perf_counter() - t0:.1f} s", flush=True)
            if label == "flink":
                proc: StreamProcessor = FlinkStream(store, settings)
            else:
                proc = StreamProcessor(store, settings)
            try:
                results[label] = measure(store, proc, changes, args.rate, label)
            finally:
                if isinstance(proc, FlinkStream):
                    proc.close()
            results[label + "_members"] = memberships(store)  # type: ignore[assignment]
            store.dispose()
        e, f = results["embedded"], results["flink"]
        print(
            f"flink/embedded: backlog throughput {f['backlog_s'] / e['backlog_s']:.2f}x, "
            f"sustained p50 latency {f['p50'] / e['p50']:.1f}x, "
            f"p99 latency {f['p99'] / e['p99']:.1f}x"
        )
        same = results["embedded_members"] == results["flink_members"]
        print(f"same memberships: {same}")
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
