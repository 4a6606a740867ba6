"""Contacts and reads of a SQLite store as numpy arrays, for the benches that
compare the store with vectorised evaluation (bench/columnar.py,
bench/copy_format.py).

The rows leave SQLite through the `sqlite3` shell as CSV (C, several times
faster than fetching tuples into Python: 100M reads in a few minutes instead
of ~10) and are parsed by DuckDB into numpy. Strings become int32 codes into a
dictionary (-1: NULL), as the columnar Frame encodes them.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Coded:
    """A string column: int32 codes into `dictionary` (-1 for NULL)."""

    codes: Any
    dictionary: list[str]

    def code(self, value: str) -> int:
        return self.dictionary.index(value) if value in self.dictionary else -2


def query(db: Path, sql: str, columns: dict[str, str], strings: tuple[str, ...] = ()) -> Any:
    """{column: numpy array} of `sql` over the SQLite file `db`; `columns` gives
    each output column's DuckDB type, in order; `strings` become Coded."""
    if shutil.which("sqlite3") is None:
        raise SystemExit("the sqlite3 shell is missing: apt-get install sqlite3")
    import duckdb

    with tempfile.TemporaryDirectory(dir=db.parent, prefix="bench-export-") as tmp:
        csv = Path(tmp) / "rows.csv"
        with csv.open("wb") as out:
            subprocess.run(["sqlite3", "-readonly", "-csv", str(db), sql], stdout=out, check=True)
        con = duckdb.connect()
        con.execute("SET threads = 2")
        con.execute("SET enable_progress_bar = false")
        spec = "{" + ", ".join(f"'{k}': '{v}'" for k, v in columns.items()) + "}"
        con.execute(
            f"CREATE TABLE t AS SELECT * FROM read_csv('{csv}', header = false, "
            f"columns = {spec}, nullstr = '')"
        )
    selects = []
    dictionaries: dict[str, list[str]] = {}
    for name in columns:
        if name in strings:
            found = con.execute(f"SELECT DISTINCT {name} FROM t WHERE {name} IS NOT NULL")
            dictionaries[name] = sorted(v[0] for v in found.fetchall())
            selects.append(f"coalesce(list_position(${name}, {name}) - 1, -1)::INTEGER AS {name}")
        else:
            selects.append(name)
    params = {name: values for name, values in dictionaries.items()}
    out = con.execute(f"SELECT {', '.join(selects)} FROM t", params).fetchnumpy()
    con.close()
    result: dict[str, Any] = {}
    for name in columns:
        values = np.asarray(out[name])
        result[name] = Coded(values, dictionaries[name]) if name in strings else values
    return result


def contact_columns(db: Path) -> tuple[Any, Any, dict[str, Coded]]:
    """(pk int64, seniority int64 with -1 for NULL, {"region", "firm_type": Coded})
    of every contact, in pk order."""
    got = query(
        db,
        "SELECT pk, coalesce(seniority, -1), region, firm_type FROM contacts ORDER BY pk",
        {"pk": "BIGINT", "seniority": "BIGINT", "region": "VARCHAR", "firm_type": "VARCHAR"},
        strings=("region", "firm_type"),
    )
    return got["pk"], got["seniority"], {"region": got["region"], "firm_type": got["firm_type"]}


def to_rows(pks: Any, sorted_pks: Any) -> Any:
    """int32 row of each pk in `sorted_pks` (the generator's pks are 1..n)."""
    n = len(sorted_pks)
    if n and sorted_pks[0] == 1 and sorted_pks[-1] == n:
        return (pks - 1).astype(np.int32)
    return np.searchsorted(sorted_pks, pks).astype(np.int32)


def reads(db: Path, contact_pks: Any) -> dict[str, Any]:
    """Every read as arrays in the store's order (by contact, then time):
    {"row": int32 contact row, "at": int64 µs, "pub": int32 publication row},
    plus {"pub_sector": Coded} of the publications by row."""
    pubs = query(
        db,
        "SELECT pk, sector FROM publications ORDER BY pk",
        {"pk": "BIGINT", "sector": "VARCHAR"},
        strings=("sector",),
    )
    got = query(
        db,
        "SELECT contact_pk, read_at, publication_pk FROM reads",
        {"contact_pk": "BIGINT", "read_at": "BIGINT", "publication_pk": "BIGINT"},
    )
    return {
        "row": to_rows(got.pop("contact_pk"), contact_pks),
        "at": got.pop("read_at"),
        "pub": to_rows(got.pop("publication_pk"), pubs["pk"]),
        "pub_sector": pubs["sector"],
    }
