"""Feed evaluation run files: pruning keeps the newest and the running ones; a
run counts as running only while its own process lives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from personatag.config import Settings
from personatag.recommend import runs


def test_prune_keeps_the_newest_and_running_runs(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    folder = tmp_path / runs.RUN_DIR
    folder.mkdir()
    ids = [f"ev-2026010{d}T000000-00000{d}" for d in range(1, 7)]
    paths = [folder / f"{i}.json" for i in ids]
    # The oldest still runs: a live process whose arguments name its file.
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(paths[0])])
    try:
        for n, (run_id, path) in enumerate(zip(ids, paths, strict=True)):
            pid = alive.pid if n == 0 else os.getpid()
            # The second "runs" with a pid that is alive but not its evaluation
            # (a pid reused after a restart): it reads as failed.
            status = "running" if n < 2 else "succeeded"
            runs._write(path, {"id": run_id, "status": status, "pid": pid})
            path.with_suffix(".log").write_text("log\n")
        assert runs.get_run(settings, ids[0])["status"] == "running"
        assert runs.get_run(settings, ids[1])["status"] == "failed"
        runs._prune(settings, keep=2)
        left = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        assert left == sorted(f"{ids[i]}.{ext}" for i in (0, 4, 5) for ext in ("json", "log"))
        assert [r["id"] for r in runs.list_runs(settings)] == [ids[5], ids[4], ids[0]]
    finally:
        alive.kill()
        alive.wait()
    assert runs.get_run(settings, ids[0])["status"] == "failed"
