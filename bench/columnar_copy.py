"""The columnar copy: build time and size beside the store, a new process's
open time, catch-up after N single-contact changes, peak RSS.

    python bench/columnar_copy.py DATA_DIR [--changes 100000] [--fields seniority]

DATA_DIR holds a generated store (`personatag generate`); the changes are
written into it (use a scratch copy). Each change names `--fields` (per-field
catch-up), or no fields with `--fields ''` (whole rows, reads and logins
re-read, as after `generate`).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import text

from personatag.config import Settings
from personatag.engines.columnar import copy
from personatag.store import open_store

OPEN = (
    "import time, sys; t = time.perf_counter();"
    "from personatag.config import Settings; from personatag.store import open_store;"
    "from personatag.engines.columnar.copy import open_frame;"
    "s = Settings(data_dir=sys.argv[1]); f = open_frame(open_store(s.resolved_store_url), s);"
    "print(time.perf_counter() - t)"
)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--changes", type=int, default=100_000)
    ap.add_argument("--fields", default="seniority")
    args = ap.parse_args()
    s = Settings(data_dir=args.data_dir)
    store = open_store(s.resolved_store_url)
    folder = copy.folder_of(s, store)
    t = time.perf_counter()
    with copy.writing(folder):
        copy.build(store, folder)
    print(f"build {time.perf_counter() - t:.1f} s, peak RSS so far {peak_mib():.0f} MiB")
    store_bytes = sum(
        size(p) if p.is_dir() else p.stat().st_size for p in args.data_dir.glob("store.db*")
    )
    print(f"size {size(folder) / 2**20:.0f} MiB (store {store_bytes / 2**20:.0f} MiB)")
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", OPEN, str(args.data_dir)], capture_output=True, text=True
    )
    print(f"new process: open {float(out.stdout):.3f} s, process {time.perf_counter() - t:.2f} s")
    copy.open_frame(store, s)
    with store.write() as conn:  # N single-contact changes, one feed row each
        n = args.changes
        conn.execute(
            text("UPDATE contacts SET seniority = coalesce(seniority, 0) + 1 WHERE pk <= :n"),
            {"n": n},
        )
        conn.execute(
            text(
                "INSERT INTO changes (at, kind, contact_pk, n, fields)"
                " SELECT 0, 'contact', pk, 1, :fields FROM contacts WHERE pk <= :n"
            ),
            {"n": n, "fields": args.fields or None},
        )
    t = time.perf_counter()
    frame = copy.open_frame(store, s)
    what = f"naming {args.fields!r}" if args.fields else "naming no fields"
    took = time.perf_counter() - t
    print(f"catch-up after {n:,} changes {what}: {took:.2f} s (offset {frame.offset})")
    print(f"peak RSS {peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
