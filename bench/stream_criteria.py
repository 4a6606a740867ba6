"""The embedded stream processor at 10, 100, 1,000 and 10,000 ongoing criteria.

    .venv/bin/python bench/stream_criteria.py [--criteria 10,100,1000,10000]
        [--mix realistic] [--contacts 1000000] [--rate 2000] [--seconds 30]
        [--preload 50000] [--base DIR] [--json]

Runs `bench/stream.py` once per criteria count, each on its own copy of one
generated store (generated once into --base, default a folder under the temp
directory, and kept there for later runs), so every count starts from the same
contacts and an empty feed. Prints, per count: changes/s on a backlog,
changes/s processed and the p50/p99 change-to-membership latency at the
offered rate, and the write floor (see bench/stream.py); with --json, one JSON
list of the runs' objects instead.

A count whose run fails is reported as failed with the end of its output, and
the others still run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def base_store(base: Path, contacts: int) -> Path:
    """A generated store with `contacts` contacts and no criteria, made once."""
    db = base / f"store-{contacts}.db"
    if db.exists():
        return db
    base.mkdir(parents=True, exist_ok=True)
    from personatag.generate.run import generate
    from personatag.store import open_store

    part = base / f"store-{contacts}.db.part"
    for leftover in base.glob(f"{part.name}*"):
        leftover.unlink()
    store = open_store(f"sqlite:///{part}", create=True)
    print(f"generating {contacts:,} contacts into {part} ...", file=sys.stderr, flush=True)
    generate(store, contacts=contacts, seed=1)
    store.dispose()
    with sqlite3.connect(part) as conn:  # one file: the copies need no WAL beside them
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
    part.rename(db)
    return db


def run_one(db: Path, k: int, args: argparse.Namespace) -> dict[str, Any]:
    """bench/stream.py with `k` criteria on a copy of the base store."""
    work = Path(tempfile.mkdtemp(prefix=f"pt-bench-stream-{k}-"))
    try:
        shutil.copyfile(db, work / "store.db")
        cmd = [
            sys.executable,
            str(HERE / "stream.py"),
            "--mix",
            args.mix,
            "--contacts",
            str(args.contacts),
            "--criteria",
            str(k),
            "--rate",
            str(args.rate),
            "--seconds",
            str(args.seconds),
            "--preload",
            str(args.preload),
            "--reuse",
            str(work),
            "--json",
        ]
        print(f"--- {k:,} criteria", file=sys.stderr, flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        sys.stderr.write(proc.stderr)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            return {"criteria": k, "failed": f"exit {proc.returncode}: {tail}"}
        result: dict[str, Any] = json.loads(proc.stdout)
        result["run_s"] = round(time.perf_counter() - start, 1)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| criteria | backlog changes/s | offered/s | processed/s | p50 ms | p99 ms "
        "| write floor changes/s |\n|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['criteria']:,} | failed: {r['failed'].splitlines()[0]} ||||||")
            continue
        lines.append(
            f"| {r['criteria']:,} | {r['backlog_changes_per_s']:,.0f} | {r['offered_per_s']:,.0f} "
            f"| {r['sustained_processed_per_s']:,.0f} | {r['sustained_p50_ms']:,.0f} "
            f"| {r['sustained_p99_ms']:,.0f} | {r['write_floor_changes_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--criteria", default="10,100,1000,10000")
    ap.add_argument("--mix", default="realistic")
    ap.add_argument("--contacts", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--preload", type=int, default=50_000)
    default_base = Path(tempfile.gettempdir()) / "pt-bench-stream-base"
    ap.add_argument("--base", type=Path, default=default_base)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        counts = [int(x) for x in args.criteria.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--criteria takes counts separated by commas, not {args.criteria!r}")
    if not counts or min(counts) < 1:
        ap.error("--criteria needs at least one count, each at least 1")
    db = base_store(args.base, args.contacts)
    rows = [run_one(db, k, args) for k in counts]
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
    else:
        print(
            f"\n{args.mix} mix, {args.contacts:,} contacts, {args.rate:,.0f} changes/s offered "
            f"for {args.seconds:g} s (goal: >= 20,000 changes/s on a backlog, p99 <= 250 ms)"
        )
        print(table(rows))


if __name__ == "__main__":
    main()
