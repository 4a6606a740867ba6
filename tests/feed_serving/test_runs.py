"""Feed evaluation run files: pruning keeps the newest and never a running one."""

from __future__ import annotations

import os
from pathlib import Path

from personatag.config import Settings
from personatag.feed import runs


def test_prune_keeps_the_newest_and_running_runs(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    folder = tmp_path / runs.RUN_DIR
    folder.mkdir()
    ids = [f"ev-2026010{d}T000000-00000{d}" for d in range(1, 6)]
    for n, run_id in enumerate(ids):
        # The oldest one still runs (this test's own process stands in as alive).
        status = "running" if n == 0 else "succeeded"
        runs._write(folder / f"{run_id}.json", {"id": run_id, "status": status, "pid": os.getpid()})
        (folder / f"{run_id}.log").write_text("log\n")
    runs._prune(settings, keep=2)
    left = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert left == sorted(f"{i}.{ext}" for i in (ids[0], ids[3], ids[4]) for ext in ("json", "log"))
    assert [r["id"] for r in runs.list_runs(settings)] == [ids[4], ids[3], ids[0]]
    assert runs.get_run(settings, ids[0])["status"] == "running"
