"""Ad hoc tag of N contacts end to end vs one hand-written INSERT ... SELECT.

    .venv/bin/python bench/adhoc.py --contacts 10000000 --stores sqlite,postgresql

For each store: fill N contacts (SQL-side, fast), then for each case (all match;
~20% match) time, in the same run and alternating, (a) the anchor: one
hand-written INSERT ... SELECT into the memberships table, (b) the pipeline in
this process (`run_adhoc`: request record, compile, apply, membership log, job
record) and (c) `personatag tag --json` as a user runs it, in a new process
(b plus interpreter start-up and imports, ~0.35 s). Prints best-of-R times, the
ratios b/a and c/a (goal <= 1.5), the CLI's peak RSS (goal < 1.5 GiB), and
checks the membership log is complete after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.domain import Action, utcnow
from personatag.store import open_store
from personatag.store.types import to_micros
from personatag.tagging.adhoc import AdhocRequest, run_adhoc

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get(
    "PERSONATAG_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def pg_database(name: str, *, drop: bool = False) -> tuple[str, bool]:
    """The URL of database `name` on PG_ADMIN's server and whether it was
    created now; with `drop`, drop it instead (and return ('', False))."""
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if drop:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                return "", False
            fresh = not conn.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            )
            if fresh:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False), fresh


CASES = {
    # name: (criteria-language expression, hand-written SQL predicate)
    "all": ("id is not null", "id IS NOT NULL"),
    "20pct": ('region = "EMEA" and seniority <= 1', "region = 'EMEA' AND seniority <= 1"),
}

FILL_SQLITE = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :n)
INSERT INTO contacts (pk, id, email, first_name, last_name, job_title, seniority, region,
                      country, firm, firm_type, interests, created_at, updated_at)
SELECT i, printf('c%09d', i), printf('reader%d@firm%d.example', i, i % 5000),
       'First' || (i % 997), 'Last' || (i % 1009),
       CASE i % 5 WHEN 0 THEN 'Chief Investment Officer' WHEN 1 THEN 'CIO'
            WHEN 2 THEN 'Portfolio Manager' WHEN 3 THEN 'Credit Analyst' ELSE 'Treasurer' END,
       i % 10,
       CASE i % 5 WHEN 0 THEN 'EMEA' WHEN 1 THEN 'EMEA' WHEN 2 THEN 'AMER' WHEN 3 THEN 'APAC'
            ELSE 'EMEA' END,
       'GB', 'Firm ' || (i % 5000), 'asset manager', '["Energy","Credit"]', :t, :t
FROM n
"""
FILL_PG = """
INSERT INTO contacts (id, email, first_name, last_name, job_title, seniority, region, country,
                      firm, firm_type, interests, created_at, updated_at)
SELECT 'c' || lpad(i::text, 9, '0'), 'reader' || i || '@firm' || (i % 5000) || '.example',
       'First' || (i % 997), 'Last' || (i % 1009),
       (ARRAY['Chief Investment Officer','CIO','Portfolio Manager','Credit Analyst',
              'Treasurer'])[i % 5 + 1],
       i % 10, (ARRAY['EMEA','EMEA','AMER','APAC','EMEA'])[i % 5 + 1],
       'GB', 'Firm ' || (i % 5000), 'asset manager', ARRAY['Energy','Credit'], :t, :t
FROM generate_series(1, :n) AS i
"""


def make_store(kind: str, workdir: Path) -> tuple[str, str | None]:
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'bench.db'}", None
    name = f"pt_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False), name


def drop_pg(name: str) -> None:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def reset_memberships(store_engine, dialect: str) -> None:  # type: ignore[no-untyped-def]
    with store_engine.begin() as conn:
        if dialect == "postgresql":
            conn.execute(text("TRUNCATE membership_rows, membership_grants, membership_log"))
        else:
            for table in ("membership_rows", "membership_grants", "membership_log"):
                conn.execute(text(f"DELETE FROM {table}"))
    if dialect == "postgresql":
        with store_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE membership_rows"))
    else:
        with store_engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


# The product's own tables written by hand: one grant, then a row per match.
GRANT_SQL = "INSERT INTO membership_grants (since) VALUES (:t)"
ROWS_SQL = (
    "INSERT INTO membership_rows (persona_pk, contact_pk, source, grant_pk) "
    "SELECT :p, pk, 0, (SELECT max(pk) FROM membership_grants) FROM contacts WHERE {pred}"
)


def run_anchor(engine, sql_pred: str, persona_pk: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    with engine.connect() as conn:
        conn = conn.execution_options(pt_write=True)
        with conn.begin():
            conn.execute(text(GRANT_SQL), {"t": to_micros(utcnow())})
            conn.execute(text(ROWS_SQL.format(pred=sql_pred)), {"p": persona_pk})
    return time.perf_counter() - start


def run_cli(url: str, workdir: Path, expr: str, persona: str) -> tuple[float, dict, int]:
    env = {**os.environ, "PERSONATAG_STORE_URL": url, "PERSONATAG_DATA_DIR": str(workdir)}
    env.pop("PERSONATAG_TEST_PG_URL", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "personatag.cli",
            "tag",
            "--persona",
            persona,
            "--expr",
            expr,
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"personatag tag failed: {proc.stderr}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, json.loads(proc.stdout), max(rss, before)


def run_pipeline(store, expr: str, persona: str) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    req = AdhocRequest(persona=persona, action=Action.TAG, expr=expr, actor="bench")
    run_adhoc(store, req, Settings())
    return time.perf_counter() - start


def check_log(engine, n_expected: int | None) -> None:  # type: ignore[no-untyped-def]
    """Every membership has its enter in the log (a row, or inside a bulk entry)."""
    with engine.connect() as conn:
        logged = int(
            conn.scalar(
                text(
                    "SELECT coalesce(sum(coalesce(bulk_count, 1)), 0) FROM membership_log "
                    "WHERE change = 'enter'"
                )
            )
        )
        held = int(conn.scalar(text("SELECT count(*) FROM memberships")))
    if logged != held or (n_expected is not None and held != n_expected):
        raise SystemExit(f"membership log incomplete: {logged} logged, {held} held")


def bench_store(kind: str, n: int, repeats: int) -> list[dict]:
    workdir = Path(tempfile.mkdtemp(prefix=f"pt-bench-{kind}-"))
    url, pg_name = make_store(kind, workdir)
    results = []
    try:
        store = open_store(url, create=True)
        t0 = time.perf_counter()
        with store.write() as conn:
            conn.execute(
                text(FILL_SQLITE if kind == "sqlite" else FILL_PG),
                {"n": n, "t": to_micros(utcnow())},
            )
        if kind == "postgresql":
            with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(text("VACUUM ANALYZE contacts"))
        print(f"[{kind}] filled {n:,} contacts in {time.perf_counter() - t0:.1f}s", flush=True)
        persona_pk = add_persona(store, "bench", name="Bench", category="bench").pk
        for case, (expr, pred) in CASES.items():
            anchors, pipeline, cli, rss = [], [], [], 0
            out: dict = {}
            for _ in range(repeats):
                reset_memberships(store.engine, kind)
                anchors.append(run_anchor(store.engine, pred, persona_pk))
                reset_memberships(store.engine, kind)
                pipeline.append(run_pipeline(store, expr, "bench"))
                check_log(store.engine, None)
                reset_memberships(store.engine, kind)
                elapsed, out, peak = run_cli(url, workdir, expr, "bench")
                cli.append(elapsed)
                rss = max(rss, peak)
                check_log(store.engine, out["tagged"])
            a = min(anchors)
            row = {
                "store": kind,
                "case": case,
                "contacts": n,
                "tagged": out["tagged"],
                "anchor_s": round(a, 2),
                "pipeline_s": round(min(pipeline), 2),
                "cli_s": round(min(cli), 2),
                "pipeline_ratio": round(min(pipeline) / a, 2),
                "cli_ratio": round(min(cli) / a, 2),
                "cli_peak_rss_mib": round(rss / 1024),
            }
            print(json.dumps(row), flush=True)
            results.append(row)
        store.dispose()
    finally:
        if pg_name:
            drop_pg(pg_name)
        for f in workdir.glob("*"):
            f.unlink()
        workdir.rmdir()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contacts", type=int, default=1_000_000)
    ap.add_argument("--stores", default="sqlite,postgresql")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    rows = []
    for kind in args.stores.split(","):
        rows += bench_store(kind, args.contacts, args.repeats)
    print(
        "\nstore       case     contacts     tagged  anchor_s  pipeline_s  ratio   cli_s  ratio"
        "  cli_rss_MiB"
    )
    for r in rows:
        print(
            f"{r['store']:<11} {r['case']:<6} {r['contacts']:>10,} {r['tagged']:>10,} "
            f"{r['anchor_s']:>9} {r['pipeline_s']:>11} {r['pipeline_ratio']:>6} "
            f"{r['cli_s']:>7} {r['cli_ratio']:>6} {r['cli_peak_rss_mib']:>12}"
        )


if __name__ == "__main__":
    main()
