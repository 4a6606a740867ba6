"""The local Flink session cluster: config, start/stop/status, and its supervisor.

The slow tests run a real cluster (real JVMs) on ports of their own; the fast
ones run the real supervisor over stand-in scripts, or start nothing.

Ports: the `make test` cluster uses 18081-18083 and 18181-18201, test_watchdog
18300. Each test here has its own REST port P and so P..P+2 and P+100..P+120:
18500, 18900, 19100 (real clusters), 18700-18760 (nothing starts there).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from personatag.engines.flink.runtime import submitter
from personatag.engines.flink.runtime import supervisor as sv
from personatag.engines.flink.runtime.cluster import (
    ClusterLayout,
    Ports,
    port_in_use,
    start,
    status,
    stop,
    supervisor_pid,
    write_config,
)
from personatag.engines.flink.runtime.home import locate
from personatag.errors import ConfigError, PersonatagError
from tests.flink.conftest import CLI, cli_env, local_settings, run_cli, wait_until

# -- config and refusals (nothing starts) ---------------------------------------------


def test_config_is_derived_from_settings(tmp_path: Path, flink_python: Path) -> None:
    s = local_settings(
        tmp_path,
        18700,
        flink_python,
        flink_task_managers=2,
        flink_slots=3,
        flink_taskmanager_mb=1500,
        flink_jobmanager_mb=900,
        flink_parallelism=4,
    )
    home = locate(s)
    path = write_config(s, home)
    layout = ClusterLayout.of(s)
    assert path == layout.config_file
    conf = yaml.safe_load(path.read_text())
    assert conf["rest"] == {"address": "127.0.0.1", "bind-address": "127.0.0.1", "port": 18700}
    assert conf["jobmanager"]["rpc"] == {"address": "127.0.0.1", "port": 18701}
    assert conf["blob"]["server"]["port"] == "18702"
    assert conf["metrics"]["reporter"]["prom"]["port"] == "18800-18820"
    assert conf["taskmanager"]["numberOfTaskSlots"] == 3
    assert conf["taskmanager"]["memory"]["process"]["size"] == "1500m"
    assert conf["jobmanager"]["memory"]["process"]["size"] == "900m"
    assert conf["parallelism"]["default"] == 4
    assert conf["restart-strategy"]["type"] == "none"
    assert conf["heartbeat"]["timeout"] <= 15_000
    assert conf["python"]["executable"] == str(home.python)
    assert conf["io"]["tmp"]["dirs"] == str(layout.tmp)
    # Java 17 needs the distribution's --add-opens flags.
    assert "--add-opens=java.base/java.lang=ALL-UNNAMED" in conf["env"]["java"]["opts"]["all"]
    assert (layout.conf / "log4j-console.properties").exists()


def test_ports_leave_room_for_the_metrics_range() -> None:
    from personatag.config import Settings

    ports = Ports.of(Settings(flink_rest_port=18700))
    assert (ports.fixed, ports.metrics) == ((18700, 18701, 18702, 18703), "18800-18820")
    with pytest.raises(ConfigError, match="PERSONATAG_FLINK_REST_PORT=65500"):
        Ports.of(Settings(flink_rest_port=65500))


def test_a_remote_cluster_is_not_started_or_stopped(tmp_path: Path, flink_python: Path) -> None:
    s = local_settings(tmp_path, 18710, flink_python, flink_url="http://127.0.0.1:18710")
    with pytest.raises(ConfigError, match="nothing to start"):
        start(s)
    with pytest.raises(ConfigError, match="nothing to stop"):
        stop(s)
    st = status(s)
    assert st["url"] == "http://127.0.0.1:18710"
    assert (st["reachable"], st["managed"]) == (False, False)


def test_start_refuses_a_port_another_program_holds(tmp_path: Path, flink_python: Path) -> None:
    s = local_settings(tmp_path, 18720, flink_python)
    with socket.socket() as other:
        other.bind(("127.0.0.1", 18721))  # the JobManager RPC port of this cluster
        other.listen()
        with pytest.raises(PersonatagError, match=r"port 18721 .* in use by another program"):
            start(s, wait_s=10)
    layout = ClusterLayout.of(s)
    assert not layout.pid_file.exists()
    assert supervisor_pid(layout) is None


def test_stop_without_a_cluster_removes_stale_pid_files(tmp_path: Path, flink_python: Path) -> None:
    s = local_settings(tmp_path, 18730, flink_python)
    layout = ClusterLayout.of(s)
    layout.run.mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    layout.pid_file.write_text(f"{gone.pid}\n")
    (layout.run / "flink--taskexecutor.pid").write_text(f"{gone.pid}\n")
    assert supervisor_pid(layout) is None
    assert stop(s)["stopped"] is False
    assert list(layout.run.glob("*.pid")) == []


def test_cli_status_of_a_cluster_that_is_down(tmp_path: Path, flink_python: Path) -> None:
    env = cli_env(data_dir=str(tmp_path), flink_rest_port="18740", flink_python=str(flink_python))
    done = run_cli(["flink", "status", "--json"], env)
    assert done.returncode == 3, done.stderr
    st = json.loads(done.stdout)
    assert (st["reachable"], st["managed"], st["task_managers"]) == (False, False, [])
    assert "does not answer" in st["error"]
    why = "nothing listens on 127.0.0.1:18740 — start it with `personatag flink start`"
    assert st["reason"] == why

    text = run_cli(["flink", "status"], env)
    assert text.returncode == 3
    assert text.stdout.splitlines() == [f"flink cluster http://127.0.0.1:18740: down: {why}"]

    stopped = run_cli(["flink", "stop", "--json"], env)
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["stopped"] is False


def test_cli_errors_are_one_line(tmp_path: Path, flink_python: Path) -> None:
    env = cli_env(data_dir=str(tmp_path), flink_url="http://127.0.0.1:18750")
    done = run_cli(["flink", "start"], env)
    assert done.returncode == 1
    assert done.stderr.startswith("error: PERSONATAG_FLINK_URL is set")
    assert len(done.stderr.strip().splitlines()) == 1
    # status of a remote cluster works (and it is not ours)
    remote = run_cli(["flink", "status", "--json"], env)
    assert remote.returncode == 3
    assert json.loads(remote.stdout)["url"] == "http://127.0.0.1:18750"


# -- the supervisor over stand-in scripts ------------------------------------------------


def _fake_home(tmp_path: Path, jobmanager: str, taskmanager: str) -> Path:
    home = tmp_path / "fake-flink"
    (home / "bin").mkdir(parents=True)
    for name, body in (("jobmanager.sh", jobmanager), ("taskmanager.sh", taskmanager)):
        script = home / "bin" / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    return home


def _supervise(tmp_path: Path, home: Path, *extra: str) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "personatag.engines.flink.runtime.supervisor",
        "--flink-home",
        str(home),
        "--flink-python",
        sys.executable,
        "--conf-dir",
        str(tmp_path / "conf"),
        "--log-dir",
        str(tmp_path / "log"),
        "--run-dir",
        str(tmp_path / "run"),
        "--restart-backoff",
        "0.05",
        *extra,
    ]
    log = (tmp_path / "supervisor.log").open("ab")
    return subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)


def _state(tmp_path: Path) -> dict[str, dict[str, object]]:
    try:
        state = json.loads((tmp_path / "run" / sv.STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {c["name"]: c for c in state["children"]}


def _pid_of(tmp_path: Path, name: str) -> int:
    pid = wait_until(lambda: _state(tmp_path).get(name, {}).get("pid"), 10, f"{name}'s pid")
    assert isinstance(pid, int)
    return pid


def test_supervisor_gives_up_on_a_child_that_keeps_failing(tmp_path: Path) -> None:
    home = _fake_home(tmp_path, "exec sleep 300", "exit 3")
    proc = _supervise(tmp_path, home, "--restart-limit", "3", "--restart-window", "60")
    try:
        wait_until(
            lambda: _state(tmp_path).get("taskmanager-1", {}).get("state") == "gave_up",
            15,
            "the supervisor to give up on the task manager",
        )
        tm = _state(tmp_path)["taskmanager-1"]
        assert (tm["restarts"], tm["last_exit"], tm["pid"]) == (3, 3, None)
        jm = _pid_of(tmp_path, "jobmanager")
        assert sv.pid_alive(jm)
        assert sv.read_pid(tmp_path / "run" / sv.PID_FILE) == proc.pid
        # a second supervisor on the same run dir refuses to start
        second = _supervise(tmp_path, home)
        assert second.wait(timeout=30) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert not sv.pid_alive(jm)
        assert not (tmp_path / "run" / sv.PID_FILE).exists()
        assert _state(tmp_path)["jobmanager"]["state"] == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "supervisor.log").read_text()
    assert "taskmanager-1 exited (code 3)" in log
    assert "giving up on it" in log


def test_supervisor_stops_when_the_jobmanager_cannot_run(tmp_path: Path) -> None:
    home = _fake_home(tmp_path, "exit 1", "exec sleep 300")
    proc = _supervise(tmp_path, home, "--restart-limit", "2")
    tm = _pid_of(tmp_path, "taskmanager-1")
    assert proc.wait(timeout=20) == 1
    assert not sv.pid_alive(tm)


def test_supervisor_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    home = _fake_home(tmp_path, "trap '' TERM\nwhile :; do sleep 0.1; done", "exec sleep 300")
    proc = _supervise(tmp_path, home, "--term-timeout", "1")
    jm = _pid_of(tmp_path, "jobmanager")
    time.sleep(0.3)  # let the script set its trap
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert time.monotonic() - t0 < 10
    assert not sv.pid_alive(jm)
    assert sv.processes_where(session=proc.pid) == []


def test_children_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    home = _fake_home(tmp_path, "exec sleep 300", "exec sleep 301")
    proc = _supervise(tmp_path, home)
    pids = [_pid_of(tmp_path, "jobmanager"), _pid_of(tmp_path, "taskmanager-1")]
    proc.kill()
    proc.wait()
    wait_until(lambda: not any(sv.pid_alive(p) for p in pids), 10, "the orphans to exit")


# -- a real cluster ------------------------------------------------------------------------


def _left_over(layout: ClusterLayout, supervisor: int | None) -> list[int]:
    found = set(sv.processes_where(arg=str(layout.conf)))
    if supervisor is not None:
        found |= set(sv.processes_where(session=supervisor))
    return sorted(found)


def _taskmanager_pid(layout: ClusterLayout) -> int:
    children = json.loads(layout.state_file.read_text())["children"]
    pid = next(c["pid"] for c in children if c["name"] == "taskmanager-1")
    assert isinstance(pid, int)
    return pid


@pytest.mark.slow
def test_cluster_lifecycle(tmp_path: Path, flink_python: Path) -> None:
    port = 18500
    s = local_settings(tmp_path, port, flink_python)
    env = cli_env(
        data_dir=str(tmp_path),
        flink_rest_port=str(port),
        flink_python=str(flink_python),
        flink_slots="2",
        flink_parallelism="1",
    )
    layout = ClusterLayout.of(s)
    try:
        # Two starts at once (the CLI and this process): one starts the cluster,
        # the other waits for it and finds it running.
        cli_start = subprocess.Popen(
            [*CLI, "flink", "start", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        here = start(s, wait_s=120)
        out, err = cli_start.communicate(timeout=180)
        assert cli_start.returncode == 0, err
        there = json.loads(out)
        assert sorted([here["started"], there["started"]]) == [False, True]
        for up in (here, there):
            assert (up["reachable"], up["managed"]) == (True, True)
            assert (len(up["task_managers"]), up["slots_total"]) == (1, 2)
        supervisor = here["supervisor_pid"]
        assert supervisor == there["supervisor_pid"] == supervisor_pid(layout)

        st = status(s)
        assert st["url"] == f"http://127.0.0.1:{port}"
        assert st["jobs"] == {"running": 0, "finished": 0, "failed": 0, "cancelled": 0}
        assert st["running_jobs"] == []
        [tm] = st["task_managers"]
        assert (tm["slots_total"], tm["slots_free"]) == (2, 2)
        assert [p["name"] for p in st["processes"]] == ["jobmanager", "taskmanager-1", "submitter"]
        # The warm submitter answers on REST + 3 once its client JVM is warm.
        hello = wait_until(lambda: _hello(("127.0.0.1", port + 3)), 120, "the warm submitter")
        assert hello == {"submitter": 1, "target": f"127.0.0.1:{port}", "pid": hello["pid"]}
        assert hello["pid"] == {p["name"]: p for p in st["processes"]}["submitter"]["pid"]

        # start-foreground execs its way to the JVM: the child the supervisor holds is java.
        victim = _taskmanager_pid(layout)
        assert Path(f"/proc/{victim}/exe").resolve().name == "java"
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            now = status(s)
            ids = [t["id"] for t in now["task_managers"]]
            return ids != [] and tm["id"] not in ids and now["slots_total"] == 2

        wait_until(replaced, 90, "a new task manager to replace the killed one")
        restarted = {p["name"]: p for p in status(s)["processes"]}["taskmanager-1"]
        assert (restarted["restarts"], restarted["last_exit"]) == (1, -9)
        assert restarted["pid"] != victim

        shown = run_cli(["flink", "status"], env)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].startswith(f"flink cluster http://127.0.0.1:{port}: up, 1 task manager")
        assert lines[1].startswith("  taskmanager ") and "of 2 slots free" in lines[1]

        t0 = time.monotonic()
        down = run_cli(["flink", "stop", "--json"], env)
        assert down.returncode == 0, down.stderr
        assert json.loads(down.stdout)["stopped"] is True
        assert time.monotonic() - t0 < 30
        assert _left_over(layout, supervisor) == []
        assert not any(port_in_use(p) for p in Ports.of(s).fixed)
        assert not layout.pid_file.exists()
        assert status(s)["reachable"] is False

        twice = run_cli(["flink", "stop"], env)
        assert (twice.returncode, twice.stdout.strip()) == (0, "flink cluster was not running")
    finally:
        stop(s)


def _hello(address: tuple[str, int]) -> dict[str, object] | None:
    try:
        return submitter.hello(address, 5)
    except submitter.SubmitterError:
        return None


@pytest.mark.slow
def test_killed_supervisor_leaves_no_jvms(tmp_path: Path, flink_python: Path) -> None:
    s = local_settings(tmp_path, 19100, flink_python)
    layout = ClusterLayout.of(s)
    try:
        up = start(s)
        assert up["started"] is True
        supervisor = up["supervisor_pid"]
        jvms = _left_over(layout, supervisor)
        assert len([p for p in jvms if p != supervisor]) >= 2
        os.kill(supervisor, signal.SIGKILL)
        wait_until(lambda: _left_over(layout, supervisor) == [], 60, "the JVMs to exit")
        assert status(s)["managed"] is False
        assert stop(s)["stopped"] is False  # nothing left to stop; stale files go
        assert not layout.pid_file.exists()
        assert not port_in_use(19100)
    finally:
        stop(s)


@pytest.mark.slow
def test_a_cluster_that_cannot_start_is_stopped_with_the_reason(
    tmp_path: Path, flink_python: Path
) -> None:
    # 100 MiB cannot hold a TaskManager: its start script fails, again and again.
    s = local_settings(tmp_path, 18900, flink_python, flink_taskmanager_mb=100)
    layout = ClusterLayout.of(s)
    try:
        with pytest.raises(PersonatagError) as failed:
            start(s, wait_s=15)
        message = str(failed.value)
        assert "did not come up within" in message
        assert "TaskManager memory configuration failed" in message
        assert "\n" not in message
        assert _left_over(layout, None) == []
        assert not layout.pid_file.exists()
        assert not port_in_use(18900)
    finally:
        stop(s)
