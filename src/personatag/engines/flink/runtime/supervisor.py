"""Keep a local Flink session cluster's processes up, and take them all down together.

`personatag flink start` runs this as a detached process:

    python -m personatag.engines.flink.runtime.supervisor --flink-home H --flink-python P \\
        --conf-dir C --log-dir L --run-dir R --task-managers N \\
        [--submitter-port S --rest-port REST]

It starts one JobManager and N TaskManagers with Flink's own
`bin/{jobmanager,taskmanager}.sh start-foreground` (each `exec`s its way to the
JVM, so a child's pid is the JVM's; a task manager's Flink resource id is its
child name, `taskmanager-N`), and with --submitter-port the warm job
submitter (`submitter.py`, under the PyFlink interpreter); it restarts a child
that dies. With --autoscale-max it also adds and removes task managers as
the load asks (autoscale.py; --store-url-file names the store whose backlog
and queued requests count), and on SIGTERM
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
from typing import IO, TYPE_CHECKING, Any

import psutil

from personatag.engines.flink.runtime.home import FlinkHome
from personatag.files import atomic_write
from personatag.times import iso

if TYPE_CHECKING:  # the autoscaler reads the store: imported only when it runs
    from personatag.engines.flink.runtime.autoscale import ScalePolicy, Scaling

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
    state: str = "new"  # running | backoff | gave_up | stopped | retiring
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
        autoscale: Scaling | None = None,
        lib_dir: Path | None = None,
    ) -> None:
        self.env = home.env(conf_dir, log_dir)
        if lib_dir is not None:  # the cluster's class path (cluster.link_lib)
            self.env["FLINK_LIB_DIR"] = str(lib_dir)
        self.home = home
        self.log_dir = log_dir
        self.run_dir = run_dir
        self.children = [Child("jobmanager", [str(home.bin / "jobmanager.sh"), "start-foreground"])]
        self.children += [self._task_manager(i) for i in range(1, task_managers + 1)]
        self.scaling = autoscale
        # Task manager numbers only go up: a new one never takes a retired
        # one's name (nor its resource id, which a stale registration may hold).
        self._next_tm = task_managers + 1
        self._registered = 0  # kept task managers the cluster listed at the last look
        self._next_look = 0.0
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

    def _task_manager(self, i: int) -> Child:
        return Child(
            f"taskmanager-{i}", [str(self.home.bin / "taskmanager.sh"), "start-foreground"]
        )

    def task_managers(self) -> list[Child]:
        """The task managers kept up (not those being retired)."""
        return [
            c for c in self.children if c.name.startswith("taskmanager-") and c.state != "retiring"
        ]

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
                changed = self._tick()
                if self.scaling is not None and time.monotonic() >= self._next_look:
                    self._next_look = time.monotonic() + self.scaling.autoscaler.policy.interval_s
                    changed = self._autoscale() or changed
                if changed:
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

        argv = child.argv
        if child.name.startswith("taskmanager-"):
            # The resource id names the child (and its start), so the cluster's
            # view of a task manager (REST /taskmanagers) says which process it is.
            argv = [*argv, f"-Dtaskmanager.resource-id={resource_id(child)}"]
        try:
            child.proc = subprocess.Popen(  # noqa: S603 - Flink's own scripts
                argv,
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
        for child in list(self.children):  # a retired child leaves the list
            if child.proc is not None and child.proc.poll() is not None:
                changed = True
                self._on_exit(child, now)
            elif child.state == "retiring" and child.proc is not None and now >= child.next_start:
                log.warning("%s did not stop when retired: killing it", child.name)
                _kill_group(child.proc.pid, signal.SIGKILL)
                child.next_start = float("inf")  # once; the exit is noticed next tick
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
        if child.state == "retiring":  # scaled in: gone for good
            self.children.remove(child)
            log.info("%s retired (exit %s)", child.name, code)
            return
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

    # -- autoscaling (autoscale.py) ------------------------------------------------

    def _autoscale(self) -> bool:
        """Measure the load, decide, and add or retire task managers; True when
        the state file has news. A look that cannot measure everything (the
        cluster starting, the store away) changes nothing and says why."""
        scaling = self.scaling
        if scaling is None or self.stopping:
            return False
        try:
            look = scaling.measure()
        except Exception as exc:  # a failed look must not stop the cluster
            problem: str | None = f"the load could not be measured: {exc}"
        else:
            problem = look.problem
        if problem is not None:
            if problem != scaling.problem:
                log.warning("autoscale: %s; no change until it can", problem)
            scaling.problem = problem
            return True
        scaling.problem = None
        # Task managers that gave up (they keep failing) are not capacity.
        mine = [c for c in self.task_managers() if c.state != "gave_up"]
        self._registered = sum(resource_id(c) in look.registered for c in mine)
        idle = [c for c in mine if resource_id(c) in look.idle and c.state == "running"]
        d = scaling.autoscaler.decide(time.monotonic(), look.load, len(mine), len(idle))
        scaling.counts[d.action] = scaling.counts.get(d.action, 0) + 1
        if d.action == "up":
            for _ in range(d.target - d.current):
                child = self._task_manager(self._next_tm)
                self._next_tm += 1
                self.children.append(child)
                self._start(child)
            log.info("autoscale: %d -> %d task managers: %s", d.current, d.target, d.reason)
        elif d.action == "down":
            # Asked again just before: a task manager given a job since the
            # look is no longer idle and stays. The newest idle ones go first.
            try:
                still = scaling.idle_now()
            except Exception as exc:  # the cluster stopped answering: retire none
                log.warning("autoscale: not shrinking, the cluster does not answer: %s", exc)
                return True
            going = [c for c in idle if resource_id(c) in still]
            going.sort(key=lambda c: int(c.name.rsplit("-", 1)[1]), reverse=True)
            for child in going[: d.current - d.target]:
                child.state = "retiring"
                child.next_start = time.monotonic() + self.policy.term_timeout_s  # kill after
                if child.proc is not None:
                    _kill_group(child.proc.pid, signal.SIGTERM)
                else:
                    self.children.remove(child)
            log.info("autoscale: %d -> %d task managers: %s", d.current, d.target, d.reason)
        return True

    def _write_state(self) -> None:
        state: dict[str, Any] = {
            "pid": os.getpid(),
            "updated_at": iso(datetime.now(UTC), "milliseconds"),
            "stopping": self.stopping,
            "children": [c.to_json() for c in self.children],
        }
        if self.scaling is not None:
            mine = [c for c in self.task_managers() if c.state != "gave_up"]
            state["autoscale"] = self.scaling.state(
                len(mine),
                self._registered,
                sum(c.state == "retiring" for c in self.children),
            )
        atomic_write(self.run_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")


def resource_id(child: Child) -> str:
    """The Flink resource id a task manager child runs under: its name and how
    often it was restarted (a restarted one registers as new)."""
    return f"{child.name}-r{child.restarts}"


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
    parser.add_argument("--lib-dir", type=Path, help="The JVMs' FLINK_LIB_DIR (default: lib/).")
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
    scale = parser.add_argument_group("autoscaling (autoscale.py; on with --autoscale-max)")
    scale.add_argument("--autoscale-min", type=int, default=1)
    scale.add_argument("--autoscale-max", type=int)
    scale.add_argument("--autoscale-target", type=float, default=0.7)
    scale.add_argument("--autoscale-interval", type=float, default=10.0)
    scale.add_argument("--autoscale-stabilisation", type=float, default=60.0)
    scale.add_argument("--autoscale-down-delay", type=float, default=300.0)
    scale.add_argument("--autoscale-rescales-per-hour", type=int, default=12)
    scale.add_argument("--autoscale-backlog-per-tm", type=int, default=20_000)
    scale.add_argument("--autoscale-busy-window", type=float, default=60.0)
    scale.add_argument("--slots", type=int, default=1, help="Slots per task manager.")
    scale.add_argument("--parallelism", type=int, default=1, help="Slots a job takes.")
    scale.add_argument(
        "--store-url-file", type=Path, help="A file naming the store whose queued requests count."
    )
    scale.add_argument(
        "--count-backlog", action="store_true", help="The stream runs on Flink: count its backlog."
    )
    args = parser.parse_args(argv)
    if args.task_managers < 1:
        parser.error("--task-managers must be at least 1")
    if args.submitter_port is not None and args.rest_port is None:
        parser.error("--submitter-port needs --rest-port")
    if args.autoscale_max is not None and args.rest_port is None:
        parser.error("--autoscale-max needs --rest-port")
    scaling = None
    if args.autoscale_max is not None:
        from personatag.engines.flink.runtime.autoscale import ScalePolicy

        try:
            policy = ScalePolicy(
                minimum=args.autoscale_min,
                maximum=args.autoscale_max,
                target_utilisation=args.autoscale_target,
                interval_s=args.autoscale_interval,
                stabilisation_s=args.autoscale_stabilisation,
                down_delay_s=args.autoscale_down_delay,
                rescales_per_hour=args.autoscale_rescales_per_hour,
                backlog_per_tm=args.autoscale_backlog_per_tm,
                busy_window_s=args.autoscale_busy_window,
            )
        except ValueError as exc:
            parser.error(str(exc))
        scaling = _scaling(policy, args)

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
        scaling,
        None if args.lib_dir is None else args.lib_dir.absolute(),
    )
    return supervisor.run()


def _scaling(policy: ScalePolicy, args: argparse.Namespace) -> Scaling:
    from personatag.engines.flink.runtime.autoscale import Autoscaler, LoadMeter, Scaling
    from personatag.engines.flink.runtime.rest import FlinkRest

    store_url = None
    if args.store_url_file is not None:  # a file, not argv: it may hold a password
        store_url = args.store_url_file.read_text().strip() or None
    meter = LoadMeter(
        FlinkRest(f"http://127.0.0.1:{args.rest_port}", timeout=2.0),
        store_url,
        parallelism=args.parallelism,
        slots_per_tm=args.slots,
        backlog=args.count_backlog,
    )
    return Scaling(Autoscaler(policy), meter, meter.idle_now)


if __name__ == "__main__":
    sys.exit(main())
