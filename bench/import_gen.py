"""Loading paths: import N contacts from a CSV, and generate N synthetic contacts.

    .venv/bin/python bench/import_gen.py --import-contacts 1000000 \
        --generate 100000,1000000 --stores sqlite,postgresql

For each store: write a CSV of N contacts (every standard column, ~5% with
empty cells), import it into a fresh store (all inserts), import it again (all
updates), then generate each population size into a fresh store. Prints rows,
seconds and rows/s per step; the import goal is 1M contacts in < 60 s on SQLite.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from personatag.generate import generate
from personatag.importer import import_file
from personatag.store import Store, open_store

PG_ADMIN = os.environ.get(
    "PERSONATAG_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
HEADER = [
    "id", "email", "first_name", "last_name", "job_title", "seniority", "region", "country",
    "firm", "firm_type", "interests", "created_at", "updated_at", "last_login_at",
]  # fmt: skip


def write_csv(path: Path, n: int) -> None:
    rnd = random.Random(0)
    titles = ["CIO", "Chief Investment Officer", "Portfolio Manager", "Credit Analyst", ""]
    regions = [("EMEA", "GB"), ("EMEA", "DE"), ("AMER", "US"), ("APAC", "JP"), ("", "")]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i in range(1, n + 1):
            region, country = rnd.choice(regions)
            w.writerow(
                [
                    f"c{i:08d}",
                    f"reader{i}@firm{i % 5000}.example",
                    f"First{i % 997}",
                    f"Last{i % 1009}",
                    rnd.choice(titles),
                    rnd.randint(1, 5),
                    region,
                    country,
                    f"Firm {i % 5000}",
                    "asset manager",
                    "" if i % 20 == 0 else "Energy;Credit;Rates",
                    f"2023-{1 + i % 12:02d}-{1 + i % 28:02d}T09:30:00Z",
                    f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T10:15:00+01:00",
                    "" if i % 7 == 0 else "2024-06-30T08:00:00Z",
                ]
            )


class Stores:
    """Fresh stores of one kind; PostgreSQL databases are dropped afterwards."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.databases: list[str] = []

    def new(self) -> Store:
        if self.kind == "sqlite":
            url = f"sqlite:///{self.workdir / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        else:
            name = f"pt_bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            admin.dispose()
            self.databases.append(name)
            url = make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
        return open_store(url, create=True)

    def drop(self) -> None:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in self.databases:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def report(store: str, step: str, rows: int, seconds: float) -> None:
    print(f"{store:<11} {step:<34} {rows:>12,} rows {seconds:>8.1f} s {rows / seconds:>12,.0f}/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--import-contacts", type=int, default=1_000_000)
    ap.add_argument("--generate", default="100000,1000000", help="comma-separated sizes")
    ap.add_argument("--stores", default="sqlite,postgresql")
    args = ap.parse_args()
    sizes = [int(s) for s in args.generate.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="pt-bench-") as tmp:
        workdir = Path(tmp)
        csv_path = workdir / "contacts.csv"
        if args.import_contacts:
            start = time.perf_counter()
            write_csv(csv_path, args.import_contacts)
            print(f"wrote {csv_path.stat().st_size / 1e6:,.0f} MB CSV in "
                  f"{time.perf_counter() - start:.1f} s")  # fmt: skip
        for kind in args.stores.split(","):
            stores = Stores(kind, workdir)
            try:
                if args.import_contacts:
                    store = stores.new()
                    for step in ("import contacts CSV (inserts)", "import contacts CSV (updates)"):
                        start = time.perf_counter()
                        result = import_file(store, "contacts", csv_path)
                        seconds = time.perf_counter() - start
                        assert result.rejected == 0, result
                        report(kind, step, result.inserted + result.updated, seconds)
                    store.dispose()
                for n in sizes:
                    store = stores.new()
                    result_g = generate(store, contacts=n, seed=0)
                    store.dispose()
                    report(kind, f"generate {n:,} contacts", n, result_g.seconds)
                    print(
                        f"{'':<11} {'':<34} {result_g.reads:>12,} reads, "
                        f"{result_g.logins:,} logins, {result_g.publications:,} publications"
                    )
            finally:
                stores.drop()


if __name__ == "__main__":
    main()
