"""Offline feed evaluations started from the API or the workbench.

An evaluation generates its own population and takes a CPU for seconds to
minutes, so it runs in a separate process (`python -m personatag.recommend.runs
FILE`), never inside the server. Each run is one JSON file in
`<data_dir>/feed-evaluations/`: its id, parameters, who started it, `status`
(`running`, `succeeded`, `failed`, `cancelled`), start and end times, the process id while
it runs, and when done the summary `personatag evaluate-feed --json` prints,
or the error. Files are replaced atomically, so a reader never sees half a run.

One run at a time: starting another while one runs is a conflict. A running
one can be cancelled (its process group is sent SIGTERM; the child leaves
through a normal exit, so its temporary store is removed). A run whose process
is gone without writing its result (the machine restarted, it was killed)
reads as failed. Starting a run drops the oldest finished ones beyond the
newest KEEP_RUNS.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from personatag.config import Settings
from personatag.domain import utcnow
from personatag.engines.flink.runtime.supervisor import cmdline, pid_alive
from personatag.errors import ConflictError, InputError, NotFoundError
from personatag.files import atomic_write

RUN_DIR = "feed-evaluations"
MAX_CONTACTS = 1_000_000
MAX_REPORTS = 100_000
KEEP_RUNS = 50  # the oldest finished runs beyond this many are dropped at the next start
_ID = re.compile(r"^ev-[0-9]{8}T[0-9]{6}-[0-9a-f]{6}$")


@dataclass(frozen=True)
class RunParams:
    contacts: int = 20_000
    reports: int | None = None
    weeks: int = 8
    persona_share: float = 0.5
    seed: int = 0
    samples: int = 1000

    def check(self) -> None:
        if not 1 <= self.contacts <= MAX_CONTACTS:
            raise InputError(f"contacts must be between 1 and {MAX_CONTACTS:,}")
        if self.reports is not None and not 1 <= self.reports <= MAX_REPORTS:
            raise InputError(f"reports must be between 1 and {MAX_REPORTS:,}")
        if not 1 <= self.weeks <= 26:
            raise InputError("weeks must be between 1 and 26")
        if not 0.0 <= self.persona_share <= 1.0:
            raise InputError("persona_share must be between 0 and 1")
        if self.seed < 0:
            raise InputError("seed must be 0 or more")
        if not 10 <= self.samples <= 10_000:
            raise InputError("samples must be between 10 and 10,000")


def _dir(settings: Settings) -> Path:
    path = Path(settings.data_dir) / RUN_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write(path: Path, record: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(record, indent=1, default=str))


def _runs_it(pid: object, path: Path) -> bool:
    """True while `pid` is alive and is the evaluation of `path` (not a process
    that got the same pid after a restart; without /proc, alive is enough)."""
    if not (isinstance(pid, int) and pid > 0 and pid_alive(pid)):
        return False
    return str(path) in cmdline(pid) or not Path("/proc").is_dir()


def _read(path: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(path.read_text())
    if record.get("status") == "running" and not _runs_it(record.get("pid"), path):
        # Read once more: it may have finished between the two looks.
        record = json.loads(path.read_text())
        if record.get("status") == "running":
            record["status"] = "failed"
            record["error"] = "the evaluation process ended without a result"
    return record


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Runs are started, cancelled and finished one at a time per folder."""
    with (folder / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def list_runs(settings: Settings) -> list[dict[str, Any]]:
    """Every run, newest first."""
    runs = []
    for path in sorted(_dir(settings).glob("ev-*.json"), reverse=True):
        try:
            runs.append(_read(path))
        except (OSError, ValueError):
            continue  # being replaced this instant, or not ours
    return runs


def get_run(settings: Settings, run_id: str) -> dict[str, Any]:
    path = _dir(settings) / f"{run_id}.json"
    if not _ID.match(run_id) or not path.exists():
        raise NotFoundError(f"unknown feed evaluation {run_id!r}")
    return _read(path)


def start_run(settings: Settings, params: RunParams, actor: str | None) -> dict[str, Any]:
    """Start an evaluation in its own process; ConflictError while another runs."""
    params.check()
    with _locked(_dir(settings)):
        running = [r for r in list_runs(settings) if r["status"] == "running"]
        if running:
            raise ConflictError(
                f"feed evaluation {running[0]['id']} is still running; "
                "one runs at a time (each takes a CPU for its duration)"
            )
        _prune(settings, KEEP_RUNS - 1)
        now = utcnow()
        run_id = f"ev-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
        path = _dir(settings) / f"{run_id}.json"
        env = dict(os.environ, PERSONATAG_DATA_DIR=str(settings.data_dir))
        with path.with_suffix(".log").open("w") as log:
            # The child waits for the run's file, written below with its pid.
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "personatag.recommend.runs", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        # Reap it when it ends, so a finished run is not left as a zombie that
        # would still look alive.
        threading.Thread(target=proc.wait, name=f"reap-{run_id}", daemon=True).start()
        record: dict[str, Any] = {
            "id": run_id,
            "status": "running",
            "params": asdict(params),
            "created_by": actor,
            "started_at": now.isoformat(),
            "finished_at": None,
            "pid": proc.pid,
            "summary": None,
            "error": None,
        }
        _write(path, record)
    return record


def cancel_run(settings: Settings, run_id: str, actor: str | None) -> dict[str, Any]:
    """Stop a running evaluation (its whole process group); ConflictError if it
    is not running."""
    with _locked(_dir(settings)):
        record = get_run(settings, run_id)
        if record["status"] != "running":
            raise ConflictError(f"feed evaluation {run_id} is not running ({record['status']})")
        path = _dir(settings) / f"{run_id}.json"
        pid = record.get("pid")
        if isinstance(pid, int) and _runs_it(pid, path):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass  # it ended this instant
            except PermissionError:
                raise ConflictError(
                    f"feed evaluation {run_id} runs as another user: it cannot be stopped here"
                ) from None
        record.update(
            status="cancelled",
            error=f"cancelled by {actor or 'someone'}",
            finished_at=utcnow().isoformat(),
        )
        _write(path, record)
    return record


def _prune(settings: Settings, keep: int = KEEP_RUNS) -> None:
    """Drop the oldest finished runs beyond the newest `keep` (file and log)."""
    for path in sorted(_dir(settings).glob("ev-*.json"), reverse=True)[keep:]:
        with contextlib.suppress(OSError, ValueError):
            if _read(path)["status"] != "running":
                path.unlink()
                path.with_suffix(".log").unlink(missing_ok=True)


def _run(path: Path) -> int:
    """The child: evaluate, then write the result into the run's file."""
    from personatag.recommend.evaluate import run_evaluation

    deadline = time.monotonic() + 30
    while not path.exists():  # the server writes it just after starting us
        if time.monotonic() > deadline:
            return 2
        time.sleep(0.05)
    # Cancel sends SIGTERM: leave through the normal exit so the temporary
    # store (gigabytes for a big population) is removed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        params = RunParams(**json.loads(path.read_text())["params"])
        summary = run_evaluation(
            **asdict(params), settings=Settings(), progress=lambda m: print(m, flush=True)
        )
        update = {"status": "succeeded", "summary": summary}
    except Exception as exc:  # reported in the run, not lost in a log
        update = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    with _locked(path.parent):
        record = json.loads(path.read_text())
        if record.get("status") != "running":  # cancelled meanwhile: leave it so
            return 1
        record.update(update, finished_at=utcnow().isoformat(), pid=os.getpid())
        _write(path, record)
    return 0 if update["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(_run(Path(sys.argv[1])))
