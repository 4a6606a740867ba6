"""`personatag tag` of N contacts (all match) vs the cost of writing the pairs at all.

    python bench/tag_write.py --contacts 10000000 [--stores sqlite,postgresql]

The anchor is one hand-written INSERT ... SELECT of the N (persona, contact)
pairs into a bare two-column table (`WITHOUT ROWID` on SQLite, a primary key
on PostgreSQL) in the same store, measured in the same run, alternating with
the product. Beside it: the same pairs written by hand into the product's own
tables (one grant, then a `membership_rows` row per pair: what its table
design costs), and `personatag tag --json` as a user runs it
in a new process (request record, compile, apply, the membership log complete,
job record; plus interpreter start-up and imports). Prints best-of-R times and
the ratio tag / anchor (goal <= 1.5) and checks the log after every run.

On SQLite every statement runs on the calling thread, so the CPU time of the
anchor (this process) and of the tag (the child process, start-up included)
are measured too: on a machine shared with other work their ratio moves far
less than the wall-clock one. `--layouts` also times the same INSERT into
bare tables of other shapes: the key `(persona_pk, contact_pk, source)` alone,
and that key plus a grant reference (the shape of `membership_rows`).

The store is filled SQL-side once and kept under --workdir (default
/work/data/write, or $TMPDIR), so later runs at the same size start at once.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import Engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from adhoc import FILL_PG, FILL_SQLITE, GRANT_SQL, ROWS_SQL, pg_database, run_cli
from personatag.definitions.personas import add_persona
from personatag.domain import utcnow
from personatag.store import open_store
from personatag.store.types import to_micros

EXPR = "id is not null"


def store_url(kind: str, n: int, workdir: Path) -> tuple[str, bool]:
    """The store's URL and whether it must be filled."""
    if kind == "sqlite":
        path = workdir / f"tag_write_{n}.db"
        return f"sqlite:///{path}", not path.exists()
    return pg_database(f"pt_tag_write_{n}")


def reset(engine: Engine, kind: str) -> None:
    with engine.begin() as conn:
        if kind == "postgresql":
            conn.execute(
                text("TRUNCATE membership_rows, membership_grants, membership_log, changes")
            )
            conn.execute(text("DROP TABLE IF EXISTS bare_pairs"))
        else:
            for table in ("membership_rows", "membership_grants", "membership_log", "changes"):
                conn.execute(text(f"DELETE FROM {table}"))
            conn.execute(text("DROP TABLE IF EXISTS bare_pairs"))
    if kind == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE membership_rows"))
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


# CPU seconds of this process for each run_sql, in call order (see the docstring).
CPU: list[float] = []


def run_sql(engine: Engine, statements: list[str], params: dict[str, object]) -> float:
    start, cpu = time.perf_counter(), time.process_time()
    with engine.connect() as conn:
        conn = conn.execution_options(pt_write=True)
        with conn.begin():
            for s in statements:
                conn.execute(text(s), params)
    CPU.append(time.process_time() - cpu)
    return time.perf_counter() - start


def child_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def anchor(engine: Engine, kind: str, persona_pk: int) -> float:
    rowid = " WITHOUT ROWID" if kind == "sqlite" else ""
    return run_sql(
        engine,
        [
            "CREATE TABLE bare_pairs (persona_pk BIGINT NOT NULL, contact_pk BIGINT NOT NULL, "
            f"PRIMARY KEY (persona_pk, contact_pk)){rowid}",
            "INSERT INTO bare_pairs (persona_pk, contact_pk) SELECT :p, pk FROM contacts "
            "WHERE id IS NOT NULL",
        ],
        {"p": persona_pk},
    )


# Narrower tables a different memberships layout would write (see --layouts).
LAYOUTS = {
    "key only": ("source BIGINT NOT NULL", "0"),
    "key + grant ref": ("source BIGINT NOT NULL, grant_pk BIGINT NOT NULL", "0, 100"),
}


def layout(engine: Engine, kind: str, persona_pk: int, name: str) -> float:
    cols, values = LAYOUTS[name]
    rowid = " WITHOUT ROWID" if kind == "sqlite" else ""
    return run_sql(
        engine,
        [
            "CREATE TABLE bare_pairs (persona_pk BIGINT NOT NULL, contact_pk BIGINT NOT NULL, "
            f"{cols}, PRIMARY KEY (persona_pk, contact_pk, source)){rowid}",
            f"INSERT INTO bare_pairs SELECT :p, pk, {values} FROM contacts WHERE id IS NOT NULL",
        ],
        {"p": persona_pk},
    )


def product_table(engine: Engine, persona_pk: int) -> float:
    return run_sql(
        engine,
        [GRANT_SQL, ROWS_SQL.format(pred="id IS NOT NULL")],
        {"p": persona_pk, "t": to_micros(utcnow())},
    )


def cli_tag(url: str, workdir: Path) -> tuple[float, dict[str, object]]:
    """`personatag tag` of everyone to the bench persona, in a new process (adhoc's runner)."""
    elapsed, out, _rss = run_cli(url, workdir, EXPR, "bench")
    return elapsed, out


def check_log(engine: Engine, n: int) -> None:
    """Every membership has its enter in the log (a row, or inside a bulk entry)."""
    with engine.connect() as conn:
        logged = int(
            conn.scalar(
                text(
                    "SELECT coalesce(sum(coalesce(bulk_count, 1)), 0) FROM membership_log "
                    "WHERE change = 'enter'"
                )
            )
            or 0
        )
        held = int(conn.scalar(text("SELECT count(DISTINCT contact_pk) FROM memberships")) or 0)
    if logged != held or held != n:
        raise SystemExit(f"membership log incomplete: {logged} logged, {held} held, {n} expected")


def bench(
    kind: str, n: int, repeats: int, workdir: Path, layouts: bool = False
) -> dict[str, object]:
    url, fresh = store_url(kind, n, workdir)
    store = open_store(url, create=True)
    if fresh:
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
    with store.read() as conn:
        pk = conn.scalar(text("SELECT pk FROM personas WHERE key = 'bench'"))
    if pk is None:
        pk = add_persona(store, "bench", name="Bench", category="bench").pk
    persona_pk = int(pk)
    anchors: list[float] = []
    products: list[float] = []
    tags: list[float] = []
    cpu: dict[str, list[float]] = {"anchor": [], "memberships": [], "tag": []}
    shapes: dict[str, list[tuple[float, float]]] = {name: [] for name in LAYOUTS} if layouts else {}
    for _ in range(repeats):
        reset(store.engine, kind)
        anchors.append(anchor(store.engine, kind, persona_pk))
        cpu["anchor"].append(CPU[-1])
        reset(store.engine, kind)
        products.append(product_table(store.engine, persona_pk))
        cpu["memberships"].append(CPU[-1])
        for name in shapes:
            reset(store.engine, kind)
            shapes[name].append((layout(store.engine, kind, persona_pk, name), CPU[-1]))
        reset(store.engine, kind)
        before = child_cpu()
        elapsed, out = cli_tag(url, workdir)
        cpu["tag"].append(child_cpu() - before)
        tags.append(elapsed)
        check_log(store.engine, n)
        print(
            f"[{kind}] anchor {anchors[-1]:.2f}s  memberships table {products[-1]:.2f}s  "
            f"tag {elapsed:.2f}s  ({out['tagged']} tagged); CPU: anchor {cpu['anchor'][-1]:.2f}s  "
            f"memberships table {cpu['memberships'][-1]:.2f}s  tag {cpu['tag'][-1]:.2f}s",
            flush=True,
        )
    reset(store.engine, kind)
    store.dispose()
    a = min(anchors)
    ca = min(cpu["anchor"])
    local = kind == "sqlite"  # only SQLite runs the statements in this process
    for name, times in shapes.items():
        wall = min(w for w, _ in times) / a
        spent = f", CPU {min(c for _, c in times) / ca:.2f}x" if local else ""
        print(f"[{kind}] layout {name}: {wall:.2f}x the anchor{spent}", flush=True)
    return {
        "store": kind,
        "contacts": n,
        "anchor_s": round(a, 2),
        "memberships_insert_s": round(min(products), 2),
        "tag_s": round(min(tags), 2),
        "memberships_insert_ratio": round(min(products) / a, 2),
        "tag_ratio": round(min(tags) / a, 2),
        "memberships_cpu_ratio": round(min(cpu["memberships"]) / ca, 2) if local else "-",
        "tag_cpu_ratio": round(min(cpu["tag"]) / ca, 2) if local else "-",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contacts", type=int, default=1_000_000)
    ap.add_argument("--stores", default="sqlite")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--layouts", action="store_true", help="also time narrower tables")
    default_dir = "/work/data/write" if Path("/work/data").is_dir() else None
    ap.add_argument("--workdir", default=default_dir or tempfile.gettempdir())
    args = ap.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = [
        bench(kind, args.contacts, args.repeats, workdir, args.layouts)
        for kind in args.stores.split(",")
    ]
    print(
        "\nstore       contacts   anchor_s  memberships_s  ratio   tag_s  ratio (goal <= 1.5)"
        "  CPU ratios: memberships  tag"
    )
    for r in rows:
        print(
            f"{r['store']:<11} {r['contacts']:>9,} {r['anchor_s']:>9} "
            f"{r['memberships_insert_s']:>14} {r['memberships_insert_ratio']:>6} "
            f"{r['tag_s']:>7} {r['tag_ratio']:>6} {r['memberships_cpu_ratio']:>24} "
            f"{r['tag_cpu_ratio']:>4}"
        )


if __name__ == "__main__":
    main()
