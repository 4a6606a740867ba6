"""The warm submitter: a long-running Flink client that submits tagging jobs.

`flink run` starts a JVM and a Python driver for every job, several seconds
before the cluster hears of it. The local cluster's supervisor runs this
program beside the job and task managers, under the interpreter that has
PyFlink, as a script (it imports only the standard library and PyFlink):

    python .../personatag/flink/submitter.py --port PORT --target HOST:RESTPORT

It starts PyFlink's client JVM once, compiles a query to warm the planner,
then listens on 127.0.0.1:PORT (the cluster's REST port + SUBMITTER_OFFSET)
and serves one request per connection (a thread each; jobs are submitted one
at a time, `hello` is answered at once), a JSON line each way:

    {"op": "hello"}   -> {"submitter": 1, "target": "127.0.0.1:8081", "pid": 123}
    {"op": "submit", "bundle": "/abs/personatag-job-V.zip", "spec": {...}}
                      -> {"job_id": "..."} | {"error": "..."} | {"unsupported": "..."}

The job program is the one in the bundle each request names (its
`personatag/engines/flink/programs/batch_job.py`, read from the zip and cached
per bundle file), so a newly deployed bundle is used from the next job on, as with `flink run`. A
bundle whose job program has no `run` is answered "unsupported", and the
engine submits it with `flink run` instead.

The client half (`address_of`, `hello`, `request`) is used by the flink
engine and `personatag doctor`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
import time
import types
import zipfile
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

PROTOCOL = 1
# The submitter listens on the cluster's REST port + this (REST + 1 and + 2
# are the RPC and blob ports).
SUBMITTER_OFFSET = 3
JOB_SOURCE = "personatag/engines/flink/programs/batch_job.py"
MAX_LINE = 16 * 1024 * 1024
# A connection must send its request within this many seconds.
READ_TIMEOUT_S = 30.0

log = logging.getLogger("personatag.engines.flink.runtime.submitter")


class Unsupported(Exception):
    """The bundle's job program cannot be run by this submitter."""


class SubmitterError(Exception):
    """No usable answer from a submitter (refused, closed, garbled, timed out)."""


class WrongSubmitter(SubmitterError):
    """Something answers where the submitter should, but not as its cluster's."""


class SubmitterUnreachable(SubmitterError):
    """Nothing took the request (no submitter listens there)."""


class SubmitterTimeout(SubmitterError):
    """The submitter took the request but did not answer in time."""


class Stopped(Exception):
    """The caller's `stopped()` turned true while waiting; `reply` is the answer
    if it came within the grace period, else None."""

    def __init__(self, reply: dict[str, Any] | None) -> None:
        super().__init__("stopped while waiting for the submitter")
        self.reply = reply


def _read_line(sock: socket.socket, limit: int = MAX_LINE) -> bytes:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise ValueError(f"request longer than {limit} bytes")
    return bytes(buf)


# ---- the server ---------------------------------------------------------------------


class Submitter:
    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--target must be HOST:PORT, got {target!r}")
        self.target = target
        self.host, self.port = host, int(port)
        self._jobs: dict[tuple[str, int, int], types.ModuleType] = {}
        self._lock = threading.Lock()  # one submission at a time
        # One environment for every job, its temporary tables dropped after each:
        # a new environment per job made each one slower to create (0.05 s at the
        # first job, 0.4 s at the 120th here, and ~3 s a submission after 300).
        self._env: Any = None

    def environment(self) -> Any:
        """A new batch TableEnvironment that submits to the cluster."""
        from pyflink.common import Configuration
        from pyflink.table import EnvironmentSettings, TableEnvironment

        conf = Configuration()
        conf.set_string("execution.target", "remote")
        conf.set_string("rest.address", self.host)
        conf.set_string("rest.port", str(self.port))
        settings = EnvironmentSettings.new_instance().in_batch_mode().with_configuration(conf)
        return TableEnvironment.create(settings.build())

    def _shared_environment(self) -> Any:
        if self._env is None:
            self._env = self.environment()
        return self._env

    def _clean(self, env: Any) -> None:
        """Drop what a job left in the shared environment; if that fails, the
        next job gets a new environment."""
        try:
            for name in env.list_temporary_views():
                env.drop_temporary_view(name)
            for name in env.list_temporary_tables():
                env.drop_temporary_table(name)
        except Exception as exc:
            log.warning("could not clean the Flink environment (%s): using a new one", exc)
            self._env = None

    def warm_up(self) -> None:
        """Start the JVM and plan one query, so the first job pays neither."""
        env = self._shared_environment()
        env.execute_sql(
            "CREATE TEMPORARY TABLE warm_up (pk BIGINT, id STRING) WITH ("
            "'connector' = 'filesystem', 'path' = 'file:///nonexistent/personatag-warm-up/', "
            "'format' = 'json')"
        )
        env.explain_sql("SELECT pk FROM warm_up WHERE id IS NOT NULL AND pk > 0")
        self._clean(env)

    def job_module(self, bundle: str) -> types.ModuleType:
        """The job program in `bundle`, loaded once per bundle file."""
        st = os.stat(bundle)
        key = (bundle, st.st_size, st.st_mtime_ns)
        module = self._jobs.get(key)
        if module is None:
            with zipfile.ZipFile(bundle) as archive:
                try:
                    source = archive.read(JOB_SOURCE)
                except KeyError:
                    raise Unsupported(f"{bundle} has no {JOB_SOURCE}") from None
            module = types.ModuleType(f"personatag_bundle_job_{len(self._jobs)}")
            module.__file__ = f"{bundle}/{JOB_SOURCE}"
            exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - the deployed job program
            if not callable(getattr(module, "run", None)):
                raise Unsupported(f"the job program in {bundle} has no run() (an older bundle)")
            self._jobs[key] = module
        return module

    def handle(self, message: Any) -> dict[str, Any]:
        if not isinstance(message, dict):
            return {"error": "a request is a JSON object"}
        op = message.get("op")
        if op == "hello":
            return {"submitter": PROTOCOL, "target": self.target, "pid": os.getpid()}
        if op != "submit":
            return {"error": f"unknown op {op!r}: use hello or submit"}
        bundle, spec = message.get("bundle"), message.get("spec")
        if not isinstance(bundle, str) or not os.path.isabs(bundle):
            return {"error": "submit needs 'bundle', an absolute path to a job bundle"}
        if not isinstance(spec, dict):
            return {"error": "submit needs 'spec', a run spec object"}
        with self._lock:
            try:
                module = self.job_module(bundle)
            except Unsupported as exc:
                return {"unsupported": str(exc)}
            except (OSError, zipfile.BadZipFile) as exc:
                return {"error": f"cannot read the job bundle: {exc}"}
            started = time.monotonic()
            try:
                env = self._shared_environment()
                try:
                    # python.files = the bundle, as `flink run -pyfs` sets it: Python
                    # functions in a job program (none today) would import from the
                    # same bundle on the task managers.
                    env.get_config().set("python.files", bundle)
                    jid = module.run(spec, env)
                finally:
                    self._clean(env)
            except Exception as exc:  # a bad query or an unreachable cluster: tell the engine
                log.warning("submitting %r failed: %s", spec.get("name"), str(exc)[:300])
                return {"error": str(exc)[-8000:]}
        log.info("submitted %r as %s in %.2f s", spec.get("name"), jid, time.monotonic() - started)
        if jid is None:
            return {"error": "Flink returned no job id"}
        return {"job_id": jid}

    def serve(self, port: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen(16)
            log.info("submitter %d: ready on 127.0.0.1:%d for %s", os.getpid(), port, self.target)
            while True:
                conn, _ = server.accept()
                threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(READ_TIMEOUT_S)
        try:
            line = _read_line(conn)
            try:
                message = json.loads(line)
            except ValueError:
                reply: dict[str, Any] = {"error": "a request is one line of JSON"}
            else:
                reply = self.handle(message)
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except (OSError, ValueError) as exc:  # the caller went away or sent too much
            log.warning("dropped a connection: %s", exc)


# ---- the client ---------------------------------------------------------------------


def request(
    address: tuple[str, int],
    message: dict[str, Any],
    timeout_s: float,
    stopped: Callable[[], bool] | None = None,
    grace_s: float = 0.0,
) -> dict[str, Any]:
    """Send one request and wait up to `timeout_s` for its answer, checking
    `stopped()` every half second. Once it is true, waits `grace_s` more for the
    answer (a job being submitted can then still be cancelled), then raises
    Stopped. Raises SubmitterError when no answer comes: SubmitterUnreachable
    when nothing took the request, SubmitterTimeout when it was not in time."""
    deadline = time.monotonic() + timeout_s
    try:
        sock = socket.create_connection(address, timeout=min(timeout_s, 2.0))
    except OSError as exc:
        raise SubmitterUnreachable(f"cannot connect to {address[0]}:{address[1]}: {exc}") from exc
    buf = bytearray()
    give_up: float | None = None  # set once stopped
    with sock:
        try:
            sock.sendall(json.dumps(message).encode() + b"\n")
            while not buf.endswith(b"\n"):
                now = time.monotonic()
                if give_up is None and stopped is not None and stopped():
                    give_up = now + grace_s
                if give_up is not None and now >= give_up:
                    raise Stopped(None)
                left = deadline - now
                if left <= 0:
                    raise SubmitterTimeout(f"no answer in {timeout_s:.0f} s")
                sock.settimeout(min(left, 0.5))
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    raise SubmitterError("the submitter closed the connection without answering")
                buf += chunk
        except OSError as exc:
            raise SubmitterError(f"lost the submitter: {exc}") from exc
    try:
        reply = json.loads(buf)
    except ValueError:
        raise SubmitterError(f"the submitter answered garbage: {bytes(buf[:200])!r}") from None
    if not isinstance(reply, dict):
        raise SubmitterError(f"the submitter answered {reply!r}")
    if give_up is not None:
        raise Stopped(reply)
    return reply


def address_of(rest_url: str) -> tuple[str, int] | None:
    """Where the submitter of the cluster at `rest_url` (a URL or HOST:PORT)
    listens: the REST port + SUBMITTER_OFFSET, when the cluster is on this
    machine; None when it is elsewhere (a submitter listens on 127.0.0.1 only)."""
    parts = urlsplit(rest_url if "://" in rest_url else f"http://{rest_url}")
    try:
        port = parts.port
    except ValueError:
        return None
    if port is None or parts.hostname not in ("127.0.0.1", "localhost"):
        return None
    return (parts.hostname, port + SUBMITTER_OFFSET)


def hello(address: tuple[str, int], timeout_s: float) -> dict[str, Any]:
    """The submitter at `address`'s hello, checked to come from the submitter of
    the cluster whose REST port is `address`'s port - SUBMITTER_OFFSET. Raises
    SubmitterError when none answers, WrongSubmitter when something else does."""
    reply = request(address, {"op": "hello"}, timeout_s)
    rest_port = str(address[1] - SUBMITTER_OFFSET)
    served = str(reply.get("target", "")).rpartition(":")[2]
    if reply.get("submitter") != PROTOCOL or served != rest_port:
        raise WrongSubmitter(
            f"{address[0]}:{address[1]} answers as {reply!r}, not as the submitter of the "
            f"cluster on port {rest_port}"
        )
    return reply


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="submitter.py", description="Submit personatag's Flink jobs from a warm client."
    )
    parser.add_argument("--port", type=int, required=True, help="Listen on 127.0.0.1:PORT.")
    parser.add_argument("--target", required=True, help="The cluster's REST HOST:PORT.")
    args = parser.parse_args(argv)
    # PyFlink's own modules are chatty at INFO; this program's lines are the news.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.setLevel(logging.INFO)
    try:
        submitter = Submitter(args.target)
    except ValueError as exc:
        parser.error(str(exc))
    started = time.monotonic()
    submitter.warm_up()
    log.info("client JVM warm in %.1f s", time.monotonic() - started)
    submitter.serve(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
