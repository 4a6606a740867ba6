"""DuckDB file vs memory-mapped .npy for the columnar copy's reads: the
behavioural count `count(read where sector = "Energy", 90d) >= 5` from files
on disk, opened by a fresh process (time to first answer, then steady state).

    PERSONATAG_DATA_DIR=/work/data/big/10m .venv/bin/python bench/copy_format.py \\
        --dir /work/data/big/10m-formats            # exports once, then measures

The export (skipped when --dir holds it) reads every read and publication
from the SQLite store and writes: reads as .npy (contact row int32, read_at
int64 µs, publication row int32) in the store's order (by contact, then time)
and sorted by time; the publications' sector codes; and one DuckDB file with
the reads (sorted by time) and the publications. Then, per format, a new
Python process opens the files and answers the count (join the reads to the
publications by sector, keep as_of - 90d < read_at <= as_of, count per
contact, keep >= 5), --repeats more times for the steady state. The page
cache is warm (the files were just written or read); the counts must agree
with each other and with the same count in SQLite.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

START = time.time()
DAY_US = 86_400_000_000
FORMATS = ("npy-time", "npy-contact", "duckdb")


def export(db: Path, out: Path) -> None:
    from arrays import contact_columns, reads  # bench/arrays.py, beside this script

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pk, _, _ = contact_columns(db)
    r = reads(db, pk)
    took = time.perf_counter() - t0
    print(f"read {len(r['at']):,} reads from SQLite in {took:.0f} s", flush=True)
    sector = r["pub_sector"]
    np.save(out / "pub_sector.npy", sector.codes)
    (out / "meta.json").write_text(json.dumps({"sectors": sector.dictionary, "contacts": len(pk)}))
    t0 = time.perf_counter()
    for name in ("row", "at", "pub"):
        np.save(out / f"contact_{name}.npy", r[name])
    order = np.argsort(r["at"], kind="stable")
    for name in ("row", "at", "pub"):
        r[name] = r[name][order]
        np.save(out / f"time_{name}.npy", r[name])
    del order
    print(f"wrote the .npy files in {time.perf_counter() - t0:.0f} s", flush=True)
    import duckdb

    t0 = time.perf_counter()
    path = out / "reads.duckdb"
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    con.execute("SET threads = 2")
    reads_t = {"row": r["row"], "at": r["at"], "pub": r["pub"]}  # noqa: F841 - read by DuckDB
    pubs_t = {  # noqa: F841 - read by DuckDB
        "row": np.arange(len(sector.codes), dtype=np.int32),
        "sector": np.array([*sector.dictionary, None], dtype=object)[sector.codes],
    }
    con.execute("CREATE TABLE reads AS SELECT * FROM reads_t")
    con.execute("CREATE TABLE pubs AS SELECT * FROM pubs_t")
    con.close()
    print(f"wrote the DuckDB file in {time.perf_counter() - t0:.0f} s", flush=True)


def answer(fmt: str, folder: Path, as_of: int, days: int) -> int:
    """One evaluation of the behavioural count (opening the files is part of the
    first one; numpy's mmap pages stay mapped afterwards)."""
    lo, hi = as_of - days * DAY_US, as_of
    if fmt == "duckdb":
        return DUCK.execute(  # type: ignore[no-any-return]
            "SELECT count(*) FROM (SELECT r.row FROM reads r JOIN pubs p ON r.pub = p.row "
            "WHERE p.sector = 'Energy' AND r.at > ? AND r.at <= ? "
            "GROUP BY r.row HAVING count(*) >= 5)",
            [lo, hi],
        ).fetchone()[0]
    meta = META
    energy = np.load(folder / "pub_sector.npy") == meta["sectors"].index("Energy")
    layout = "time" if fmt == "npy-time" else "contact"
    row, at, pub = (
        np.load(folder / f"{layout}_{n}.npy", mmap_mode="r") for n in ("row", "at", "pub")
    )
    if layout == "time":
        a, b = np.searchsorted(at, [lo, hi], side="right")
        keep = energy[pub[a:b]]
        rows = row[a:b][keep]
    else:
        keep = (at > lo) & (at <= hi)
        keep &= energy[pub]
        rows = row[keep]
    counts = np.bincount(rows, minlength=meta["contacts"])
    return int(np.count_nonzero(counts >= 5))


DUCK: Any = None
META: Any = None


def child(fmt: str, folder: Path, as_of: int, days: int, repeats: int) -> None:
    global DUCK, META
    t_import = time.time()
    META = json.loads((folder / "meta.json").read_text())
    if fmt == "duckdb":
        import duckdb

        DUCK = duckdb.connect(str(folder / "reads.duckdb"), read_only=True)
        DUCK.execute("SET threads = 2")
    t_open = time.time()
    count = answer(fmt, folder, as_of, days)
    t_first = time.time()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        answer(fmt, folder, as_of, days)
        times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "format": fmt,
                "count": count,
                "started": START,
                "imported": t_import,
                "opened": t_open,
                "first": t_first,
                "first_eval_s": t_first - t_open,
                "steady_best_s": min(times),
                "steady_median_s": sorted(times)[len(times) // 2],
                "rss_mib": peak_rss() / 2**20,
            }
        )
    )


def peak_rss() -> int:
    """This process's peak RSS in bytes since its exec (VmHWM; getrusage would
    count the parent's memory at the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def sqlite_count(db: Path, as_of: int, days: int) -> tuple[int, float]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.execute("PRAGMA cache_size=-262144")
    sql = (
        "SELECT count(*) FROM (SELECT r.contact_pk FROM publications p JOIN reads r "
        "ON r.publication_pk = p.pk WHERE p.sector = 'Energy' "
        "AND r.read_at > ? AND r.read_at <= ? GROUP BY r.contact_pk HAVING count(*) >= 5)"
    )
    t0 = time.perf_counter()
    n = con.execute(sql, (as_of - days * DAY_US, as_of)).fetchone()[0]
    return int(n), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True, help="where the exported files are")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--as-of", type=int, help="µs since the epoch (default: now)")
    ap.add_argument("--runs", type=int, default=2, help="fresh processes per format")
    ap.add_argument("--child", choices=FORMATS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    as_of = args.as_of or int(datetime.now(UTC).timestamp() * 1_000_000)
    if args.child:
        child(args.child, args.dir, as_of, args.days, args.repeats)
        return
    from personatag.config import load_settings

    db = load_settings().data_dir.resolve() / "store.db"
    if not (args.dir / "reads.duckdb").exists():
        export(db, args.dir)
    sizes = {
        "npy (one layout)": sum(p.stat().st_size for p in args.dir.glob("time_*.npy")),
        "duckdb": (args.dir / "reads.duckdb").stat().st_size,
        "sqlite store": sum(p.stat().st_size for p in db.parent.glob("store.db*")),
    }
    print("sizes: " + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in sizes.items()))
    as_of_text = datetime.fromtimestamp(as_of / 1e6, UTC).isoformat(timespec="seconds")
    print(f"as of {as_of_text}, window {args.days} days", flush=True)
    counts = set()
    for fmt in FORMATS:
        for _ in range(args.runs):
            t0 = time.time()
            cmd = [sys.executable, __file__, "--dir", str(args.dir), "--child", fmt]
            cmd += ["--as-of", str(as_of), "--days", str(args.days), "--repeats", str(args.repeats)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"{fmt}: {done.stderr[-2000:]}")
            r = json.loads(done.stdout)
            counts.add(r["count"])
            print(
                f"{fmt:12} count {r['count']:,}: first answer {r['first'] - t0:.3f} s after spawn "
                f"(interpreter + imports {r['imported'] - t0:.3f} s, open "
                f"{r['opened'] - r['imported']:.3f} s, "
                f"first evaluation {r['first_eval_s']:.3f} s); "
                f"steady best {r['steady_best_s']:.3f} s, median {r['steady_median_s']:.3f} s; "
                f"peak RSS {r['rss_mib']:,.0f} MiB",
                flush=True,
            )
    n, took = sqlite_count(db, as_of, args.days)
    print(f"SQLite (the store, warm) count {n:,} in {took:.2f} s")
    counts.add(n)
    if len(counts) != 1:
        raise SystemExit(f"the counts differ: {sorted(counts)}")


if __name__ == "__main__":
    main()
