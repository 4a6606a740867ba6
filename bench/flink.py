"""Flink engine: one big all-match request on flink vs local vs a bare Flink SQL job.

    .venv/bin/personatag flink start            # or PERSONATAG_FLINK_URL=...
    .venv/bin/python bench/flink.py --contacts 10000000

A fresh SQLite store with --contacts contacts (bench/adhoc.py's fill), a job
bundle deployed, then, best of --repeats, memberships reset before each run:

(a) snapshot export: `export_snapshot` of the columns the criterion reads,
    vs the anchor, a plain CSV export of the same columns (csv.writer over a
    streamed SELECT) — goal: within 1.5x;
(b) bare job: a hand-written PyFlink SQL job over that snapshot folder
    (`flink run -py bench/flink_bare_job.py`, the client waiting for the end),
    vs `personatag tag --engine flink` with the snapshot current (so reused),
    timed from the command's start to its end — goal: within 1.5x. The
    request goes through the cluster's warm submitter (the bench waits for it
    to answer); the same request with PERSONATAG_FLINK_SUBMITTER=false, which
    starts a `flink run` client like the bare job does, is timed too;
(c) `personatag tag --engine local` for comparison.

Prints the times and ratios, and where the flink request's time went.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from adhoc import CASES, FILL_SQLITE, check_log, reset_memberships
from personatag.buckets import open_buckets
from personatag.config import Settings, load_settings
from personatag.criteria import compile_criterion
from personatag.criteria.to_flink import compile_flink
from personatag.definitions.personas import add_persona
from personatag.domain import Catalog, utcnow
from personatag.engines.flink.deploy import deploy
from personatag.engines.flink.runtime import home as flink_home
from personatag.engines.flink.runtime import submitter
from personatag.engines.flink.runtime.rest import FlinkRest
from personatag.engines.flink.snapshot import export_snapshot
from personatag.store import open_store
from personatag.store.types import to_micros

HERE = Path(__file__).resolve().parent


def plain_csv_export(store, columns: list[str], path: Path) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    with store.engine.connect() as conn, open(path, "w", newline="") as out:
        writer = csv.writer(out)
        result = conn.execution_options(stream_results=True).execute(
            text(f"SELECT {', '.join(columns)} FROM contacts")
        )
        while rows := result.fetchmany(100_000):
            writer.writerows(rows)
    return time.perf_counter() - start


def bare_job(settings: Settings, snapshot_url: str, out_url: str) -> float:
    home = flink_home.locate(settings)
    target = flink_home.rest_url(settings).split("://", 1)[-1]
    start = time.perf_counter()
    proc = subprocess.run(
        [
            str(home.bin / "flink"),
            "run",
            "-m",
            target,
            "-p",
            str(settings.flink_parallelism),
            "-pyclientexec",
            str(home.python),
            "-pyexec",
            str(home.python),
            "-py",
            str(HERE / "flink_bare_job.py"),
            snapshot_url,
            out_url,
        ],
        capture_output=True,
        text=True,
        env=home.env(),
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bare job failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def wait_for_submitter(settings: Settings, timeout_s: float = 180.0) -> None:
    address = submitter.address_of(flink_home.rest_url(settings))
    if address is None:
        raise SystemExit("the cluster is not on this machine: it has no warm submitter here")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            hello = submitter.hello(address, 5.0)
            print(f"warm submitter pid {hello['pid']} on {address[0]}:{address[1]}", flush=True)
            return
        except submitter.SubmitterError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"no warm submitter answered on {address}: {exc}") from None
            time.sleep(1)


def run_cli(workdir: Path, engine: str, expr: str, **extra_env: str) -> tuple[float, dict]:
    env = {k: v for k, v in os.environ.items() if k != "PERSONATAG_TEST_PG_URL"}
    env["PERSONATAG_DATA_DIR"] = str(workdir)
    env.update(extra_env)
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "personatag.cli",
            "tag",
            "--persona",
            "bench",
            "--expr",
            expr,
            "--engine",
            engine,
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"personatag tag --engine {engine} failed: {proc.stderr}")
    return elapsed, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contacts", type=int, default=10_000_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--case", default="all", choices=sorted(CASES))
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pt-bench-flink-"))
    os.environ["PERSONATAG_DATA_DIR"] = str(workdir)
    settings = load_settings()
    rest = FlinkRest(flink_home.rest_url(settings))
    overview = rest.overview()  # fails early with a clear message when the cluster is down
    print(
        f"cluster {rest.base_url}: {overview['taskmanagers']} task managers, "
        f"{overview['slots-total']} slots; parallelism {settings.flink_parallelism}"
    )
    store = open_store(settings.resolved_store_url, create=True)
    t0 = time.perf_counter()
    with store.write() as conn:
        conn.execute(text(FILL_SQLITE), {"n": args.contacts, "t": to_micros(utcnow())})
    print(f"filled {args.contacts:,} contacts in {time.perf_counter() - t0:.1f} s", flush=True)
    add_persona(store, "bench", name="Bench", category="bench")
    buckets = open_buckets(settings)
    deploy(buckets, properties={"flink.parallelism": settings.flink_parallelism}, actor="bench")
    expr, _ = CASES[args.case]
    catalog = Catalog.standard()
    ast = compile_criterion(expr, catalog).ast
    query = compile_flink(ast, catalog=catalog, persona_pks={"bench": 1}, as_of=utcnow())
    columns = [name for name, _ in query.schema]
    staging = buckets["staging"]

    exports, anchors = [], []
    snapshot = None
    for _ in range(args.repeats):
        if snapshot is not None:
            for key in staging.list(snapshot.key):
                staging.delete(key)
        anchors.append(plain_csv_export(store, columns, workdir / "plain.csv"))
        snapshot = export_snapshot(store, staging, query, catalog=catalog, persona_pks={})
        exports.append(snapshot.seconds)
    assert snapshot is not None and snapshot.rows == args.contacts, snapshot
    size = (workdir / "plain.csv").stat().st_size
    print(
        f"snapshot export {min(exports):.2f} s ({snapshot.bytes / 2**20:.0f} MiB JSON) vs "
        f"plain CSV {min(anchors):.2f} s ({size / 2**20:.0f} MiB): "
        f"ratio {min(exports) / min(anchors):.2f} (goal <= 1.5)",
        flush=True,
    )

    wait_for_submitter(settings)
    bares, flinks, colds, locals_ = [], [], [], []
    out = workdir / "bare-out"
    for _ in range(args.repeats):
        shutil.rmtree(out, ignore_errors=True)
        bares.append(bare_job(settings, snapshot.url, out.as_uri()))
        matched = sum(
            len(p.read_bytes().split())
            for p in out.rglob("*")
            if p.is_file() and not p.name.startswith((".", "_"))
        )
        assert matched == args.contacts, matched
        reset_memberships(store.engine, "sqlite")
        took, result = run_cli(workdir, "flink", expr)
        assert result["tagged"] == args.contacts, result
        check_log(store.engine, args.contacts)
        flinks.append(took)
        reset_memberships(store.engine, "sqlite")
        took, result = run_cli(workdir, "flink", expr, PERSONATAG_FLINK_SUBMITTER="false")
        assert result["tagged"] == args.contacts, result
        colds.append(took)
        reset_memberships(store.engine, "sqlite")
        took, result = run_cli(workdir, "local", expr)
        assert result["tagged"] == args.contacts, result
        locals_.append(took)
        print(
            f"  bare {bares[-1]:.2f} s, flink request {flinks[-1]:.2f} s "
            f"(with flink run: {colds[-1]:.2f} s), local request {locals_[-1]:.2f} s",
            flush=True,
        )
    ratio = min(flinks) / min(bares)
    print(
        f"{args.case}: {args.contacts:,} contacts; bare Flink SQL job {min(bares):.2f} s, "
        f"`tag --engine flink` {min(flinks):.2f} s (ratio {ratio:.2f}, goal <= 1.5); "
        f"with `flink run` instead of the warm submitter {min(colds):.2f} s "
        f"(ratio {min(colds) / min(bares):.2f}); `tag --engine local` {min(locals_):.2f} s"
    )
    store.dispose()
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
