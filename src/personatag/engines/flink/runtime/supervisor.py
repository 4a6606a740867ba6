"""Keep a local Flink session cluster's processes up, and take them all down together.

`personatag flink start` runs this as a detached process:

    python -m personatag.engines.flink.runtime.supervisor --flink-home H --flink-python P \\
        --conf-dir C --log-dir L --run-dir R --task-managers N \\
        [--submitter-port S --rest-port REST]

It starts one JobManager and N TaskManagers with Flink's own
`bin/{jobmanager,taskmanager}.sh start-foreground` (each `exec`s its way to the
JVM, so a child's pid is the JVM's), and with --submitter-port the warm job
submitter (`submitter.py`, under the PyFlink interpreter); it restarts a child
that dies, and on SIGTERM
or SIGINT stops every child and exits. Each child runs in its own process group
(so one signal reaches the JVM and anything it spawned, such as Python workers)
and, on Linux, gets SIGTERM when the supervisor dies, even by SIGKILL: no JVM
outlives it. The pid file and a JSON state file (children, pids, restarts) live
in the run dir; the log goes to stderr.

The process helpers at the bottom (`pid_alive`, `read_pid`, ...) are shared
with `cluster`, which finds and stops a supervisor through them.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psutil

from personatag.engines.flink.runtime.home import FlinkHome
from personatag.files import atomic_write
from personatag.times import iso

log = logging.getLogger("personatag.engines.flink.runtime.supervisor")

PID_FILE = "supervisor.pid"
STATE_FILE = "state.json"
LOCK_FILE = "supervisor.lock"

# A child that exits is started again after RESTART_BACKOFF_S; one that has been
# restarted RESTART_LIMIT times within RESTART_WINDOW_S is left down (a JVM that
# cannot start - bad config, port taken - would otherwise flap forever).
RESTART_BACKOFF_S = 2.0
RESTART_LIMIT = 5
RESTART_WINDOW_S = 300.0
# Seconds a JVM gets to shut down after SIGTERM before it is killed.
TERM_TIMEOUT_S = 20.0
POLL_S = 0.2

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RestartPolicy:
    """When a child that died is started again, and how long a stopping one gets."""

    backoff_s: float = RESTART_BACKOFF_S
    limit: int = RESTART_LIMIT
    window_s: float = RESTART_WINDOW_S
    term_timeout_s: float = TERM_TIMEOUT_S


@dataclass
class Child:
    """One Flink process the supervisor keeps up."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None  # None: the supervisor's Flink environment
    proc: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    state: str = "new"  # running | backoff | gave_up | stopped
    restarts: int = 0
    recent: deque[float] = field(default_factory=deque)  # monotonic times of restarts
    next_start: float = 0.0
    last_exit: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.proc.pid if self.proc is not None else None,
            "state": self.state,
            "started_at": self.started_at,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }


class Supervisor:
    """Runs the children until told to stop; see the module docstring."""

    def __init__(
        self,
        home: FlinkHome,
        conf_dir: Path,
        log_dir: Path,
        run_dir: Path,
        task_managers: int,
        policy: RestartPolicy | None = None,
        submitter: tuple[int, int] | None = None,
    ) -> None:
        self.env = home.env(conf_dir, log_dir)
        self.log_dir = log_dir
        self.run_dir = run_dir
        self.children = [Child("jobmanager", [str(home.bin / "jobmanager.sh"), "start-foreground"])]
        self.children += [
            Child(f"taskmanager-{i}", [str(home.bin / "taskmanager.sh"), "start-foreground"])
            for i in range(1, task_managers + 1)
        ]
        if submitter is not None:
            port, rest_port = submitter
            script = Path(__file__).with_name("submitter.py")
            argv = [str(home.python), str(script), "--port", str(port)]
            argv += ["--target", f"127.0.0.1:{rest_port}"]
            # As a script, without its folder on sys.path (Python 3.11+).
            self.children.append(Child("submitter", argv, {**self.env, "PYTHONSAFEPATH": "1"}))
        self.policy = policy or RestartPolicy()
        self.stopping = False
        self.exit_code = 0
        self._outputs: dict[str, IO[bytes]] = {}
        self._prctl = _load_prctl()

    # -- lifecycle -------------------------------------------------------------

    def run(self) -> int:
        """Start the children and watch them until SIGTERM/SIGINT; returns the exit code."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        lock = (self.run_dir / LOCK_FILE).open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.error("another supervisor holds %s; not starting", self.run_dir / LOCK_FILE)
            return 2
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        atomic_write(self.run_dir / PID_FILE, f"{os.getpid()}\n")
        log.info("supervisor %d: starting %d children", os.getpid(), len(self.children))
        try:
            for child in self.children:
                self._start(child)
            self._write_state()
            while not self.stopping:
                if self._tick():
                    self._write_state()
                time.sleep(POLL_S)
        finally:
            self._shutdown()
            self._write_state()
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / PID_FILE).unlink()
            for out in self._outputs.values():
                out.close()
            lock.close()
        log.info("supervisor %d: stopped (exit %d)", os.getpid(), self.exit_code)
        return self.exit_code

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping = True

    def _start(self, child: Child) -> None:
        out = self._outputs.get(child.name)
        if out is None:
            # What the scripts print before the JVM takes over its own .out/.err files
            # (a bad memory setting, no java): the first place to look when a child flaps.
            out = (self.log_dir / f"{child.name}.console").open("ab")
            self._outputs[child.name] = out
        parent = os.getpid()
        prctl = self._prctl

        def in_child() -> None:
            # Runs between fork and exec. The JVM keeps this across exec, so it
            # gets SIGTERM if the supervisor dies without cleaning up.
            if prctl is not None:
                prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
                if os.getppid() != parent:  # the supervisor died before prctl ran
                    os.kill(os.getpid(), signal.SIGTERM)

        try:
            child.proc = subprocess.Popen(  # noqa: S603 - Flink's own scripts
                child.argv,
                env=child.env if child.env is not None else self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=in_child,  # the supervisor has no threads, so this is safe
            )
        except OSError as exc:  # e.g. fork failed under memory pressure: try again later
            self._retry_or_give_up(child, time.monotonic(), f"could not start ({exc})")
            return
        child.started_at = iso(datetime.now(UTC), "milliseconds")
        child.state = "running"
        log.info("%s started (pid %d)", child.name, child.proc.pid)

    def _tick(self) -> bool:
        """Notice exits and run due restarts; True when something changed."""
        changed = False
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                changed = True
                self._on_exit(child, now)
            elif child.state == "backoff" and now >= child.next_start and not self.stopping:
                changed = True
                child.restarts += 1
                child.recent.append(now)
                self._start(child)
        return changed

    def _on_exit(self, child: Child, now: float) -> None:
        if child.proc is None:
            return
        code = child.proc.returncode
        _kill_group(child.proc.pid, signal.SIGKILL)  # leftovers, e.g. Python workers
        child.proc = None
        child.last_exit = code
        if self.stopping:
            child.state = "stopped"
            return
        self._retry_or_give_up(child, now, f"exited (code {code})")

    def _retry_or_give_up(self, child: Child, now: float, what: str) -> None:
        """Schedule a restart, unless the child has used up its restarts in the window."""
        child.proc = None
        while child.recent and now - child.recent[0] > self.policy.window_s:
            child.recent.popleft()
        if len(child.recent) >= self.policy.limit:
            child.state = "gave_up"
            log.error(
                "%s %s after %d restarts in %.0f s: giving up on it; see its logs in %s",
                child.name,
                what,
                len(child.recent),
                self.policy.window_s,
                self.log_dir,
            )
            if child.name == "jobmanager":
                # Task managers without a job manager are of no use: stop everything,
                # so `status` shows the cluster down instead of half up.
                self.stopping = True
                self.exit_code = 1
            return
        child.state = "backoff"
        child.next_start = now + self.policy.backoff_s
        log.warning("%s %s: restarting in %.1f s", child.name, what, self.policy.backoff_s)

    def _shutdown(self) -> None:
        """SIGTERM every child's group, SIGKILL what is left after policy.term_timeout_s."""
        self.stopping = True
        pending = [c for c in self.children if c.proc is not None]
        for child in pending:
            if child.proc is not None and child.proc.poll() is None:
                log.info("stopping %s (pid %d)", child.name, child.proc.pid)
                _kill_group(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.policy.term_timeout_s
        while pending:
            for child in [c for c in pending if c.proc is not None and c.proc.poll() is not None]:
                self._on_exit(child, time.monotonic())  # at once: clears its group, too
                pending.remove(child)
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        for child in pending:
            if child.proc is None:
                continue
            log.warning(
                "%s did not stop in %.0f s: killing it", child.name, self.policy.term_timeout_s
            )
            _kill_group(child.proc.pid, signal.SIGKILL)
            child.proc.wait()
            self._on_exit(child, time.monotonic())

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "updated_at": iso(datetime.now(UTC), "milliseconds"),
            "stopping": self.stopping,
            "children": [c.to_json() for c in self.children],
        }
        atomic_write(self.run_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")


def _load_prctl() -> Any:
    """libc's prctl on Linux (for the parent-death signal), None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _kill_group(pgid: int, sig: int) -> None:
    # The kernel does not reuse a pid while it names a live process group, so a
    # group that still answers to this id is the child's.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# -- process helpers (also used by `cluster`) -----------------------------------


def read_pid(path: Path) -> int | None:
    """The pid in a pid file; None when it is missing or garbled."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited but not yet reaped, counts as gone)."""
    # Reap it if it is our own child (start() launches the supervisor).
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return psutil.Process(pid).status() not in _GONE
    except psutil.NoSuchProcess:  # ended since os.kill (a zombie too)
        return False
    except psutil.Error:  # not ours to look at: it answered os.kill, so it runs
        return True


def cmdline(pid: int) -> list[str]:
    """A process's arguments ([] when unknown: gone, or not ours to read)."""
    try:
        return [a for a in psutil.Process(pid).cmdline() if a]
    except psutil.Error:
        return []


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def processes_where(*, session: int | None = None, arg: str | None = None) -> list[int]:
    """Live pids in `session`, or whose arguments include `arg` exactly."""
    found = []
    me = os.getpid()
    attrs = ["status", "cmdline"] if arg is not None else ["status"]
    for proc in psutil.process_iter(attrs):
        if proc.pid == me or proc.info["status"] in _GONE:
            continue
        if (session is not None and _session(proc.pid) == session) or (
            arg is not None and arg in (proc.info["cmdline"] or [])
        ):
            found.append(proc.pid)
    return found


# -- entry point -----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m personatag.engines.flink.runtime.supervisor",
        description="Run a local Flink session cluster, supervised (see `personatag flink start`).",
    )
    parser.add_argument("--flink-home", type=Path, required=True)
    parser.add_argument("--flink-python", type=Path, required=True)
    parser.add_argument("--conf-dir", type=Path, required=True)
    parser.add_argument("--log-dir", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--task-managers", type=int, default=1)
    parser.add_argument("--submitter-port", type=int, help="Run the warm job submitter here.")
    parser.add_argument(
        "--rest-port", type=int, help="The cluster's REST port (for the submitter)."
    )
    parser.add_argument("--log-json", action="store_true", help="Log JSON lines.")
    parser.add_argument("--restart-backoff", type=float, default=RESTART_BACKOFF_S)
    parser.add_argument("--restart-limit", type=int, default=RESTART_LIMIT)
    parser.add_argument("--restart-window", type=float, default=RESTART_WINDOW_S)
    parser.add_argument("--term-timeout", type=float, default=TERM_TIMEOUT_S)
    args = parser.parse_args(argv)
    if args.task_managers < 1:
        parser.error("--task-managers must be at least 1")
    if (args.submitter_port is None) != (args.rest_port is None):
        parser.error("--submitter-port and --rest-port go together")

    from personatag.logs import configure_logging

    configure_logging(logging.INFO, json=args.log_json)
    home = FlinkHome(python=args.flink_python.absolute(), home=args.flink_home.absolute())
    supervisor = Supervisor(
        home,
        args.conf_dir.absolute(),
        args.log_dir.absolute(),
        args.run_dir.absolute(),
        args.task_managers,
        RestartPolicy(
            args.restart_backoff, args.restart_limit, args.restart_window, args.term_timeout
        ),
        None if args.submitter_port is None else (args.submitter_port, args.rest_port),
    )
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
