"""`personatag doctor`: can this installation run? Each check is ok, warn or fail.

Every problem is reported as one line saying what is wrong and the command or
setting that fixes it. Checks run concurrently, each under a deadline, and a
check that raises becomes a failed check: the doctor itself never crashes on
the thing it is diagnosing.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from personatag.config import Settings
from personatag.engines.flink.runtime.home import JAVA_MIN, java_version, locate, rest_url
from personatag.engines.flink.runtime.rest import FlinkRest, FlinkRestError, FlinkUnreachable
from personatag.errors import ConfigError, PersonatagError

Status = Literal["ok", "warn", "fail"]

REST_TIMEOUT_S = 3.0
STORE_TIMEOUT_S = 3
# A check still running after this long is reported as failed (and abandoned).
CHECK_TIMEOUT_S = 20.0
JAVA_RECOMMENDED = 17
GIB = 2**30
DISK_WARN_BYTES = 5 * GIB
DISK_FAIL_BYTES = 1 * GIB
PROBE_PREFIX = ".doctor/"
_MAX_DETAIL = 300


@dataclass(frozen=True)
class Check:
    """One finding. ``fix`` is the command or setting that resolves a warn or fail."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def line(self) -> str:
        if self.status == "ok":
            return f"ok   {self.name} {self.detail}"
        label = "warn" if self.status == "warn" else "FAIL"
        fix = f" — {self.fix}" if self.fix else ""
        return f"{label} {self.name}: {self.detail}{fix}"


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings allowed)."""
        return all(c.status != "fail" for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}

    def lines(self) -> list[str]:
        return [c.line() for c in self.checks]


def _short(text: object) -> str:
    """The first line of a message, capped: one problem, one line."""
    lines = str(text).strip().splitlines()
    first = lines[0] if lines else ""
    return first if len(first) <= _MAX_DETAIL else first[: _MAX_DETAIL - 3] + "..."


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


# -- Java and Flink -----------------------------------------------------------


def check_java() -> Check:
    """Java on JAVA_HOME or PATH, at least 11; 17 recommended (Flink 2 is built for it)."""
    install = (
        f"install Java {JAVA_RECOMMENDED} (e.g. `apt-get install openjdk-{JAVA_RECOMMENDED}-"
        "jre-headless`) and put it on PATH or set JAVA_HOME"
    )
    version = java_version()
    if version is None:
        java_home = os.environ.get("JAVA_HOME")
        where = f"JAVA_HOME={java_home} has no usable bin/java" if java_home else "not on PATH"
        return Check("java", "fail", f"no Java found ({where})", install)
    if version < JAVA_MIN:
        return Check("java", "fail", f"Java {version} is too old: Flink needs {JAVA_MIN}+", install)
    if version < JAVA_RECOMMENDED:
        return Check(
            "java", "warn", f"Java {version} works, {JAVA_RECOMMENDED} is recommended", install
        )
    return Check("java", "ok", str(version))


def check_flink_home(settings: Settings) -> Check:
    """The Flink distribution and the interpreter with PyFlink (home.locate)."""
    try:
        found = locate(settings)
    except ConfigError as exc:
        # locate's messages already end in the fix.
        return Check("flink home", "fail", "not found", _short(exc))
    return Check("flink home", "ok", f"{found.home} (python {found.python})")


def _is_local_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cluster_fix(settings: Settings, url: str) -> str:
    if settings.flink_url:
        return (
            f"check that PERSONATAG_FLINK_URL ({url}) is the JobManager's REST address "
            "and that the cluster is running"
        )
    return "run `personatag flink start`"


def check_flink_cluster(settings: Settings, timeout: float = REST_TIMEOUT_S) -> Check:
    """The session cluster answers at rest_url(settings), with task managers and free slots."""
    url = rest_url(settings)
    name = "flink cluster"
    try:
        overview = FlinkRest(url, timeout=timeout).overview()
    except FlinkUnreachable as exc:
        return Check(name, "fail", _short(exc), _cluster_fix(settings, url))
    except FlinkRestError as exc:
        return Check(
            name,
            "fail",
            f"{url} answered /overview with HTTP {exc.status}: is it Flink's REST endpoint?",
            _cluster_fix(settings, url),
        )
    except ValueError:
        return Check(
            name,
            "fail",
            f"{url} answered /overview with something that is not JSON: not Flink's REST API",
            _cluster_fix(settings, url),
        )
    tms = int(overview.get("taskmanagers", 0))
    total = int(overview.get("slots-total", 0))
    free = int(overview.get("slots-available", 0))
    running = int(overview.get("jobs-running", 0))
    version = overview.get("flink-version", "?")
    summary = (
        f"at {url}: Flink {version}, {tms} task manager{'s' if tms != 1 else ''}, "
        f"{free} of {total} slots free, {running} job{'s' if running != 1 else ''} running"
    )
    if tms == 0:
        if not settings.flink_url:
            return Check(
                name,
                "fail",
                f"{summary}: no task manager has registered",
                "run `personatag flink stop` then `personatag flink start`",
            )
        # Native Kubernetes and YARN sessions start task managers on demand: an
        # idle one has none and is healthy.
        return Check(
            name,
            "warn",
            f"{summary}: no task manager has registered",
            "start task managers (`bin/taskmanager.sh start` on each worker); on native "
            "Kubernetes or YARN they start on demand and this is expected while idle",
        )
    if free == 0:
        return Check(
            name,
            "warn",
            f"{summary}: new jobs wait for a slot",
            "wait for running jobs, cancel one (`personatag jobs cancel ID`), or add slots "
            "(PERSONATAG_FLINK_SLOTS, PERSONATAG_FLINK_TASK_MANAGERS)",
        )
    return Check(name, "ok", summary)


def check_flink_submitter(settings: Settings) -> list[Check]:
    """The warm job submitter of a cluster on this machine answers (none: [],
    when the cluster is remote or the submitter is turned off)."""
    from personatag.engines.flink.runtime import submitter

    address = submitter.address_of(rest_url(settings))
    if not settings.flink_submitter or address is None:
        return []
    name = "flink submitter"
    try:
        hello = submitter.hello(address, timeout_s=REST_TIMEOUT_S)
    except submitter.WrongSubmitter as exc:
        return [
            Check(
                name,
                "warn",
                f"{_short(exc)}: jobs are submitted with `flink run`",
                "give each local cluster its own PERSONATAG_FLINK_REST_PORT",
            )
        ]
    except submitter.SubmitterError as exc:
        return [
            Check(
                name,
                "warn",
                f"none answers on {address[0]}:{address[1]} ({_short(exc)}): jobs are "
                "submitted with `flink run`, a client JVM each (several seconds more a job)",
                "`personatag flink start` runs one, which answers 20-30 s after the cluster "
                "is up; if it does not, see its log, flink/log/submitter.console",
            )
        ]
    where = f"{address[0]}:{address[1]}"
    return [Check(name, "ok", f"pid {hello.get('pid')} on {where} for {hello.get('target')}")]


# -- store ----------------------------------------------------------------------


def check_store(settings: Settings) -> Check:
    """The store answers and its schema is at the revision this code expects."""
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    from personatag.store.backends import backend_for_url
    from personatag.store.db import HEAD_REVISION, known_revision, normalise_url

    name = "store"
    init = "run `personatag init`"
    url = normalise_url(settings.resolved_store_url)
    parsed = make_url(url)
    shown = parsed.render_as_string(hide_password=True)
    backend = backend_for_url(parsed)
    db = backend.local_file(parsed)
    # Connecting would create an empty file; the doctor must change nothing.
    if db is not None and not Path(db).exists():
        return Check(name, "fail", f"no store at {shown}", init)
    connect_args = backend.connect_timeout_args(STORE_TIMEOUT_S)
    engine = create_engine(url, connect_args=connect_args, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return Check(name, "fail", f"{shown} is not initialised", init)
            current = conn.scalar(text("SELECT version_num FROM alembic_version"))
    except Exception as exc:
        reason = getattr(exc, "orig", None) or exc
        return Check(
            name,
            "fail",
            f"cannot read {shown}: {_short(reason)}",
            "check PERSONATAG_STORE_URL and that the database is running",
        )
    finally:
        engine.dispose()
    if current == HEAD_REVISION:
        return Check(name, "ok", f"{shown} at revision {current}")
    if current is None:
        return Check(name, "fail", f"{shown} has no schema revision recorded", init)
    if not known_revision(str(current)):
        # Not in this code's migration chain: a later personatag migrated it.
        return Check(
            name,
            "fail",
            f"{shown} is at revision {current}, newer than this personatag ({HEAD_REVISION})",
            "upgrade personatag to the version that migrated this store",
        )
    return Check(
        name,
        "fail",
        f"{shown} is at revision {current}, this personatag expects {HEAD_REVISION}",
        init,
    )


def check_columnar(settings: Settings) -> Check:
    """The columnar copy of the store: built or not, its size beside the
    store's, how far behind the change feed it was left (every answer catches
    it up first). Reads only."""
    import json

    from sqlalchemy.engine import make_url

    from personatag.engines.columnar.copy import MANIFEST
    from personatag.engines.columnar.folders import folder_size, url_folder
    from personatag.store import changefeed, open_store
    from personatag.store.backends import backend_for_url
    from personatag.store.db import normalise_url

    name = "columnar copy"
    parsed = make_url(normalise_url(settings.resolved_store_url))
    folder = url_folder(settings.data_dir, parsed)
    manifest = folder / MANIFEST
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "a file, not a folder" if not existing.is_dir() else "not writable by this user"
        return Check(
            name,
            "fail",
            f"{existing} is {what}: the copy cannot be written at {folder} "
            "(previews and tags run on the local engine, slower)",
            f"make {existing} a folder this user may write, or set PERSONATAG_DATA_DIR elsewhere",
        )
    if not manifest.exists():
        return Check(
            name, "ok", f"not built yet ({folder}): the first preview or columnar tag builds it"
        )
    try:
        offset = int(json.loads(manifest.read_text())["offset"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        why = f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else exc.strerror
        return Check(
            name,
            "fail",
            f"{manifest} is damaged ({why})",
            "nothing to do: the next preview or columnar tag rebuilds the copy "
            f"(or delete {folder} now)",
        )
    size = folder_size(folder)
    db = backend_for_url(parsed).local_file(parsed)
    beside = ""
    if db is not None and Path(db).exists():
        store_bytes = sum(p.stat().st_size for p in Path(db).parent.glob(Path(db).name + "*"))
        beside = f" beside the store's {_mib(store_bytes)}"
    if db is not None and not Path(db).exists():
        return Check(name, "ok", f"{_mib(size)} at {folder} (no store to compare with)")
    store = open_store(parsed.render_as_string(hide_password=False))
    try:
        with store.read() as conn:
            head = changefeed.head(conn, store)
    finally:
        store.dispose()
    behind = max(head - offset, 0)
    return Check(
        name,
        "ok",
        f"{_mib(size)} at {folder}{beside}; saved {behind:,} change{'' if behind == 1 else 's'} "
        "behind the feed (each answer catches up first)",
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


# -- buckets ----------------------------------------------------------------------


def _bucket_fix(settings: Settings, url: str) -> str:
    if settings.bucket_url:
        return (
            "check PERSONATAG_BUCKET_URL, the PERSONATAG_S3_* settings and that the credentials "
            "may put, get and delete objects under the prefix"
        )
    return f"make {url} writable by this user, or set PERSONATAG_DATA_DIR elsewhere"


def check_bucket(settings: Settings, area: str) -> Check:
    """Write, read back and delete a probe object under ``.doctor/`` in one bucket area."""
    from personatag.buckets import open_buckets

    name = f"bucket {area}"
    try:
        bucket = open_buckets(settings)[area]
    except PersonatagError as exc:
        where = settings.bucket_url or str(Path(settings.data_dir) / "buckets" / area)
        return Check(name, "fail", f"cannot open: {_short(exc)}", _bucket_fix(settings, where))
    where = bucket.url("")
    key = f"{PROBE_PREFIX}probe-{uuid.uuid4().hex}"
    data = f"personatag doctor probe from {socket.gethostname()} pid {os.getpid()}\n".encode()
    fix = _bucket_fix(settings, where)
    try:
        try:
            bucket.put(key, data)
        except PersonatagError as exc:
            return Check(name, "fail", f"not writable: {_short(exc)}", fix)
        try:
            back = bucket.get(key)
        except PersonatagError as exc:
            return Check(name, "fail", f"not readable: {_short(exc)}", fix)
        if back != data:
            return Check(
                name,
                "fail",
                f"a probe object read back different from what was written at {where}",
                fix,
            )
        try:
            bucket.delete(key)
            left = bucket.exists(key)
        except PersonatagError as exc:
            return Check(name, "fail", f"cannot delete: {_short(exc)}", fix)
        if left:
            return Check(name, "fail", f"a deleted probe object is still there at {where}", fix)
    finally:
        with contextlib.suppress(Exception):
            bucket.delete(key)
        if bucket.local_root is not None:
            with contextlib.suppress(OSError):
                (bucket.local_root / PROBE_PREFIX.rstrip("/")).rmdir()
    return Check(name, "ok", f"{where} (write, read, delete)")


# -- disk space -------------------------------------------------------------------


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (a data dir not made yet lives there)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(
    name: str,
    path: Path,
    fix: str,
    warn_below: int = DISK_WARN_BYTES,
    fail_below: int = DISK_FAIL_BYTES,
) -> Check:
    """Free space on the file system of ``path`` (bytes): warn under 5 GiB, fail under 1 GiB."""
    usage = shutil.disk_usage(_existing(path))
    detail = f"{_gib(usage.free)} free at {path}"
    if usage.free < fail_below:
        return Check(name, "fail", f"{detail} (under {_gib(fail_below)})", fix)
    if usage.free < warn_below:
        return Check(name, "warn", f"{detail} (under {_gib(warn_below)})", fix)
    return Check(name, "ok", detail)


def _jvm_default_tmp() -> Path:
    # The JVM's java.io.tmpdir is /tmp on Linux whatever TMPDIR says.
    if sys.platform.startswith("linux"):
        return Path("/tmp")  # noqa: S108 - reporting on it, not writing to it
    return Path(tempfile.gettempdir())


def flink_tmp_dirs(settings: Settings, timeout: float = REST_TIMEOUT_S) -> list[Path]:
    """The cluster's io.tmp.dirs: from its REST config, else where the local cluster puts them.

    A cluster at PERSONATAG_FLINK_URL that does not say gets the JVM default.
    """
    try:
        with FlinkRest(rest_url(settings), timeout=timeout) as rest:
            entries = rest.get("/jobmanager/config")
        value = next((e.get("value") for e in entries if e.get("key") == "io.tmp.dirs"), None)
    except (OSError, FlinkUnreachable, FlinkRestError, ValueError, AttributeError, TypeError):
        value = None
    if not value:
        if not settings.flink_url:
            # Not running: where `personatag flink start` will put it.
            from personatag.engines.flink.runtime.cluster import ClusterLayout

            return [ClusterLayout.of(settings).tmp]
        return [_jvm_default_tmp()]
    parts = str(value).replace("|", ",").replace(os.pathsep, ",").split(",")
    return [Path(p.strip()) for p in parts if p.strip()]


def check_disks(settings: Settings) -> list[Check]:
    """Free space for the data dir, and for the Flink tmp dirs when the cluster is local."""
    checks = [
        check_disk(
            "disk data dir",
            Path(settings.data_dir),
            "free space on that file system or set PERSONATAG_DATA_DIR to a larger one",
        )
    ]
    if settings.flink_url and not _is_local_url(rest_url(settings)):
        return checks
    seen: set[Path] = set()
    for tmp in flink_tmp_dirs(settings):
        mount = _existing(tmp)
        if mount in seen:
            continue
        seen.add(mount)
        checks.append(
            check_disk(
                "disk flink tmp",
                tmp,
                "free space there, or point Flink's io.tmp.dirs at a larger file system",
            )
        )
    return checks


# -- running the checks -----------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A named check to run; ``fix`` is reported if it raises or times out."""

    name: str
    run: Callable[[], Check | list[Check]]
    fix: str


def _probes(settings: Settings) -> list[Probe]:
    # The probes run on threads: what they import lazily is imported here
    # first, since two threads importing one package at once can each see it
    # half initialised ("cannot import name ... partially initialized module").
    import sqlalchemy.engine  # noqa: F401

    import personatag.store.db  # noqa: F401
    from personatag.buckets import AREAS

    bucket_fix = _bucket_fix(settings, "the bucket area")
    probes = [
        Probe("java", check_java, "install Java 17 and put it on PATH or set JAVA_HOME"),
        Probe(
            "flink home",
            lambda: check_flink_home(settings),
            "set PERSONATAG_FLINK_PYTHON or PERSONATAG_FLINK_HOME",
        ),
        Probe(
            "flink cluster",
            lambda: check_flink_cluster(settings),
            _cluster_fix(settings, rest_url(settings)),
        ),
        Probe(
            "flink submitter",
            lambda: check_flink_submitter(settings),
            "run `personatag flink start`",
        ),
        Probe("store", lambda: check_store(settings), "check PERSONATAG_STORE_URL"),
        Probe(
            "columnar copy",
            lambda: check_columnar(settings),
            "delete the store's folder under PERSONATAG_DATA_DIR/columnar/ (it is rebuilt)",
        ),
    ]
    probes += [
        Probe(f"bucket {area}", functools.partial(check_bucket, settings, area), bucket_fix)
        for area in AREAS
    ]
    probes.append(
        Probe("disk", lambda: check_disks(settings), "check PERSONATAG_DATA_DIR and io.tmp.dirs")
    )
    return probes


def run_probes(probes: Sequence[Probe], timeout_s: float = CHECK_TIMEOUT_S) -> Report:
    """Run every probe in its own thread; one that raises or overruns becomes a fail."""
    results: dict[int, Check | list[Check]] = {}

    def call(i: int, probe: Probe) -> None:
        try:
            results[i] = probe.run()
        except PersonatagError as exc:
            results[i] = Check(probe.name, "fail", _short(exc), probe.fix)
        except Exception as exc:
            what = f"unexpected {type(exc).__name__}: {_short(exc)}"
            results[i] = Check(probe.name, "fail", what, probe.fix)

    # Daemon threads: a check stuck on a dead network must not hold up exit.
    threads = [
        threading.Thread(target=call, args=(i, p), name=f"doctor-{p.name}", daemon=True)
        for i, p in enumerate(probes)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    checks: list[Check] = []
    for i, probe in enumerate(probes):
        found = results.get(i)
        if found is None:
            checks.append(Check(probe.name, "fail", f"no answer within {timeout_s:g} s", probe.fix))
        elif isinstance(found, Check):
            checks.append(found)
        else:
            checks.extend(found)
    return Report(tuple(checks))


def diagnose(settings: Settings, timeout_s: float = CHECK_TIMEOUT_S) -> Report:
    """Run every check against ``settings``; see docs/operations.md for what each means."""
    return run_probes(_probes(settings), timeout_s)


def settings_report(exc: Exception) -> Report:
    """The report when the settings themselves cannot be read (nothing else can run)."""
    return Report(
        (
            Check(
                "settings",
                "fail",
                # The list of every valid setting would drown the one line.
                _short(str(exc).split("; valid settings are", 1)[0]),
                "correct or unset the PERSONATAG_* variable named (see docs/configuration.md)",
            ),
        )
    )
