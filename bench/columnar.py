"""The columnar-evaluation figures (issue "Columnar evaluation") in one run:
what the machine can do (anchors) beside what the product does (preview
in-process, through a running API, from a new CLI process).

    PERSONATAG_DATA_DIR=/work/data/big/10m .venv/bin/python bench/columnar.py
    ... bench/columnar.py --engine columnar      # the previews on the columnar engine

Anchors, over the store's own contacts (best of --repeats after one warm-up):
a SQLite full-scan count with 3 predicates; the same count in DuckDB (an
in-memory table loaded from the contacts) and as numpy boolean masks; a packed-
bit AND + popcount and a pyroaring AND of two sets over every contact; a hand-
written `INSERT ... SELECT` of one (persona, contact) pair per contact into a
bare two-column `WITHOUT ROWID` table in the same store (dropped afterwards).

The product: `preview` in-process (best and median), POST /api/v1/preview on a
`personatag serve` (p50/p95 over --api-calls after its feed model is built),
and `personatag preview --json` in new processes (wall time to the answer, peak
RSS). Each figure is printed beside the issue's goal and the issue's own
measurement, and the table is printed again as Markdown at the end.

--engine picks the engine the previews run on. It is passed the way the
product accepts it: an `engine` argument of `tagging.preview.preview`, an
`engine` field of the API's preview request, and a `*engine*` setting for the
processes (PERSONATAG_<SETTING>); where the product has no such way, those
figures print "not available" (the default engine needs none).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import inspect
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from arrays import contact_columns  # bench/arrays.py, beside this script
from personatag import accounts
from personatag.config import Settings, load_settings
from personatag.store import open_store
from personatag.tagging.preview import preview

ATTRIBUTE = 'region = "EMEA" and seniority >= 3'
BEHAVIOURAL = 'count(read where sector = "Energy", 90d) >= 5'
THIRD = ("firm_type", "asset manager")  # the anchors' third predicate
GIB = 1024**3

# The issue's table (10M contacts / ~100M reads, same machine): what it
# measured, and the goals.
ISSUE = {
    "sqlite_count3": 0.34,
    "duckdb_count3": 0.019,
    "numpy_masks3": 0.005,
    "packed_and": 0.0002,
    "insert_select": 2.5,
    "preview_attribute": 0.88,
    "preview_behavioural": 2.6,
    "api_attribute_p95": 1.75,
    "api_behavioural_p95": 3.8,
}
anchor: dict[str, float] = {}  # the anchors measured in this run, by key
GOALS = {
    "api_attribute_p95": 0.100,
    "api_behavioural_p95": 0.300,
    "roaring_and": 0.010,
    "peak_rss": 2 * GIB,
}


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Times of `repeats` calls after one warm-up call, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --- engine selection ------------------------------------------------------


def engine_setting() -> str | None:
    names = [n for n in Settings.model_fields if "engine" in n and n != "stream_engine"]
    preferred = [n for n in names if "preview" in n or "eval" in n]
    return (preferred or names or [None])[0]


class EngineChoice:
    """How the product is told to use `engine`; a reason per path when it cannot be."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        default = engine in ("local", "sql")
        params = inspect.signature(preview).parameters
        self.kwargs: dict[str, Any] | None = (
            {"engine": engine} if "engine" in params else ({} if default else None)
        )
        try:
            from personatag.web.schemas import PreviewRequest

            api_field = "engine" in PreviewRequest.model_fields
        except ImportError:
            api_field = False
        setting = engine_setting()
        self.env: dict[str, str] | None = (
            {f"PERSONATAG_{setting.upper()}": engine} if setting else ({} if default else None)
        )
        self.body: dict[str, Any] | None = (
            {"engine": engine} if api_field else (dict() if self.env is not None else None)
        )

    def missing(self, what: str) -> str:
        return (
            f"{what} on engine {self.engine!r}: not available (the product has no way to pick it)"
        )


# --- anchors ---------------------------------------------------------------


def anchors(db: Path, repeats: int, insert: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    pk, seniority, strings = contact_columns(db)
    n = len(pk)
    print(f"loaded {n:,} contacts' columns into numpy in {time.perf_counter() - t0:.1f} s")
    region, firm = strings["region"], strings[THIRD[0]]
    if THIRD[1] not in firm.dictionary:
        raise SystemExit(f"no contact has {THIRD[0]} = {THIRD[1]!r}: {firm.dictionary[:10]}")
    sql_where = f"region = 'EMEA' AND seniority >= 3 AND {THIRD[0]} = '{THIRD[1]}'"

    con = sqlite3.connect(db)
    con.execute("PRAGMA cache_size=-262144")
    times, count = timed(
        lambda: con.execute(f"SELECT count(*) FROM contacts WHERE {sql_where}").fetchone()[0],
        repeats,
    )
    rows.append(row("sqlite_count3", "SQLite full-scan count, 3 predicates", times, count))

    import duckdb

    # A checkpointed file, not an in-memory table: DuckDB compresses (dictionary-
    # encodes) columns on checkpoint, which is what a copy on disk would get.
    duck_path = db.parent / "bench-contacts.duckdb"
    duck_path.unlink(missing_ok=True)
    duck = duckdb.connect(str(duck_path))
    duck.execute("SET threads = 2")
    contacts_table = {
        "pk": pk,
        "seniority": np.where(seniority < 0, None, seniority),
        "region": np.array([*region.dictionary, None], dtype=object)[region.codes],
        THIRD[0]: np.array([*firm.dictionary, None], dtype=object)[firm.codes],
    }
    t0 = time.perf_counter()
    duck.execute("CREATE TABLE contacts AS SELECT * FROM contacts_table")
    duck.execute("CHECKPOINT")
    print(f"loaded the contacts into DuckDB in {time.perf_counter() - t0:.1f} s")
    del contacts_table
    times, dcount = timed(
        lambda: duck.execute(f"SELECT count(*) FROM contacts WHERE {sql_where}").fetchone()[0],
        repeats,
    )
    rows.append(row("duckdb_count3", "DuckDB count, 3 predicates", times, dcount))
    duck.close()
    duck_path.unlink()

    emea, asset = region.code("EMEA"), firm.code(THIRD[1])
    rc, fc = region.codes, firm.codes

    def masks() -> int:
        return int(np.count_nonzero((rc == emea) & (seniority >= 3) & (fc == asset)))

    times, ncount = timed(masks, repeats)
    rows.append(row("numpy_masks3", "numpy boolean masks, 3 predicates", times, ncount))
    if not count == dcount == ncount:
        raise SystemExit(
            f"3-predicate counts differ: SQLite {count}, DuckDB {dcount}, numpy {ncount}"
        )

    rng = np.random.default_rng(1)
    a_mask, b_mask = rng.random(n) < 0.5, rng.random(n) < 0.5
    a_bits = np.packbits(a_mask).view(np.uint8)
    b_bits = np.packbits(b_mask).view(np.uint8)
    pad = (-len(a_bits)) % 8
    a64 = np.concatenate([a_bits, np.zeros(pad, np.uint8)]).view(np.uint64)
    b64 = np.concatenate([b_bits, np.zeros(pad, np.uint8)]).view(np.uint64)
    times, both = timed(lambda: int(np.bitwise_count(a64 & b64).sum()), repeats)
    rows.append(
        row("packed_and", f"numpy packed-bit AND + popcount, two {n:,}-bit sets", times, both)
    )

    from pyroaring import BitMap

    ra = BitMap(pk[a_mask].astype(np.uint32))
    rb = BitMap(pk[b_mask].astype(np.uint32))
    times, rboth = timed(lambda: len(ra & rb), repeats)
    rows.append(row("roaring_and", "pyroaring AND of two half-population personas", times, rboth))
    everyone = BitMap(pk.astype(np.uint32))
    times, _ = timed(lambda: (len(everyone & ra), len(everyone - rb)), repeats)
    rows.append(
        row("roaring_algebra", f"pyroaring A and B, A not B; A = all {n:,}", times, len(everyone))
    )
    if both != rboth:
        raise SystemExit(f"AND counts differ: packed {both}, roaring {rboth}")

    if insert:
        times = []
        for _ in range(max(1, min(repeats, 2))):
            con.execute("DROP TABLE IF EXISTS bench_pairs")
            con.execute(
                "CREATE TABLE bench_pairs (persona_pk INTEGER NOT NULL, contact_pk INTEGER NOT "
                "NULL, PRIMARY KEY (persona_pk, contact_pk)) WITHOUT ROWID"
            )
            con.commit()
            t0 = time.perf_counter()
            con.execute("INSERT INTO bench_pairs SELECT 1, pk FROM contacts")
            con.commit()
            times.append(time.perf_counter() - t0)
            con.execute("DROP TABLE bench_pairs")
            con.commit()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows.append(
            row("insert_select", f"SQLite INSERT ... SELECT of {n:,} pairs (bare table)", times, n)
        )
    con.close()
    return rows


def row(key: str, what: str, times: list[float], count: Any, **extra: Any) -> dict[str, Any]:
    r = {"key": key, "what": what, "best_s": min(times), "median_s": statistics.median(times)}
    r.update(count=count, **extra)
    return r


# --- the product -----------------------------------------------------------


def in_process(choice: EngineChoice, repeats: int) -> list[dict[str, Any]]:
    if choice.kwargs is None:
        print(choice.missing("preview in-process"))
        return []
    store = open_store(load_settings().resolved_store_url)
    rows = []
    for key, expr in (("preview_attribute", ATTRIBUTE), ("preview_behavioural", BEHAVIOURAL)):
        times, out = timed(lambda e=expr: preview(store, e, **choice.kwargs), repeats)  # type: ignore[misc]
        rows.append(row(key, f"preview in-process: {expr}", times, out["count"]))
        print_row(rows[-1])
    store.dispose()
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(choice: EngineChoice) -> dict[str, str]:
    return {**os.environ, "PERSONATAG_METRICS_PORT": "0", **(choice.env or {})}


def api_token() -> str:
    store = open_store(load_settings().resolved_store_url)
    with contextlib.suppress(Exception):  # the user exists from an earlier run
        accounts.create_user(store, "bench-columnar", "Bench-password-1", "viewer", actor="bench")
    token, _ = accounts.create_token(
        store, "bench-columnar", f"bench-{time.time_ns()}", actor="bench"
    )
    with store.read() as conn:
        contact = conn.exec_driver_sql("SELECT id FROM contacts ORDER BY pk LIMIT 1").scalar()
    store.dispose()
    return f"{token}\n{contact}"


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def through_api(choice: EngineChoice, calls: int, feed_wait: float) -> list[dict[str, Any]]:
    if choice.body is None:
        print(choice.missing("preview through the API"))
        return []
    token, contact = api_token().split("\n")
    port = free_port()
    t0 = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "personatag.cli", "serve", "--port", str(port), "--no-dispatcher"],
        env=env_for(choice),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows: list[dict[str, Any]] = []
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.perf_counter() - t0 > 120:
                    raise SystemExit("serve did not start") from None
                time.sleep(0.1)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        up = time.perf_counter() - t0
        # serve builds its feed model in the background at start: let it finish
        # (up to feed_wait seconds) so it does not share the 2 cores with the
        # previews measured.
        waiter = http.client.HTTPConnection("127.0.0.1", port, timeout=feed_wait)
        try:
            waiter.request("GET", f"/api/v1/contacts/{contact}/feed", headers=auth)
            waiter.getresponse().read()
            ready = f"feed model ready after {time.perf_counter() - t0:.0f} s"
        except TimeoutError:
            ready = f"feed model NOT ready after {feed_wait:.0f} s: previews share the CPU with it"
        waiter.close()
        print(f"serve accepting after {up:.1f} s, {ready}", flush=True)
        for key, expr in (("api_attribute_p95", ATTRIBUTE), ("api_behavioural_p95", BEHAVIOURAL)):
            body = json.dumps({"expr": expr, **choice.body})
            times = []
            for i in range(calls + 1):
                s = time.perf_counter()
                conn.request("POST", "/api/v1/preview", body=body, headers=auth)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    raise SystemExit(f"preview failed: {resp.status} {data[:300]!r}")
                if i:  # the first call warms up
                    times.append(time.perf_counter() - s)
            r = row(
                key,
                f"preview via API p95 ({calls} calls): {expr}",
                times,
                json.loads(data)["count"],
            )
            r.update(p50_s=pct(times, 50), p95_s=pct(times, 95))
            rows.append(r)
            print_row(r)
        rows.append(
            {
                "key": "serve_rss",
                "what": "peak RSS of serve",
                "rss": vm_hwm(server.pid),
                "count": None,
            }
        )
        print_row(rows[-1])
    finally:
        server.terminate()
        server.wait(60)
    return rows


def run_measured(args: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of `python -m personatag.cli *args`. The
    RSS comes from /usr/bin/time: a child forked from this (big) process would
    report this process's RSS at the fork as its own peak."""
    t0 = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "personatag.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    took = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"personatag {args[0]} failed: {done.stderr[-800:]}")
    return took, int(done.stderr.strip().splitlines()[-1]) * 1024


def cli_runs(choice: EngineChoice, runs: int, evaluation: dict[str, float]) -> list[dict[str, Any]]:
    if choice.env is None:
        print(choice.missing("personatag preview (new process)"))
        return []
    times = [run_measured(["--help"], env_for(choice))[0] for _ in range(runs)]
    rows = [row("cli_help", "new CLI process: `personatag --help` (start-up alone)", times, None)]
    print_row(rows[-1])
    for key, expr in (("cli_attribute", ATTRIBUTE), ("cli_behavioural", BEHAVIOURAL)):
        times, rss = [], 0
        for _ in range(runs):
            took, peak = run_measured(["preview", "--expr", expr, "--json"], env_for(choice))
            times.append(took)
            rss = max(rss, peak)
        r = row(key, f"new CLI process to first answer: {expr}", times, None, rss=rss)
        r["evaluation_s"] = evaluation.get(key.replace("cli_", "preview_"))
        rows.append(r)
        print_row(r)
    return rows


def tag_all(choice: EngineChoice, db: Path) -> list[dict[str, Any]]:
    """`personatag tag` of every contact (`id is not null`) to a bench persona in a
    new process, end to end; the membership log is checked complete, then the
    persona's memberships and log entries are deleted again."""
    if choice.env is None:
        print(choice.missing("personatag tag"))
        return []
    from personatag.definitions.personas import add_persona

    key = "bench-columnar-all"
    store = open_store(load_settings().resolved_store_url)
    with contextlib.suppress(Exception):  # exists from an earlier run
        add_persona(store, key, name=key, category="bench")
    store.dispose()
    con = sqlite3.connect(db)
    persona = con.execute("SELECT pk FROM personas WHERE key = ?", (key,)).fetchone()[0]

    def clear() -> None:
        con.execute("DELETE FROM membership_rows WHERE persona_pk = ?", (persona,))
        con.execute(
            "DELETE FROM membership_grants WHERE pk NOT IN (SELECT grant_pk FROM membership_rows)"
        )
        con.execute("DELETE FROM membership_log WHERE persona_pk = ?", (persona,))
        con.commit()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    clear()
    args = ["tag", "--persona", key, "--expr", "id is not null", "--json"]
    took, rss = run_measured(args, env_for(choice))
    held = con.execute("SELECT count(*) FROM memberships WHERE persona_pk = ?", (persona,))
    logged = con.execute(
        "SELECT coalesce(sum(coalesce(bulk_count, 1)), 0) FROM membership_log "
        "WHERE persona_pk = ? AND change = 'enter'",
        (persona,),
    )
    n_held, n_logged = held.fetchone()[0], logged.fetchone()[0]
    if n_held != n_logged:
        raise SystemExit(f"membership log incomplete: {n_logged} logged, {n_held} held")
    clear()
    con.close()
    r = row("tag_all", "personatag tag of every contact (new process)", [took], n_held)
    r["rss"] = rss
    print_row(r)
    return [r]


# --- output ----------------------------------------------------------------


def figure(r: dict[str, Any]) -> str:
    if "rss" in r and r.get("best_s") is None:
        return f"{r['rss'] / 2**20:,.0f} MiB"
    return seconds(r.get("p95_s", r["best_s"]))


def seconds(s: float) -> str:
    if s < 0.001:
        return f"{s * 1e6:.0f} µs"
    if s < 0.01:
        return f"{s * 1000:.2f} ms"
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def ratio(x: float) -> str:
    return f"{x:.3f}" if x < 0.1 else f"{x:.2f}"


def goal_text(r: dict[str, Any]) -> tuple[str, str]:
    """(goal, measured / goal) for a row, or empty strings; the tag's ratio is to
    the INSERT anchor (times over 1.5 = the goal's ratio)."""
    key = r["key"]
    if key in GOALS and key != "peak_rss":
        g = GOALS[key]
        return f"<= {g * 1000:.0f} ms", ratio(r.get("p95_s", r["best_s"]) / g)
    if key == "serve_rss":
        return "<= 2 GiB", ratio(r["rss"] / GOALS["peak_rss"])
    if key.startswith("cli_") and r.get("evaluation_s") is not None:
        g = 0.5 + r["evaluation_s"]
        return f"<= 0.5 s + eval = {g:.2f} s", ratio(r["best_s"] / g)
    if key == "tag_all" and anchor.get("insert_select"):
        g = anchor["insert_select"]
        return f"<= 1.5x the INSERT ({1.5 * g:.2f} s)", f"{r['best_s'] / g:.2f}x (goal 1.5x)"
    if key == "insert_select":
        return "anchor of `personatag tag` (below)", ""
    return "", ""


def print_row(r: dict[str, Any]) -> None:
    goal, ratio = goal_text(r)
    issue = ISSUE.get(r["key"])
    extra = f"; peak RSS {r['rss'] / 2**20:,.0f} MiB" if r.get("rss") and r.get("best_s") else ""
    p50 = f" (p50 {r['p50_s'] * 1000:.0f} ms)" if "p50_s" in r else ""
    print(
        f"{r['what']}: {figure(r)}{p50}{extra}"
        + (f", count {r['count']:,}" if isinstance(r.get("count"), int) else "")
        + (f"; goal {goal}, ratio {ratio}" if goal and ratio else (f"; {goal}" if goal else ""))
        + (f"; the issue measured {issue} s at 10M" if issue is not None else ""),
        flush=True,
    )


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    lines = [
        header,
        "",
        "| what | measured | goal | ratio to goal | the issue, 10M |",
        "|---|---:|---|---:|---:|",
    ]
    for r in rows:
        goal, ratio = goal_text(r)
        issue = ISSUE.get(r["key"])
        measured = figure(r)
        if r.get("rss") and r.get("best_s"):
            measured += f" (RSS {r['rss'] / 2**20:,.0f} MiB)"
        if "p50_s" in r:
            measured += f" (p50 {seconds(r['p50_s'])})"
        lines.append(
            f"| {r['what']} | {measured} | {goal} | {ratio} | "
            f"{'' if issue is None else f'{issue} s'} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="local", help="local (also: sql) or columnar")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--api-calls", type=int, default=20)
    ap.add_argument("--cli-runs", type=int, default=3)
    ap.add_argument(
        "--feed-wait", type=float, default=420, help="seconds to let serve build its feed model"
    )
    ap.add_argument("--skip", default="", help="comma list of: anchors,insert,inproc,api,cli,tag")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    ap.add_argument(
        "--copy-dir", type=Path, help="the columnar copy, for its size (default: DATA_DIR/columnar)"
    )
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    settings = load_settings()
    db = settings.data_dir.resolve() / "store.db"
    if not db.exists():
        raise SystemExit(f"no SQLite store at {db}: set PERSONATAG_DATA_DIR")
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        n = con.execute("SELECT max(pk) FROM contacts").fetchone()[0]
        nreads = con.execute("SELECT count(*) FROM reads").fetchone()[0]
    size = sum(p.stat().st_size for p in db.parent.glob("store.db*"))
    copy = args.copy_dir or db.parent / "columnar"
    copy_size = (
        sum(p.stat().st_size for p in copy.rglob("*") if p.is_file()) if copy.exists() else 0
    )
    header = (
        f"store {db}: {n:,} contacts, {nreads:,} reads, {size / GIB:.2f} GiB on disk"
        + (f"; columnar copy {copy_size / GIB:.2f} GiB" if copy_size else "")
        + f"; engine {args.engine}"
    )
    print(header, flush=True)
    choice = EngineChoice(args.engine)
    rows: list[dict[str, Any]] = []
    if "anchors" not in skip:
        for r in anchors(db, args.repeats, "insert" not in skip):
            rows.append(r)
            anchor[r["key"]] = r["best_s"]
            print_row(r)
    if "inproc" not in skip:
        rows += in_process(choice, args.repeats)
    if "api" not in skip:
        rows += through_api(choice, args.api_calls, args.feed_wait)
    if "cli" not in skip:
        evaluation = {r["key"]: r["best_s"] for r in rows if r["key"].startswith("preview_")}
        rows += cli_runs(choice, args.cli_runs, evaluation)
    if "tag" not in skip:
        rows += tag_all(choice, db)
    print()
    print(markdown(rows, header))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
