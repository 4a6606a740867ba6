"""The local Flink session cluster: its files, its config, start, stop and status.

Everything lives under `$PERSONATAG_DATA_DIR/flink/`: `conf/` (config.yaml and
the logging files), `log/` (Flink's logs), `run/` (the supervisor's pid, state
and log) and `tmp/`. The processes belong to a supervisor (`supervisor.py`);
`start` launches it detached and waits for the cluster, `stop` signals it.

Ports derive from `flink_rest_port` P so that clusters with different P (at
least 121 apart) never collide: REST P, JobManager RPC P+1, blob server P+2,
Prometheus reporters P+100..P+120 (the JobManager and each TaskManager take the
first free one); TaskManager RPC and data ports are chosen by Flink.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from personatag.config import Settings
from personatag.engines.flink.runtime import supervisor as sv
from personatag.engines.flink.runtime.home import (
    JAVA_MIN,
    FlinkHome,
    java_version,
    locate,
    rest_url,
)
from personatag.engines.flink.runtime.rest import FlinkRest, FlinkRestError, FlinkUnreachable
from personatag.engines.flink.runtime.submitter import SUBMITTER_OFFSET
from personatag.errors import ConfigError, PersonatagError
from personatag.files import atomic_write
from personatag.times import iso

METRICS_OFFSET = 100
METRICS_SPAN = 20
# A lost TaskManager is declared dead after this long without heartbeats (or
# sooner, after two failed heartbeat RPCs when its JVM is gone).
HEARTBEAT_INTERVAL_MS = 3_000
HEARTBEAT_TIMEOUT_MS = 15_000
# Seconds `stop` gives leftover processes after SIGTERM before SIGKILL.
STRAY_TERM_S = 10.0
TERMINAL_JOB_STATES = frozenset({"FINISHED", "FAILED", "CANCELED"})


@dataclass(frozen=True)
class ClusterLayout:
    """Where one local cluster keeps its files (all absolute paths)."""

    root: Path

    @classmethod
    def of(cls, settings: Settings) -> ClusterLayout:
        return cls((settings.data_dir / "flink").absolute())

    @property
    def conf(self) -> Path:
        return self.root / "conf"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def lib(self) -> Path:
        return self.root / "lib"

    @property
    def config_file(self) -> Path:
        return self.conf / "config.yaml"

    @property
    def pid_file(self) -> Path:
        return self.run / sv.PID_FILE

    @property
    def state_file(self) -> Path:
        return self.run / sv.STATE_FILE

    @property
    def supervisor_log(self) -> Path:
        return self.run / "supervisor.log"


@dataclass(frozen=True)
class Ports:
    """The fixed ports of a cluster whose REST port is `rest`."""

    rest: int

    @classmethod
    def of(cls, settings: Settings) -> Ports:
        port = settings.flink_rest_port
        if not 1 <= port <= 65535 - METRICS_OFFSET - METRICS_SPAN:
            raise ConfigError(
                f"PERSONATAG_FLINK_REST_PORT={port} does not fit the local cluster, which also "
                f"uses the next three ports and {METRICS_OFFSET}..{METRICS_OFFSET + METRICS_SPAN} "
                f"above it: use 1..{65535 - METRICS_OFFSET - METRICS_SPAN}"
            )
        return cls(port)

    @property
    def rpc(self) -> int:
        return self.rest + 1

    @property
    def blob(self) -> int:
        return self.rest + 2

    @property
    def submitter(self) -> int:
        return self.rest + SUBMITTER_OFFSET

    @property
    def fixed(self) -> tuple[int, int, int, int]:
        return (self.rest, self.rpc, self.blob, self.submitter)

    @property
    def metrics(self) -> str:
        first = self.rest + METRICS_OFFSET
        return f"{first}-{first + METRICS_SPAN}"


# -- config ----------------------------------------------------------------------


def distribution_java_opts(home: FlinkHome) -> str:
    """`env.java.opts.all` of the distribution's config.yaml ('' if absent).

    It holds the --add-opens/--add-exports flags Flink needs on Java 17+; a config
    without them fails at start, so ours copies them from the Flink in use.
    """
    try:
        lines = (home.home / "conf" / "config.yaml").read_text().splitlines()
    except OSError:
        return ""
    # Enough YAML for Flink's own file (block mappings, flat or nested keys):
    # avoids a YAML dependency for one value.
    path: list[tuple[int, str]] = []
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip(" "))
        key, _, value = stripped.partition(":")
        while path and path[-1][0] >= indent:
            path.pop()
        path.append((indent, key.strip()))
        if ".".join(k for _, k in path) == "env.java.opts.all" and value.strip():
            return value.strip().strip("\"'")
    return ""


def config_values(settings: Settings, home: FlinkHome, layout: ClusterLayout) -> dict[str, Any]:
    """The cluster's configuration as flat Flink keys (sizes from settings)."""
    ports = Ports.of(settings)
    local = "127.0.0.1"
    python = str(home.python)
    return {
        "env.java.opts.all": distribution_java_opts(home),
        "env.pid.dir": str(layout.run),
        "env.log.dir": str(layout.log),
        # The JVM writes its stdout/stderr to .out/.err files in the log dir
        # instead of duplicating the whole log on the supervisor's console.
        "env.stdout-err.redirect-to-file": True,
        "jobmanager.bind-host": local,
        "jobmanager.rpc.address": local,
        "jobmanager.rpc.port": ports.rpc,
        "jobmanager.memory.process.size": f"{settings.flink_jobmanager_mb}m",
        "jobmanager.execution.failover-strategy": "region",
        "blob.server.port": str(ports.blob),
        "taskmanager.bind-host": local,
        "taskmanager.host": local,
        "taskmanager.rpc.port": "0",
        "taskmanager.data.port": 0,
        "taskmanager.numberOfTaskSlots": settings.flink_slots,
        "taskmanager.memory.process.size": f"{settings.flink_taskmanager_mb}m",
        "parallelism.default": settings.flink_parallelism,
        "rest.address": local,
        "rest.bind-address": local,
        "rest.port": ports.rest,
        "web.submit.enable": False,
        "web.cancel.enable": False,
        "web.tmpdir": str(layout.tmp / "web"),
        "io.tmp.dirs": str(layout.tmp),
        "heartbeat.interval": HEARTBEAT_INTERVAL_MS,
        "heartbeat.timeout": HEARTBEAT_TIMEOUT_MS,
        # A failed job stays failed: the job watchdog reports it instead of Flink
        # restarting it forever.
        "restart-strategy.type": "none",
        "python.executable": python,
        "python.client.executable": python,
        "metrics.reporter.prom.factory.class": (
            "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
        ),
        "metrics.reporter.prom.port": ports.metrics,
    }


def _yaml(values: dict[str, Any]) -> str:
    """Flat dotted keys as nested YAML (the form Flink's own config.yaml uses)."""
    tree: dict[str, Any] = {}
    for dotted, value in values.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"config key {dotted} nests under a value")
        if leaf in node:
            raise ValueError(f"config key {dotted} is given twice or nests another key")
        node[leaf] = value

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        return json.dumps(str(value))  # a JSON string is a valid YAML scalar

    def render(node: dict[str, Any], depth: int) -> list[str]:
        lines = []
        for key, value in node.items():
            pad = "  " * depth
            if isinstance(value, dict):
                lines += [f"{pad}{key}:", *render(value, depth + 1)]
            else:
                lines.append(f"{pad}{key}: {scalar(value)}")
        return lines

    return "\n".join(render(tree, 0)) + "\n"


def write_config(settings: Settings, home: FlinkHome) -> Path:
    """Write conf/config.yaml (and Flink's logging files) for this data dir; returns its path."""
    layout = ClusterLayout.of(settings)
    for folder in (layout.conf, layout.log, layout.run, layout.tmp):
        folder.mkdir(parents=True, exist_ok=True)
    for pattern in ("log4j*.properties", "logback*.xml"):
        for src in (home.home / "conf").glob(pattern):
            shutil.copyfile(src, layout.conf / src.name)
    header = (
        "# Written by `personatag flink start` from PERSONATAG_* settings; edits are replaced.\n"
    )
    atomic_write(layout.config_file, header + _yaml(config_values(settings, home, layout)))
    link_lib(home, layout.lib)
    return layout.config_file


def link_lib(home: FlinkHome, lib: Path) -> None:
    """The cluster's class path (its JVMs' FLINK_LIB_DIR): the distribution's
    lib/ jars and opt/'s flink-python jar, as links.

    Flink keeps flink-python in opt/, so each Python job ships it and a task
    manager loads its classes (Beam's runner among them) into the job's own
    class loader, which is never freed: measured here, each start of the
    stream job left ~27 MB of metaspace behind, and the task manager died of
    `OutOfMemoryError: Metaspace` after 7-8 of them. From lib/ they are loaded
    once (Flink resolves `org.apache.flink.` classes parent-first)."""
    lib.mkdir(parents=True, exist_ok=True)
    wanted = {j.name: j for j in sorted((home.home / "lib").glob("*.jar"))}
    wanted |= {j.name: j for j in sorted((home.home / "opt").glob("flink-python*.jar"))}
    for old in lib.iterdir():
        if old.name not in wanted or old.resolve() != wanted[old.name].resolve():
            old.unlink()
    for name, jar in wanted.items():
        if not (lib / name).exists():
            (lib / name).symlink_to(jar)


# -- processes ---------------------------------------------------------------------


def supervisor_pid(layout: ClusterLayout) -> int | None:
    """The pid of this data dir's running supervisor, None when there is none."""
    pid = sv.read_pid(layout.pid_file)
    if pid is None or not sv.pid_alive(pid):
        return None
    args = sv.cmdline(pid)
    if args and not (
        "personatag.engines.flink.runtime.supervisor" in args and str(layout.run) in args
    ):
        return None  # the pid was reused by something else
    return pid


def _cluster_processes(layout: ClusterLayout) -> list[int]:
    """Live processes of this cluster: in the supervisor's session, or Flink JVMs on our conf."""
    found = set(sv.processes_where(arg=str(layout.conf)))
    recorded = sv.read_pid(layout.pid_file)
    # Only a dead supervisor's pid, or a live one that is ours, can name our
    # session: a live pid that is someone else's was reused, and so was its session.
    if recorded is not None and (not sv.pid_alive(recorded) or supervisor_pid(layout) == recorded):
        found |= set(sv.processes_where(session=recorded))
    return sorted(found)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(pids: list[int], deadline: float) -> list[int]:
    """Wait until every pid has exited or the deadline passes; returns the survivors."""
    left = [p for p in pids if sv.pid_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if sv.pid_alive(p)]
    return left


def port_in_use(port: int) -> bool:
    """True when something listens on 127.0.0.1:port (a bind there would fail)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


_ERROR_WORDS = ("ERROR", "Exception", "Error:")


def _error_lines(paths: list[Path]) -> list[str]:
    """Lines of these files (their last 300 each) that report an error."""
    found: list[str] = []
    for path in paths:
        try:
            text = path.read_text(errors="replace").splitlines()[-300:]
        except OSError:
            continue
        found += [ln.strip() for ln in text if any(w in ln for w in _ERROR_WORDS)]
    return found


def _log_tail(layout: ClusterLayout, component: str, lines: int = 3) -> str:
    """The last error lines of a component's logs, else of the supervisor's, as one line."""
    patterns = {
        "jobmanager": ("jobmanager.console", "*standalonesession*"),
        "taskmanager": ("taskmanager-*.console", "*taskexecutor*"),
    }.get(component, ())
    files = [f for p in patterns for f in layout.log.glob(p) if f.is_file()]
    files.sort(key=lambda f: f.stat().st_mtime)
    picked = _error_lines(files[-3:]) or _error_lines([layout.supervisor_log])
    if not picked:
        try:
            picked = layout.supervisor_log.read_text(errors="replace").splitlines()
        except OSError:
            return f"no logs in {layout.log}"
    tail = " | ".join(picked[-lines:])
    return (tail[:700] + " ...") if len(tail) > 700 else tail


# -- start / stop / status -------------------------------------------------------------


@contextlib.contextmanager
def _exclusive(layout: ClusterLayout) -> Iterator[None]:
    """One start or stop at a time per data dir: two starts at once would race
    for the ports, and the loser's clean-up would stop the winner's cluster."""
    layout.run.mkdir(parents=True, exist_ok=True)
    with (layout.run / "control.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _local_only(settings: Settings, verb: str) -> None:
    if settings.flink_url:
        raise ConfigError(
            f"PERSONATAG_FLINK_URL is set ({settings.flink_url}): that cluster is run "
            f"elsewhere, there is nothing to {verb} here; unset it to use the local cluster"
        )


def _health(settings: Settings, rest: FlinkRest, *, running: bool = False) -> tuple[bool, str]:
    """(healthy, what is missing) from /overview: every task manager in, with its
    slots (of a `running` cluster that scales itself: at least its minimum)."""
    try:
        ov = rest.overview()
    except (FlinkUnreachable, FlinkRestError):  # a starting JobManager answers 503 for a while
        return False, "jobmanager"
    want_tms = settings.flink_start_task_managers
    if running and settings.flink_autoscale:
        want_tms = settings.flink_autoscale_min
    want_slots = want_tms * settings.flink_slots
    if ov.get("taskmanagers", 0) >= want_tms and ov.get("slots-total", 0) >= want_slots:
        return True, ""
    return False, "taskmanager"


def start(settings: Settings, wait_s: float = 90.0) -> dict[str, Any]:
    """Start the local cluster and wait until all its task managers are in.

    Idempotent: a running, healthy cluster is left as it is (`started` is
    false). On failure whatever this call started is stopped again and the
    error carries the tail of the log that explains it. Returns `status()`
    plus `started` and `seconds`.
    """
    _local_only(settings, "start")
    layout = ClusterLayout.of(settings)
    ports = Ports.of(settings)
    with _exclusive(layout):
        return _start(settings, layout, ports, wait_s)


def _start(
    settings: Settings, layout: ClusterLayout, ports: Ports, wait_s: float
) -> dict[str, Any]:
    t0 = time.monotonic()
    deadline = t0 + wait_s
    rest = FlinkRest(rest_url(settings), timeout=2.0)

    running = supervisor_pid(layout)
    if running is not None:
        missing = "jobmanager"
        while time.monotonic() < deadline:
            ok, missing = _health(settings, rest, running=True)
            if ok:
                return _started(settings, False, t0)
            time.sleep(0.5)
        raise PersonatagError(
            f"the Flink cluster under {layout.root} (supervisor pid {running}) runs but is not "
            f"healthy after {wait_s:.0f} s ({missing} missing): "
            f"{_log_tail(layout, _culprit(layout, missing))}; "
            "run `personatag flink stop`, then start again"
        )

    _cleanup_leftovers(layout)
    busy = [p for p in ports.fixed if port_in_use(p)]
    if busy:
        if ports.rest in busy and _answers_as_flink(rest):
            raise PersonatagError(
                f"a Flink cluster not run from {layout.root} already answers on "
                f"127.0.0.1:{ports.rest}: use it with PERSONATAG_FLINK_URL="
                f"http://127.0.0.1:{ports.rest}, or set PERSONATAG_FLINK_REST_PORT to a free port"
            )
        raise PersonatagError(
            f"port {', '.join(map(str, busy))} on 127.0.0.1 is in use by another program; the "
            f"local cluster needs {ports.rest}-{ports.submitter} and {ports.metrics}: set "
            "PERSONATAG_FLINK_REST_PORT to another port"
        )

    home = locate(settings)
    java = java_version()
    if java is None or java < JAVA_MIN:
        found = "no java on PATH or in JAVA_HOME" if java is None else f"java {java}"
        raise ConfigError(f"Flink needs Java {JAVA_MIN} or newer, found {found}: install a JDK")
    write_config(settings, home)
    proc = _launch(settings, home, layout)

    missing = "jobmanager"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _log_tail(layout, _culprit(layout, missing))
            if proc.returncode != 2:  # 2: another supervisor holds the run dir; not ours to stop
                _cleanup_leftovers(layout)
            raise PersonatagError(
                f"the Flink supervisor exited at start (code {proc.returncode}): {tail}"
            )
        ok, missing = _health(settings, rest)
        if ok:
            return _started(settings, True, t0)
        if _given_up(layout):
            break  # it keeps failing: waiting longer would not help
        time.sleep(0.5)
    tail = _log_tail(layout, _culprit(layout, missing))
    _stop(layout, ports, wait_s=60.0)
    raise PersonatagError(
        f"the Flink cluster did not come up within {time.monotonic() - t0:.0f} s ({missing} "
        f"not ready), so it was stopped again: {tail} (logs in {layout.log})"
    )


def _state(layout: ClusterLayout) -> dict[str, Any]:
    """The supervisor's state file as it last wrote it ({} if none or unreadable)."""
    try:
        state = json.loads(layout.state_file.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _children(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The supervisor's children as its state describes them ([] if none)."""
    children = state.get("children")
    return children if isinstance(children, list) else []


def _autoscale_state(state: dict[str, Any]) -> dict[str, Any]:
    """The autoscaler's last decisions as the supervisor's state has them
    ({"enabled": false} when the cluster does not scale itself)."""
    scale = state.get("autoscale")
    return scale if isinstance(scale, dict) else {"enabled": False}


def autoscale_state(settings: Settings) -> dict[str, Any] | None:
    """The local cluster's autoscaler state (None: no supervisor of this data
    dir runs, or the cluster is remote)."""
    if settings.flink_url:
        return None
    layout = ClusterLayout.of(settings)
    if supervisor_pid(layout) is None:
        return None
    return _autoscale_state(_state(layout))


def _given_up(layout: ClusterLayout) -> bool:
    """True once the supervisor has stopped restarting some child."""
    return any(c.get("state") == "gave_up" for c in _children(_state(layout)))


def _culprit(layout: ClusterLayout, missing: str) -> str:
    """The component whose log explains a failed start: one that exited, else the missing one."""
    exited = [c for c in _children(_state(layout)) if c.get("last_exit") is not None]
    if not exited:
        return missing
    worst = max(exited, key=lambda c: c.get("restarts", 0))
    return "jobmanager" if worst["name"] == "jobmanager" else "taskmanager"


def _answers_as_flink(rest: FlinkRest) -> bool:
    try:
        return "flink-version" in rest.get("/config")
    except PersonatagError:
        return False


def _launch(settings: Settings, home: FlinkHome, layout: ClusterLayout) -> subprocess.Popen[bytes]:
    """Start the supervisor detached (own session), its output to run/supervisor.log."""
    argv = [
        sys.executable,
        "-m",
        "personatag.engines.flink.runtime.supervisor",
        "--flink-home",
        str(home.home),
        "--flink-python",
        str(home.python),
        "--conf-dir",
        str(layout.conf),
        "--log-dir",
        str(layout.log),
        "--run-dir",
        str(layout.run),
        "--lib-dir",
        str(layout.lib),
        "--task-managers",
        str(settings.flink_start_task_managers),
        "--rest-port",
        str(Ports.of(settings).rest),
    ]
    if settings.flink_submitter:
        argv += ["--submitter-port", str(Ports.of(settings).submitter)]
    if settings.flink_autoscale:
        s = settings
        argv += [
            *("--autoscale-min", str(s.flink_autoscale_min)),
            *("--autoscale-max", str(s.flink_autoscale_max)),
            *("--autoscale-target", str(s.flink_autoscale_target)),
            *("--autoscale-interval", str(s.flink_autoscale_interval_s)),
            *("--autoscale-stabilisation", str(s.flink_autoscale_stabilisation_s)),
            *("--autoscale-down-delay", str(s.flink_autoscale_down_delay_s)),
            *("--autoscale-rescales-per-hour", str(s.flink_autoscale_rescales_per_hour)),
            *("--autoscale-backlog-per-tm", str(s.flink_autoscale_backlog_per_tm)),
            *("--autoscale-busy-window", str(s.flink_autoscale_busy_window_s)),
            *("--slots", str(s.flink_slots), "--parallelism", str(s.flink_parallelism)),
            *("--store-url-file", str(_store_url_file(layout, s))),
        ]
        if s.stream_engine == "flink":
            argv.append("--count-backlog")
    with layout.supervisor_log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=layout.root,
            start_new_session=True,
        )


def _store_url_file(layout: ClusterLayout, settings: Settings) -> Path:
    """The store's URL for the autoscaling supervisor, in a file only its owner
    reads (a URL may hold a password, and a command line is public). Absolute:
    the supervisor runs in the cluster's folder, where a relative SQLite path
    would name another file."""
    from personatag.store.db import absolute_url

    path = layout.run / "store-url"
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(absolute_url(settings.resolved_store_url) + "\n")
    return path


def _started(settings: Settings, started: bool, t0: float) -> dict[str, Any]:
    out = status(settings)
    return {"started": started, "seconds": round(time.monotonic() - t0, 1), **out}


def _cleanup_leftovers(layout: ClusterLayout) -> list[int]:
    """Stop processes a dead supervisor left behind and remove its stale files."""
    strays = _cluster_processes(layout)
    if strays:
        _signal_all(strays, signal.SIGTERM)
        left = _wait_gone(strays, time.monotonic() + STRAY_TERM_S)
        _signal_all(left, signal.SIGKILL)
        _wait_gone(left, time.monotonic() + 5)
    # Flink's scripts keep their own pid files (env.pid.dir) next to ours.
    for stale in [layout.pid_file, layout.state_file, *layout.run.glob("flink-*.pid")]:
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    return strays


def stop(settings: Settings, wait_s: float = 60.0) -> dict[str, Any]:
    """Stop the local cluster and wait until its processes are gone and its REST port is free.

    Idempotent: with nothing running it only removes stale pid files. Returns
    `stopped` (whether anything was running), `seconds` and `killed` (pids that
    needed SIGKILL or outlived their supervisor).
    """
    _local_only(settings, "stop")
    layout = ClusterLayout.of(settings)
    ports = Ports.of(settings)
    with _exclusive(layout):
        return _stop(layout, ports, wait_s)


def _stop(layout: ClusterLayout, ports: Ports, wait_s: float) -> dict[str, Any]:
    t0 = time.monotonic()
    deadline = t0 + wait_s
    pid = supervisor_pid(layout)
    killed: list[int] = []
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        # The supervisor itself SIGKILLs JVMs after sv.TERM_TIMEOUT_S; leave room for that.
        if _wait_gone([pid], deadline - 5):
            killed.append(pid)
            _signal_all([pid], signal.SIGKILL)
            _wait_gone([pid], time.monotonic() + 5)
    killed += _cleanup_leftovers(layout)
    stopped = pid is not None or bool(killed)
    # Only wait for a port this cluster held: another program's is not ours to wait for.
    while stopped and port_in_use(ports.rest) and time.monotonic() < deadline:
        time.sleep(0.1)
    if stopped and port_in_use(ports.rest):
        raise PersonatagError(
            f"the Flink cluster under {layout.root} was stopped, but 127.0.0.1:{ports.rest} "
            "is still in use by another program"
        )
    return {
        "stopped": stopped,
        "seconds": round(time.monotonic() - t0, 1),
        "killed": killed,
    }


def _iso_ms(ms: Any) -> str | None:
    if not isinstance(ms, int | float) or ms <= 0:
        return None
    return iso(datetime.fromtimestamp(ms / 1000, UTC), "milliseconds")


STATUS_TIMEOUT_S = 5.0  # seconds `status` waits for each REST answer
RECENT_JOBS = 10  # ended jobs `status` lists, newest first


def status(settings: Settings) -> dict[str, Any]:
    """The cluster at a glance; `reachable` is false (not an error) when it does not answer.

    Works for a remote cluster (PERSONATAG_FLINK_URL) too; `managed` says whether
    a supervisor of this data dir runs it; when it does not answer, `reason`
    says why in words and what to do. Raises FlinkRestError when the cluster
    answers with an error.
    """
    url = rest_url(settings)
    out: dict[str, Any] = {
        "url": url,
        "reachable": False,
        "managed": False,
        "supervisor_pid": None,
        "task_managers": [],
        "slots_total": 0,
        "slots_available": 0,
        "jobs": {"running": 0, "finished": 0, "failed": 0, "cancelled": 0},
        "running_jobs": [],
    }
    if not settings.flink_url:
        layout = ClusterLayout.of(settings)
        pid = supervisor_pid(layout)
        out["managed"] = pid is not None
        out["supervisor_pid"] = pid
        if pid is not None:
            state = _state(layout)  # one read: children and autoscaler agree
            out["processes"] = _children(state)
            out["autoscale"] = _autoscale_state(state)
    rest = FlinkRest(url, timeout=STATUS_TIMEOUT_S)
    try:
        ov = rest.overview()
        tms = rest.taskmanagers()
        jobs = rest.jobs_overview()
    except FlinkUnreachable as exc:
        out["error"] = str(exc)
        out["reason"] = unreachable_reason(settings, url, exc.kind)
        return out
    finally:
        rest.close()
    out["reachable"] = True
    out["flink_version"] = ov.get("flink-version")
    out["slots_total"] = ov.get("slots-total", 0)
    out["slots_available"] = ov.get("slots-available", 0)
    out["jobs"] = {
        "running": ov.get("jobs-running", 0),
        "finished": ov.get("jobs-finished", 0),
        "failed": ov.get("jobs-failed", 0),
        "cancelled": ov.get("jobs-cancelled", 0),
    }
    out["task_managers"] = [
        {
            "id": tm.get("id"),
            "slots_total": tm.get("slotsNumber", 0),
            "slots_free": tm.get("freeSlots", 0),
            "last_heartbeat": _iso_ms(tm.get("timeSinceLastHeartbeat")),
            "memory_bytes": _memory(tm),
            "cpu_cores": (tm.get("hardware") or {}).get("cpuCores"),
        }
        for tm in tms
    ]
    out["running_jobs"] = [
        {
            "id": j.get("jid"),
            "name": j.get("name"),
            "state": j.get("state"),
            "start_time": _iso_ms(j.get("start-time")),
            "duration_ms": j.get("duration"),
        }
        for j in jobs
        if j.get("state") not in TERMINAL_JOB_STATES
    ]
    ended = sorted(
        (j for j in jobs if j.get("state") in TERMINAL_JOB_STATES),
        key=lambda j: j.get("start-time") or 0,
        reverse=True,
    )
    out["recent_jobs"] = [
        {
            "id": j.get("jid"),
            "name": j.get("name"),
            "state": j.get("state"),
            "start_time": _iso_ms(j.get("start-time")),
            "end_time": _iso_ms(j.get("end-time")),
            "duration_ms": j.get("duration"),
        }
        for j in ended[:RECENT_JOBS]
    ]
    return out


def _memory(tm: dict[str, Any]) -> int | None:
    """A task manager's memory in bytes: its configured process size, else the
    machine's physical memory."""
    configured = (tm.get("memoryConfiguration") or {}).get("totalProcessMemory")
    if isinstance(configured, int) and configured > 0:
        return configured
    physical = (tm.get("hardware") or {}).get("physicalMemory")
    return physical if isinstance(physical, int) and physical > 0 else None


def unreachable_reason(settings: Settings, url: str, kind: str) -> str:
    """Why the cluster at `url` does not answer, in words, with what to do."""
    address = url.split("://", 1)[-1].rstrip("/")
    if settings.flink_url:
        fix = "check that the cluster runs and that PERSONATAG_FLINK_URL names it"
    else:
        fix = "start it with `personatag flink start`"
    if kind == "refused":
        return f"nothing listens on {address} — {fix}"
    if kind == "timeout":
        return f"{address} did not answer within {STATUS_TIMEOUT_S:.0f} s — {fix}"
    if kind == "dns":
        host = address.rsplit(":", 1)[0]
        return f"the host name {host} is unknown — check PERSONATAG_FLINK_URL"
    return f"{address} does not answer — {fix}"
