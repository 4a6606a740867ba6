"""The API under load: contact lookups at a fixed rate, and previews, on 1M contacts.

    .venv/bin/python bench/api.py --contacts 1000000

A fresh SQLite store with --contacts generated contacts (reads and logins
included) and a few personas tagged, a `personatag serve` process (no
dispatcher) on a free loopback port, an API token. Then:

(a) an open-loop load generator on loopback: GET /api/v1/contacts/{id} for
    random contacts at --rate requests/s for --seconds (requests are sent on
    schedule whether or not earlier ones finished, by a pool of keep-alive
    connections), latency measured from the scheduled send time, so queueing
    shows up — goal p99 < 50 ms at 200 req/s;
(b) POST /api/v1/preview, one at a time, for an attribute criterion and a
    behavioural one — goal p50 < 1 s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from personatag import accounts
from personatag.config import load_settings
from personatag.definitions.personas import add_persona
from personatag.domain import Action
from personatag.generate import generate
from personatag.store import open_store
from personatag.tagging.adhoc import AdhocRequest, run_adhoc

PREVIEWS = {
    "attribute": 'job_title ilike "%chief%" and region = "EMEA"',
    "behavioural": 'count(read where sector = "Energy", 90d) >= 3 and region in ("EMEA", "APAC")',
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(port: int) -> subprocess.Popen[bytes]:
    """`personatag serve --no-dispatcher` on `port`, once it accepts connections."""
    env = {**os.environ, "PERSONATAG_METRICS_PORT": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "personatag.cli", "serve", "--port", str(port), "--no-dispatcher"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit("serve did not start") from None
            time.sleep(0.2)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def load(
    port: int,
    token: str,
    ids: list[str],
    rate: float,
    seconds: float,
    *,
    path: str = "/api/v1/contacts/{id}",
    timeout: float = 30,
) -> list[float]:
    """Open loop: GET `path` for a random id, request i due at start + i / rate;
    latency counts from then."""
    total = int(rate * seconds)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    next_index = [0]
    start = time.perf_counter() + 0.5

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        headers = {"Authorization": f"Bearer {token}"}
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= total:
                break
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            conn.request("GET", path.format(id=random.choice(ids)), headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            took = time.perf_counter() - due
            with lock:
                if resp.status != 200:
                    errors.append(f"{resp.status} {body[:200]!r}")
                latencies.append(took)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{len(errors)} requests failed: {errors[:5]}")
    return latencies


def report(name: str, ms: list[float], goal: float | None = None) -> None:
    """One latency line: p50/p95/p99/max of `ms`, and the verdict against a p99 goal."""
    p99 = percentile(ms, 99)
    verdict = (
        "" if goal is None else f" (goal p99 < {goal:.0f} ms: {'met' if p99 < goal else 'NOT met'})"
    )
    print(
        f"{name} ({len(ms):,}): p50 {percentile(ms, 50):.2f} ms, p95 {percentile(ms, 95):.2f} ms, "
        f"p99 {p99:.2f} ms, max {max(ms):.1f} ms{verdict}",
        flush=True,
    )


def finish(server: subprocess.Popen[bytes], workdir: Path, reuse: Path | None, keep: bool) -> None:
    """Stop the server; remove the data dir unless it is reused or to be kept."""
    server.terminate()
    server.wait(30)
    if reuse is None and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    elif keep:
        print(f"kept {workdir} (--reuse {workdir})")


def preview_times(port: int, token: str, expr: str, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    times = []
    for _ in range(n):
        body = json.dumps({"persona": "bench-a", "expr": expr})
        t0 = time.perf_counter()
        conn.request("POST", "/api/v1/preview", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        times.append(time.perf_counter() - t0)
        if resp.status != 200:
            raise SystemExit(f"preview failed: {resp.status} {data[:300]!r}")
    conn.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contacts", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--previews", type=int, default=7)
    ap.add_argument(
        "--reuse", type=Path, help="a data dir an earlier run left (--keep): skip generating"
    )
    ap.add_argument("--keep", action="store_true", help="keep the data dir for --reuse")
    args = ap.parse_args()

    workdir = args.reuse or Path(tempfile.mkdtemp(prefix="pt-bench-api-"))
    os.environ["PERSONATAG_DATA_DIR"] = str(workdir)
    settings = load_settings()
    store = open_store(settings.resolved_store_url, create=True)
    if args.reuse is None:
        t0 = time.perf_counter()
        generate(store, contacts=args.contacts, seed=11)
        took = time.perf_counter() - t0
        print(f"generated {args.contacts:,} contacts in {took:.0f} s", flush=True)
        for key, expr in (("bench-a", PREVIEWS["attribute"]), ("bench-b", "seniority >= 4")):
            add_persona(store, key, name=key, category="bench")
            request = AdhocRequest(persona=key, action=Action.TAG, expr=expr, actor="b")
            run_adhoc(store, request, settings)
        accounts.create_user(store, "bench", "Bench-password-1", "viewer", actor="bench")
    token, _ = accounts.create_token(store, "bench", f"bench-{time.time_ns()}", actor="bench")
    store.dispose()
    ids = [f"c{i:08d}" for i in random.Random(3).sample(range(1, args.contacts + 1), 5000)]

    port = free_port()
    server = start_serve(port)
    try:
        # The server builds its feed model at start (in a separate process on a
        # store this big): lookups meanwhile share the machine with that build.
        t0 = time.perf_counter()
        during = load(port, token, ids, args.rate, 10.0)
        lookups = f"contact lookup at {args.rate:.0f} req/s"
        report(f"{lookups} for 10 s during the start-up feed build", [x * 1000 for x in during])
        load(port, token, ids[:1], 1.0, 1.0, path="/api/v1/contacts/{id}/feed", timeout=600)
        print(f"feed model ready {time.perf_counter() - t0:.0f} s after start", flush=True)
        load(port, token, ids, args.rate, 2.0)  # warm up
        lat = load(port, token, ids, args.rate, args.seconds)
        report(f"{lookups} for {args.seconds:.0f} s", [x * 1000 for x in lat], goal=50)
        for name, expr in PREVIEWS.items():
            times = preview_times(port, token, expr, args.previews)
            p50 = statistics.median(times)
            print(
                f"preview {name}: p50 {p50:.2f} s, max {max(times):.2f} s over {len(times)} "
                f"(goal p50 < 1 s: {'met' if p50 < 1 else 'NOT met'})",
                flush=True,
            )
    finally:
        finish(server, workdir, args.reuse, args.keep)


if __name__ == "__main__":
    main()
