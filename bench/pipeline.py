"""Request pipeline: small-request throughput and the overhead of one big request.

    .venv/bin/python bench/pipeline.py --stores sqlite,postgresql

Throughput: a fresh store with --contacts contacts and a few personas, then
--requests JSON request files, each naming --list-size contact ids (a random
persona; two thirds tag a fresh random sample, one third untag the ids of an
earlier tag request of the same persona, so both paths do real work), written
into the requests bucket before any dispatcher runs. Timed two ways, each on
its own fresh store: (a) `personatag dispatcher --workers W --poll P` in a new
process, until every `results/<id>/summary.json` exists; requests/s is counted
from the dispatcher's first claim (its start-up is reported separately);
(b) the same dispatcher in this process (`Dispatcher(...).scan(); drain()`).
Goal: >= 50 requests/s on SQLite. Every summary must say succeeded, every
request's counts must add up, and per persona the tags minus the untags must
equal the memberships held and the enters/exits in the membership log.

Overhead: a fresh store with --big-contacts contacts (default 10M), then for
each case (all match; ~20% match), alternating and resetting memberships
between runs: (a) the anchor, `personatag tag --persona P --expr E --json` in
a new process; (b) the same request as a JSON request file, `submit`ted into
the requests bucket of a dispatcher process that was started (and warmed up
with a one-contact dry run) beforehand, timed from the submit until its
summary.json exists. Prints best-of-R times and the ratio b/a (goal <= 1.1),
with where (b)'s time went: pick-up (submit until the dispatcher started the
request), the job itself, and the result files after it; and the dispatcher
process's peak RSS.

The store fill, membership reset, log check and `personatag tag` runner are
bench/adhoc.py's (imported: run this file as a script, from any directory).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from adhoc import CASES, FILL_PG, FILL_SQLITE, check_log, drop_pg, make_store, reset_memberships
from adhoc import run_cli as run_tag_cli
from personatag.buckets import Buckets, open_buckets
from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.domain import utcnow
from personatag.requests.dispatcher import Dispatcher
from personatag.requests.submit import submit_file
from personatag.store import Store, open_store
from personatag.store.types import to_micros

GOAL_RPS = 50.0
GOAL_RATIO = 1.1
PERSONAS = ("cio", "emea-macro", "credit", "treasury")


# --- shared helpers -----------------------------------------------------------------


class Workspace:
    """A fresh store with N contacts plus a data directory for its buckets."""

    def __init__(self, kind: str, n: int, personas: tuple[str, ...]) -> None:
        self.kind = kind
        self.dir = Path(tempfile.mkdtemp(prefix=f"pt-bench-pipe-{kind}-"))
        self.url, self.pg_name = make_store(kind, self.dir)
        self.settings = Settings(data_dir=self.dir, store_url=self.url)
        self.buckets: Buckets = open_buckets(self.settings)
        self.store: Store = open_store(self.url, create=True)
        t0 = time.perf_counter()
        with self.store.write() as conn:
            conn.execute(
                text(FILL_SQLITE if kind == "sqlite" else FILL_PG),
                {"n": n, "t": to_micros(utcnow())},
            )
        if kind == "postgresql":
            with self.store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(text("VACUUM ANALYZE contacts"))
        for key in personas:
            add_persona(self.store, key, name=key.title(), category="bench")
        print(f"[{kind}] filled {n:,} contacts in {time.perf_counter() - t0:.1f}s", flush=True)

    @property
    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "PERSONATAG_STORE_URL": self.url,
            "PERSONATAG_DATA_DIR": str(self.dir),
        }
        env.pop("PERSONATAG_TEST_PG_URL", None)
        return env

    def close(self) -> None:
        self.store.dispose()
        if self.pg_name:
            drop_pg(self.pg_name)
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)


class DispatcherProcess:
    """`personatag dispatcher` in a new process, its log in the workspace."""

    def __init__(self, ws: Workspace, workers: int, poll: float | None) -> None:
        cmd = [sys.executable, "-m", "personatag.cli", "dispatcher", "--workers", str(workers)]
        if poll is not None:
            cmd += ["--poll", str(poll)]
        cmd += ["--metrics-port", "0"]
        self.log_path = ws.dir / f"dispatcher-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, env=ws.env, stdout=self._log, stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise SystemExit(f"dispatcher exited with {self.proc.returncode}:\n{tail}")

    def peak_rss_mib(self) -> int | None:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def wait_summaries(
    ws: Workspace, ids: list[str], timeout: float, proc: DispatcherProcess | None = None
) -> float:
    """Wait until results/<id>/summary.json exists for every id; the time.time() it did."""
    results = ws.buckets["results"]
    pending = list(ids)
    deadline = time.monotonic() + timeout
    while True:
        pending = [i for i in pending if not results.exists(f"{i}/summary.json")]
        if not pending:
            return time.time()
        if proc is not None:
            proc.check_alive()
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(pending)} of {len(ids)} requests unfinished after {timeout}s")
        time.sleep(0.02 if len(pending) > 10 else 0.005)


def read_summary(ws: Workspace, request_id: str) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(ws.buckets["results"].get(f"{request_id}/summary.json"))
    return summary


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def first_claim(ws: Workspace) -> float:
    with ws.store.read() as conn:
        first = conn.execute(text("SELECT min(claimed_at) FROM request_files")).scalar()
    # UTC microseconds in a BIGINT on every store.
    return int(first) / 1e6


# --- 1. throughput of small requests ------------------------------------------------


def write_small_requests(ws: Workspace, n: int, r: int, size: int, seed: int) -> list[dict]:
    """R request files of `size` contact ids each, straight into the requests bucket."""
    rng = random.Random(seed)
    bucket = ws.buckets["requests"]
    tagged: dict[str, list[list[str]]] = {p: [] for p in PERSONAS}
    specs = []
    for i in range(r):
        persona = rng.choice(PERSONAS)
        if tagged[persona] and rng.random() < 1 / 3:
            action, ids = "untag", rng.choice(tagged[persona])
        else:
            action = "tag"
            ids = [f"c{pk:09d}" for pk in rng.sample(range(1, n + 1), size)]
            tagged[persona].append(ids)
        request_id = f"small-{i:05d}"
        body = {
            "version": 1,
            "request_id": request_id,
            "submitted_by": "bench",
            "persona": persona,
            "action": action,
            "contacts": ids,
        }
        bucket.put(f"{request_id}.json", json.dumps(body).encode())
        specs.append({"request_id": request_id, "persona": persona, "action": action})
    return specs


def check_small(ws: Workspace, specs: list[dict], size: int) -> list[float]:
    """Every request succeeded and its counts add up; the store agrees.

    Returns each request's seconds from its summary: from the dispatcher picking
    the file up until its result was ready, so time queued behind others counts.
    """
    net: Counter[str] = Counter()
    enters: Counter[str] = Counter()
    exits: Counter[str] = Counter()
    seconds = []
    for spec in specs:
        s = read_summary(ws, spec["request_id"])
        c = s["counts"]
        if s["status"] != "succeeded":
            raise SystemExit(f"{spec['request_id']}: {s['status']} ({s.get('error')})")
        done = c["tagged"] if spec["action"] == "tag" else c["untagged"]
        if c["matched"] != size or c["failed"] or done + c["already"] + c["pinned"] != size:
            raise SystemExit(f"{spec['request_id']}: counts do not add up: {c}")
        net[spec["persona"]] += c["tagged"] - c["untagged"]
        enters[spec["persona"]] += c["tagged"]
        exits[spec["persona"]] += c["untagged"]
        seconds.append(s["timings"]["seconds"])
    with ws.store.read() as conn:
        held = dict(
            conn.execute(
                text(
                    "SELECT p.key, count(*) FROM memberships m JOIN personas p "
                    "ON p.pk = m.persona_pk GROUP BY p.key"
                )
            ).all()
        )
        logged = conn.execute(
            text(
                "SELECT p.key, l.change, sum(coalesce(l.bulk_count, 1)) FROM membership_log l "
                "JOIN personas p ON p.pk = l.persona_pk GROUP BY p.key, l.change"
            )
        ).all()
    log_in = {k: int(v) for k, ch, v in logged if ch == "enter"}
    log_out = {k: int(v) for k, ch, v in logged if ch == "exit"}
    for p in PERSONAS:
        if held.get(p, 0) != net[p]:
            raise SystemExit(f"persona {p}: {held.get(p, 0)} held, requests net {net[p]}")
        if log_in.get(p, 0) != enters[p] or log_out.get(p, 0) != exits[p]:
            raise SystemExit(
                f"persona {p}: log has {log_in.get(p, 0)} enters / {log_out.get(p, 0)} exits, "
                f"requests {enters[p]} / {exits[p]}"
            )
    return seconds


def bench_throughput(kind: str, variant: str, args: argparse.Namespace) -> dict:
    ws = Workspace(kind, args.contacts, PERSONAS)
    proc: DispatcherProcess | None = None
    try:
        t0 = time.perf_counter()
        specs = write_small_requests(ws, args.contacts, args.requests, args.list_size, args.seed)
        put_s = time.perf_counter() - t0
        ids = [s["request_id"] for s in specs]
        timeout = max(600.0, args.requests * 2.0)
        row: dict[str, Any] = {"bench": "throughput", "store": kind, "variant": variant}
        if variant == "process":
            proc = DispatcherProcess(ws, args.workers, args.poll)
            end = wait_summaries(ws, ids, timeout, proc)
            start = first_claim(ws)
            row["startup_s"] = round(start - proc.started, 2)
            row["wall_s"] = round(end - proc.started, 2)
            proc.stop()
            proc = None
        else:
            d = Dispatcher(
                ws.store, ws.buckets, ws.settings, workers=args.workers, poll_s=args.poll
            )
            start = time.time()
            d.scan()
            d.drain()
            end = time.time()
            d.close()
        seconds = check_small(ws, specs, args.list_size)
        drain = end - start
        row.update(
            requests=args.requests,
            list_size=args.list_size,
            contacts=args.contacts,
            workers=args.workers,
            put_s=round(put_s, 2),
            drain_s=round(drain, 2),
            rps=round(args.requests / drain, 1),
            goal_ratio=round(args.requests / drain / GOAL_RPS, 2),
            latency_p50_s=round(statistics.median(seconds), 3),
            latency_max_s=round(max(seconds), 3),
        )
        print(json.dumps(row), flush=True)
        return row
    finally:
        if proc is not None:
            proc.stop()
        ws.close()


# --- 2. overhead of one big request -------------------------------------------------


def start_warm_dispatcher(ws: Workspace, args: argparse.Namespace) -> DispatcherProcess:
    """A dispatcher process that has already run one (dry-run) request: it is listening."""
    proc = DispatcherProcess(ws, args.workers, args.big_poll)
    request_id = f"warm-{uuid.uuid4().hex[:8]}"
    body = {
        "version": 1,
        "request_id": request_id,
        "persona": "bench",
        "action": "tag",
        "contacts": ["c000000001"],
        "dry_run": True,
    }
    submit_file(ws.buckets, json.dumps(body).encode(), name="warm.json")
    wait_summaries(ws, [request_id], 120, proc)
    if read_summary(ws, request_id)["status"] != "succeeded":
        raise SystemExit(f"warm-up request failed: {read_summary(ws, request_id)}")
    return proc


def run_through_dispatcher(ws: Workspace, expr: str, args: argparse.Namespace) -> dict:
    proc = start_warm_dispatcher(ws, args)
    try:
        body = {"version": 1, "persona": "bench", "action": "tag", "expr": expr}
        t0 = time.time()
        request_id = submit_file(ws.buckets, json.dumps(body).encode(), name="big.json")[
            "request_id"
        ]
        end = wait_summaries(ws, [request_id], 3600, proc)
        rss = proc.peak_rss_mib()
    finally:
        proc.stop()
    s = read_summary(ws, request_id)
    if s["status"] != "succeeded":
        raise SystemExit(f"{request_id}: {s['status']} ({s.get('error')})")
    started, finished = epoch(s["timings"]["started_at"]), epoch(s["timings"]["finished_at"])
    return {
        "total": end - t0,
        "pickup": started - t0,
        "job": finished - started,
        "results": end - finished,
        "tagged": s["counts"]["tagged"],
        "rss": rss,
    }


def bench_overhead(kind: str, args: argparse.Namespace) -> list[dict]:
    ws = Workspace(kind, args.big_contacts, ("bench",))
    rows = []
    try:
        for case in args.cases.split(","):
            expr = CASES[case][0]
            anchors: list[float] = []
            runs: list[dict] = []
            tagged = None
            for i in range(args.repeats):
                # Alternate which goes first, so neither always runs on a cooler cache.
                for which in ("anchor", "pipeline") if i % 2 == 0 else ("pipeline", "anchor"):
                    reset_memberships(ws.store.engine, kind)
                    if which == "anchor":
                        elapsed, out, _ = run_tag_cli(ws.url, ws.dir, expr, "bench")
                        anchors.append(elapsed)
                        n = out["tagged"]
                    else:
                        run = run_through_dispatcher(ws, expr, args)
                        runs.append(run)
                        n = run["tagged"]
                    check_log(ws.store.engine, n)
                    if tagged is not None and n != tagged:
                        raise SystemExit(f"{which} tagged {n:,}, an earlier run {tagged:,}")
                    tagged = n
            a = min(anchors)
            best = min(runs, key=lambda r: r["total"])
            row = {
                "bench": "overhead",
                "store": kind,
                "case": case,
                "contacts": args.big_contacts,
                "tagged": tagged,
                "anchor_s": round(a, 2),
                "pipeline_s": round(best["total"], 2),
                "ratio": round(best["total"] / a, 3),
                "pickup_s": round(best["pickup"], 3),
                "job_s": round(best["job"], 2),
                "results_s": round(best["results"], 2),
                "dispatcher_peak_rss_mib": max((r["rss"] or 0) for r in runs) or None,
                "anchor_runs_s": [round(x, 2) for x in anchors],
                "pipeline_runs_s": [round(r["total"], 2) for r in runs],
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        ws.close()
    return rows


# --- main ---------------------------------------------------------------------------


def print_table(small: list[dict], big: list[dict]) -> None:
    if small:
        print(f"\nthroughput: {GOAL_RPS:g} requests/s goal (ratio >= 1 meets it)")
        print(
            "store       variant   requests  list  workers  startup_s  drain_s    req/s  ratio"
            "  lat_p50_s  lat_max_s"
        )
        for r in small:
            print(
                f"{r['store']:<11} {r['variant']:<9} {r['requests']:>8} {r['list_size']:>5} "
                f"{r['workers']:>8} {r.get('startup_s', '-'):>10} {r['drain_s']:>8} "
                f"{r['rps']:>8} {r['goal_ratio']:>6} "
                f"{r['latency_p50_s']:>10} {r['latency_max_s']:>10}"
            )
    if big:
        print(
            f"\noverhead: request file via the dispatcher / `personatag tag` (goal <= {GOAL_RATIO})"
        )
        print(
            "store       case     contacts     tagged  anchor_s  pipeline_s  ratio  pickup_s"
            "  job_s  results_s  rss_MiB"
        )
        for r in big:
            print(
                f"{r['store']:<11} {r['case']:<6} {r['contacts']:>10,} {r['tagged']:>10,} "
                f"{r['anchor_s']:>9} {r['pipeline_s']:>11} {r['ratio']:>6} {r['pickup_s']:>9} "
                f"{r['job_s']:>6} {r['results_s']:>10} {r['dispatcher_peak_rss_mib'] or '-':>8}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stores", default="sqlite", help="comma-separated: sqlite,postgresql")
    ap.add_argument("--only", choices=("throughput", "overhead"), help="run one part only")
    ap.add_argument("--contacts", type=int, default=100_000, help="throughput store size")
    ap.add_argument("--requests", type=int, default=500, help="small request files")
    ap.add_argument("--list-size", type=int, default=100, help="contact ids per small request")
    ap.add_argument("--workers", type=int, default=2, help="dispatcher --workers")
    ap.add_argument("--poll", type=float, default=0.05, help="dispatcher --poll (throughput)")
    ap.add_argument("--variants", default="process,inprocess", help="throughput: process,inprocess")
    ap.add_argument("--big-contacts", type=int, default=10_000_000, help="overhead store size")
    ap.add_argument(
        "--big-poll",
        type=float,
        default=None,
        help="dispatcher --poll for the overhead runs (default: its own; the folder is watched)",
    )
    ap.add_argument("--cases", default="all,20pct", help=f"overhead: {','.join(CASES)}")
    ap.add_argument("--repeats", type=int, default=3, help="overhead: best of")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    small: list[dict] = []
    big: list[dict] = []
    for kind in args.stores.split(","):
        if args.only != "overhead":
            for variant in args.variants.split(","):
                small.append(bench_throughput(kind, variant, args))
        if args.only != "throughput":
            big += bench_overhead(kind, args)
    print_table(small, big)


if __name__ == "__main__":
    main()
