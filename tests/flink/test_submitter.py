"""The warm submitter's protocol and its refusals, over real sockets (no PyFlink
needed: every request here is answered before a Flink environment is made)."""

from __future__ import annotations

import json
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from personatag.engines.flink.runtime import submitter
from personatag.engines.flink.runtime.submitter import JOB_SOURCE, Submitter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serving(server: Submitter, port: int | None = None) -> tuple[str, int]:
    """Serve `server` on `port` (default: a free one) in a daemon thread; its
    address once it listens."""
    port = port or free_port()
    threading.Thread(target=server.serve, args=(port,), daemon=True).start()
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return ("127.0.0.1", port)
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


@pytest.fixture(scope="module")
def address() -> Iterator[tuple[str, int]]:
    yield serving(Submitter("127.0.0.1:18081"))


def bundle(tmp_path: Path, job_source: str | None) -> str:
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("personatag/__init__.py", "")
        if job_source is not None:
            z.writestr(JOB_SOURCE, job_source)
    return str(path)


def submit(address: tuple[str, int], **message: object) -> dict[str, object]:
    return submitter.request(address, {"op": "submit", **message}, 10)


def test_hello_names_the_cluster(address: tuple[str, int]) -> None:
    hello = submitter.request(address, {"op": "hello"}, 10)
    assert hello["submitter"] == submitter.PROTOCOL
    assert hello["target"] == "127.0.0.1:18081"


def test_the_submitter_of_a_cluster_is_on_its_rest_port_plus_three(
    address: tuple[str, int],
) -> None:
    assert submitter.address_of("http://127.0.0.1:8081") == ("127.0.0.1", 8084)
    assert submitter.address_of("localhost:18081") == ("localhost", 18084)
    assert submitter.address_of("http://flink.example.internal:8081") is None
    assert submitter.address_of("http://127.0.0.1") is None  # no port
    # The fixture's server says it serves port 18081, not its own port - 3.
    with pytest.raises(submitter.WrongSubmitter, match="not as the submitter of the cluster"):
        submitter.hello(address, 10)
    port = free_port()
    right = serving(Submitter(f"127.0.0.1:{port - 3}"), port)
    assert submitter.hello(right, 10)["target"] == f"127.0.0.1:{port - 3}"


def test_bad_requests_get_an_error_not_a_hang(address: tuple[str, int]) -> None:
    assert submitter.request(address, {"op": "explode"}, 10) == {
        "error": "unknown op 'explode': use hello or submit"
    }
    assert "absolute path" in str(submit(address, bundle="rel.zip", spec={})["error"])
    assert "run spec object" in str(submit(address, bundle="/x.zip", spec=[1])["error"])
    assert "cannot read the job bundle" in str(
        submit(address, bundle="/nonexistent/b.zip", spec={})["error"]
    )
    with socket.create_connection(address, timeout=10) as raw:
        raw.sendall(b"{not json\n")
        reply = json.loads(raw.makefile().readline())
    assert reply == {"error": "a request is one line of JSON"}


def test_a_bundle_without_a_runnable_job_program_is_unsupported(
    address: tuple[str, int], tmp_path: Path
) -> None:
    missing = submit(address, bundle=bundle(tmp_path, None), spec={})
    assert f"has no {JOB_SOURCE}" in str(missing["unsupported"])
    old = submit(address, bundle=bundle(tmp_path, "def main(argv):\n    return 0\n"), spec={})
    assert "has no run() (an older bundle)" in str(old["unsupported"])
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"not a zip")
    assert "cannot read the job bundle" in str(
        submit(address, bundle=str(garbage), spec={})["error"]
    )


class WithoutFlink(Submitter):
    """Hands the job program a stand-in instead of a Flink environment."""

    def environment(self) -> RecordingEnv:
        return RecordingEnv()


def test_a_failing_job_program_is_reported(tmp_path: Path) -> None:
    where = serving(WithoutFlink("127.0.0.1:18081"))
    source = "def run(spec, env):\n    raise ValueError('bad spec: ' + spec['name'])\n"
    reply = submit(where, bundle=bundle(tmp_path, source), spec={"name": "q1"})
    assert reply == {"error": "bad spec: q1"}
    ok = "def run(spec, env):\n    return 'a' * 32\n"
    path = tmp_path / "ok"
    path.mkdir()
    assert submit(where, bundle=bundle(path, ok), spec={"name": "q2"}) == {"job_id": "a" * 32}


def test_the_client_tells_unreachable_from_slow() -> None:
    port = free_port()
    with pytest.raises(submitter.SubmitterUnreachable):
        submitter.request(("127.0.0.1", port), {"op": "hello"}, 2)
    with socket.socket() as silent:  # takes the request, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        where = ("127.0.0.1", silent.getsockname()[1])
        with pytest.raises(submitter.SubmitterTimeout):
            submitter.request(where, {"op": "hello"}, 1.0)
        # Stopped, not SubmitterTimeout: it gave up 0.5 s after stop, not at 30 s.
        with pytest.raises(submitter.Stopped) as stopped:
            submitter.request(where, {"op": "hello"}, 30.0, stopped=lambda: True, grace_s=0.5)
        assert stopped.value.reply is None


def test_hello_is_answered_while_a_job_is_being_submitted(tmp_path: Path) -> None:
    where = serving(WithoutFlink("127.0.0.1:18081"))
    # This job program says it started, then returns only once the gate file exists.
    gated = (
        "import os, time\n"
        "def run(spec, env):\n"
        "    open(spec['started'], 'w').close()\n"
        "    while not os.path.exists(spec['gate']):\n"
        "        time.sleep(0.05)\n"
        "    return 'b' * 32\n"
    )
    gate = tmp_path / "gate"
    started = tmp_path / "started"
    spec = {"name": "gated", "gate": str(gate), "started": str(started)}
    path = bundle(tmp_path, gated)
    replies: list[dict[str, object]] = []

    worker = threading.Thread(target=lambda: replies.append(submit(where, bundle=path, spec=spec)))
    worker.start()
    deadline = time.monotonic() + 20
    while not started.exists():
        assert time.monotonic() < deadline, "the gated submission never started"
        time.sleep(0.05)
    # Were hello queued behind the submission, it would time out here.
    assert submitter.request(where, {"op": "hello"}, 10)["submitter"] == 1
    assert replies == [] and worker.is_alive()
    gate.touch()
    worker.join(20)
    assert replies == [{"job_id": "b" * 32}]


class RecordingConfig:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def set(self, key: str, value: str) -> None:
        self.values[key] = value


class RecordingEnv:
    """Stands in for a Flink TableEnvironment: records its config and the
    tables made and dropped."""

    def __init__(self) -> None:
        self.config = RecordingConfig()
        self.tables: list[str] = []
        self.dropped: list[str] = []

    def get_config(self) -> RecordingConfig:
        return self.config

    def list_temporary_views(self) -> list[str]:
        return []

    def list_temporary_tables(self) -> list[str]:
        return list(self.tables)

    def drop_temporary_table(self, name: str) -> None:
        self.tables.remove(name)
        self.dropped.append(name)


class Recording(Submitter):
    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.made: list[RecordingEnv] = []

    def environment(self) -> RecordingEnv:
        self.made.append(RecordingEnv())
        return self.made[-1]


def test_jobs_share_one_environment_and_leave_nothing_in_it(tmp_path: Path) -> None:
    server = Recording("127.0.0.1:18081")
    source = (
        "def run(spec, env):\n"
        "    assert env.tables == [], env.tables\n"
        "    env.tables += ['snapshot_0', 'matched_0']\n"
        "    if spec.get('fail'):\n"
        "        raise RuntimeError('planner says no')\n"
        "    return spec['name'] * 16\n"
    )
    path = bundle(tmp_path, source)
    replies = [
        server.handle({"op": "submit", "bundle": path, "spec": {"name": n, "fail": n == "bb"}})
        for n in ("aa", "bb", "cc")
    ]
    assert replies == [{"job_id": "aa" * 16}, {"error": "planner says no"}, {"job_id": "cc" * 16}]
    [env] = server.made  # one environment for all three jobs
    assert env.config.values["python.files"] == path  # shipped like `flink run -pyfs`
    assert env.tables == []
    assert env.dropped == ["snapshot_0", "matched_0"] * 3
