"""Memory and start-up: `personatag serve` peak RSS, time to /readyz and to the
first feed answer; a new CLI process's `preview --json` overhead. One run.

    python bench/serve_startup.py --data-dir /work/data/NAME-1m [--contact c00000001]

The data directory holds a store (`store.db`, e.g. a copy of /work/data/big/1m:
the bench adds a viewer user and a token to it). Then:

(a) `personatag serve --no-dispatcher --no-stream` twice on a free loopback
    port: a *first start* with no saved feed model (`<data_dir>/feed-model/`
    removed) and a *second start* that finds the one the first left. For each:
    seconds from the process's start to /readyz answering 200 and to the first
    `GET /api/v1/contacts/{id}/feed` answer; the server's peak RSS (VmHWM) and
    the largest RSS of any child (a model build in a separate process),
    sampled every 0.1 s. The server is stopped once the feed answered and any
    background build it started has ended (or --settle-s passed).
(b) wall-clock and CPU time of new processes, median of --cli-runs (bytecode
    cached under --pycache): `python -c pass`, `python -c "import sqlalchemy,
    numpy"` (anchors), `personatag --help` and `personatag preview --json` of
    --expr; the preview's evaluation measured in one warm process (median);
    overhead = preview - evaluation, beside the anchors. CPU time is the
    steadier figure on a shared machine. And the biggest imports of `preview`
    (-X importtime).
"""

from __future__ import annotations

import argparse
import http.client
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

EXPR = 'region = "EMEA" and seniority >= 3'
GIB = 1024**3
MIB = 1024**2


def status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            kids = [int(x) for x in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        for kid in kids:
            out += [kid, *children(kid)]
    return out


class Sampler(threading.Thread):
    """The server's VmHWM and the largest RSS of its children, every 0.1 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.server_hwm = 0
        self.child_peak = 0
        self.tree_peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.server_hwm = max(self.server_hwm, status_kib(self.pid, "VmHWM"))
            kids = [status_kib(k, "VmRSS") for k in children(self.pid)]
            self.child_peak = max([self.child_peak, *kids])
            tree = status_kib(self.pid, "VmRSS") + sum(kids)
            self.tree_peak = max(self.tree_peak, tree)
            time.sleep(0.1)

    def busy_children(self) -> bool:
        """Whether a child other than multiprocessing's resource tracker runs."""
        for kid in children(self.pid):
            try:
                cmd = Path(f"/proc/{kid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"resource_tracker" not in cmd:
                return True
        return False


def get(port: int, path: str, token: str | None = None, timeout: float = 600) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def serve_once(env: dict[str, str], token: str, contact: str, settle_s: float) -> dict[str, float]:
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "personatag.cli", "serve", "--port", "0",
         "--no-dispatcher", "--no-stream"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    sampler = Sampler(server.pid)
    sampler.start()
    try:
        port = 0
        assert server.stdout is not None
        for line in server.stdout:
            if "workbench at http://" in line:
                port = int(line.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
                break
        if not port:
            raise SystemExit("serve did not start (no address printed)")
        while True:
            try:
                status, _ = get(port, "/readyz", timeout=5)
                if status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None:
                raise SystemExit("serve ended before /readyz answered")
            time.sleep(0.02)
        ready = time.monotonic() - started
        status, body = get(port, f"/api/v1/contacts/{contact}/feed?k=10", token)
        if status != 200:
            raise SystemExit(f"feed answered {status}: {body[:200]!r}")
        feed = time.monotonic() - started
        deadline = time.monotonic() + settle_s
        while sampler.busy_children() and time.monotonic() < deadline:
            time.sleep(0.5)
        settled = time.monotonic() - started
    finally:
        sampler.server_hwm = max(sampler.server_hwm, status_kib(server.pid, "VmHWM"))
        sampler.stop.set()
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return {
        "ready_s": ready,
        "feed_s": feed,
        "settled_s": settled,
        "server_hwm": sampler.server_hwm * 1024,
        "child_peak": sampler.child_peak * 1024,
        "tree_peak": sampler.tree_peak * 1024,
    }


def timed(cmd: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """Median wall-clock and CPU (user + system) seconds of `runs` new processes."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def evaluation_s(env: dict[str, str], expr: str, runs: int) -> tuple[float, float]:
    """The preview's evaluation in a warm process (what `preview` does after
    start-up): median wall-clock and CPU seconds."""
    code = (
        "import statistics, time\n"
        "from personatag.config import load_settings\n"
        "from personatag.cli.client import open_client\n"
        "walls, cpus = [], []\n"
        "with open_client(load_settings()) as client:\n"
        f"    for _ in range({runs + 1}):\n"
        "        t0, c0 = time.perf_counter(), time.process_time()\n"
        f"        client.preview({expr!r}, persona=None, as_of=None, sample=10)\n"
        "        walls.append(time.perf_counter() - t0)\n"
        "        cpus.append(time.process_time() - c0)\n"
        "print(statistics.median(walls[1:]), statistics.median(cpus[1:]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    wall_s, cpu_s = out.stdout.decode().strip().splitlines()[-1].split()
    return float(wall_s), float(cpu_s)


def import_top(env: dict[str, str], cmd: list[str], n: int = 8) -> list[tuple[float, str]]:
    out = subprocess.run([sys.executable, "-X", "importtime", *cmd], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cum_us, name = line.removeprefix("import time:").split("|")
        if not name.startswith("  "):  # imported by the command itself, not by a module
            rows.append((int(cum_us) / 1e6, name.strip()))
    return sorted(rows, reverse=True)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--contact", default="c00000001")
    parser.add_argument("--expr", default=EXPR)
    parser.add_argument("--cli-runs", type=int, default=5)
    parser.add_argument("--settle-s", type=float, default=300.0)
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--pycache", type=Path, help="default: <data-dir>/bench-pycache")
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    env = {**os.environ, "PERSONATAG_DATA_DIR": str(data_dir), "PERSONATAG_METRICS_PORT": "0"}
    os.environ.update(env)

    from personatag import accounts
    from personatag.config import load_settings
    from personatag.store import open_store

    store = open_store(load_settings().resolved_store_url)
    try:
        if "bench" not in {u.username for u in accounts.list_users(store)}:
            accounts.create_user(store, "bench", "Bench-password-1", "viewer", actor="bench")
        token, _ = accounts.create_token(store, "bench", f"bench-{time.time_ns()}", actor="bench")
    finally:
        store.dispose()

    if not args.skip_serve:
        shutil.rmtree(data_dir / "feed-model", ignore_errors=True)
        for label in ("first start (no saved model)", "second start"):
            r = serve_once(env, token, args.contact, args.settle_s)
            print(
                f"serve, {label}: /readyz {r['ready_s']:.2f} s, first feed {r['feed_s']:.2f} s, "
                f"background build done {r['settled_s']:.1f} s; peak RSS server "
                f"{r['server_hwm'] / MIB:,.0f} MiB, build child {r['child_peak'] / MIB:,.0f} MiB, "
                f"server+children {r['tree_peak'] / MIB:,.0f} MiB (goal <= 2 GiB: "
                f"{r['server_hwm'] / (2 * GIB):.2f}x)",
                flush=True,
            )

    # Bytecode cached, as for an installed package (this machine's shell sets
    # PYTHONDONTWRITEBYTECODE, which would recompile every module on every run).
    cli_env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cli_env["PYTHONPYCACHEPREFIX"] = str(args.pycache or data_dir / "bench-pycache")
    py = [sys.executable]
    preview = [*py, "-m", "personatag.cli", "preview", "--json", "--expr", args.expr]
    timed(preview, cli_env, 2)  # the columnar copy up to date, bytecode written
    bare = timed([*py, "-c", "pass"], cli_env, args.cli_runs)
    libs = timed([*py, "-c", "import sqlalchemy, numpy"], cli_env, args.cli_runs)
    helps = timed([*py, "-m", "personatag.cli", "--help"], cli_env, args.cli_runs)
    total = timed(preview, cli_env, args.cli_runs)
    evaluation = evaluation_s(cli_env, args.expr, args.cli_runs)
    for i, kind in enumerate(("wall-clock", "CPU")):
        overhead = total[i] - evaluation[i]
        print(
            f"CLI preview --json ({args.expr}), {kind}: {total[i]:.3f} s, evaluation "
            f"{evaluation[i]:.3f} s, start-up overhead {overhead:.3f} s (goal <= 0.5 s: "
            f"{overhead / 0.5:.2f}x); anchors: python -c pass {bare[i]:.3f} s, import "
            f"sqlalchemy+numpy {libs[i]:.3f} s (overhead {overhead / libs[i]:.2f}x that); "
            f"personatag --help {helps[i]:.3f} s",
            flush=True,
        )
    print(f"load average during the run: {os.getloadavg()[0]:.1f} (2 cores)")
    top = import_top(cli_env, preview[1:])
    print("biggest imports of preview: " + ", ".join(f"{name} {s:.3f} s" for s, name in top))


if __name__ == "__main__":
    main()
