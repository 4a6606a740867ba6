"""bench/stream.py runs to the end for every mix and prints the figures it
promises as one JSON object (the figures themselves are not checked here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = (
    "mix",
    "contacts",
    "criteria",
    "backlog_changes_per_s",
    "offered_per_s",
    "sustained_processed_per_s",
    "sustained_p50_ms",
    "sustained_p99_ms",
    "write_floor_changes_per_s",
)


def run_bench(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """bench/stream.py on a small fresh store in `tmp_path` (as TMPDIR), with --json."""
    args = ["--contacts", "2000", "--criteria", "10", "--rate", "50", "--seconds", "2"]
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "stream.py"), *options, *args, "--json"],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("mix", ["realistic", "harsh", "reads"])
def test_each_mix_runs_to_the_end(mix: str, tmp_path: Path) -> None:
    # As the check runs it: a fresh store in a temporary directory.
    done = run_bench(tmp_path, "--mix", mix)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout  # the JSON object only; progress is on stderr
    out = json.loads(lines[0])
    missing = [k for k in KEYS if k not in out]
    assert not missing, out
    assert (out["mix"], out["contacts"], out["criteria"]) == (mix, 2000, 10)
    for key in KEYS[3:]:
        assert isinstance(out[key], (int, float)) and out[key] >= 0, (key, out)
    assert out["backlog_changes"] > 0
    assert "write floor" in done.stderr
    assert list(tmp_path.iterdir()) == []  # the bench removed its store


def test_attribute_share_is_for_harsh_and_reads() -> None:
    bench = [sys.executable, str(ROOT / "bench" / "stream.py")]
    done = subprocess.run(
        [*bench, "--mix", "realistic", "--attribute-share", "0.2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "not realistic" in done.stderr


def _bench_databases() -> set[str]:
    from sqlalchemy import create_engine

    from tests.conftest import PG_URL

    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            names = conn.exec_driver_sql(
                "SELECT datname FROM pg_database WHERE starts_with(datname, 'pt_bench_stream_')"
            ).scalars()
            return set(names)
    finally:
        engine.dispose()


@pytest.mark.slow
def test_runs_on_postgresql_and_drops_its_database(tmp_path: Path) -> None:
    before = _bench_databases()
    done = run_bench(tmp_path, "--store", "postgresql", "--mix", "realistic")
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert (out["store"], out["mix"], out["contacts"]) == ("postgresql", "realistic", 2000)
    assert out["backlog_changes"] > 0 and out["write_floor_changes_per_s"] > 0
    assert _bench_databases() == before  # the run's database is gone
    assert list(tmp_path.iterdir()) == []
