"""Reliability with real processes: `personatag stream` killed with SIGKILL at
random points under load, and a PostgreSQL server restarted under it. Afterwards
the memberships equal a full evaluation at the same feed offset and the
membership log has no duplicate or missing enter/exit."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from personatag.config import Settings
from personatag.definitions.criteria import add_criterion
from personatag.definitions.personas import add_persona
from personatag.engines.local.stream import ongoing, partitions
from personatag.engines.local.stream.evaluate import evaluate_set
from personatag.engines.local.stream.processor import StreamProcessor
from personatag.engines.local.stream.status import OFFSET_NAME
from personatag.store import Store, changefeed, open_store
from tests.helpers import add_contacts, population

SETTINGS = Settings(stream_reconcile_s=0)  # reconciliation would hide mistakes here


CRITERIA = [
    ("emea", "emea-senior", 'region = "EMEA" and seniority >= 5', "remove"),
    ("energy", "energy", 'count(read where sector = "Energy", 365 d) >= 2', "remove"),
    ("engaged", "engaged", 'persona("energy") and count(login, 365 d) >= 1', "remove"),
    ("americas", "americas", 'region in ("AMER", "APAC")', "keep"),
]


def prepare(
    store: Store, crits: list[tuple[str, str, str, str]] = CRITERIA, *, catch_up: bool = True
) -> None:
    """200 contacts, 10 publications, four personas and `crits` (name, persona,
    expression, exit policy) as ongoing criteria; then a processor catches up."""
    add_contacts(store, population(200))
    with store.write() as conn:
        conn.execute(
            store.tables.publications.insert(),
            [{"id": f"p{i}", "sector": "Energy" if i < 5 else "Credit"} for i in range(10)],
        )
    for key in ("emea-senior", "energy", "engaged", "americas"):
        add_persona(store, key, name=key, category="test")
    for name, persona, expr, exit_policy in crits:
        add_criterion(
            store, name, persona=persona, expr=expr, mode="ongoing", exit_policy=exit_policy
        )
    if catch_up:
        StreamProcessor(store, SETTINGS).catch_up()


def verify(store: Store) -> None:
    """Memberships = a full evaluation now; the log alternates and ends in the state."""
    t = store.tables
    with store.read() as conn:
        # Every partition's offset, when it runs in partitions.
        offset = partitions.least(conn, store, OFFSET_NAME)
        assert offset == changefeed.head(conn, store), "the stream did not catch up"
        catalog = store.catalog(conn)
        crits = ongoing.load(conn, store, (ongoing.ACTIVE,))
        assert len(crits) >= 4  # the prepared ones, and any a test added
        m, lg = t.memberships, t.membership_log
        for c in crits:
            full = set(evaluate_set(conn, store, c, catalog, _now()).tolist())
            held = set(conn.scalars(select(m.c.contact_pk).where(m.c.source == c.pk)))
            if c.exit_remove:
                assert held == full, (c.label, sorted(held ^ full))
            else:
                assert full <= held, (c.label, sorted(full - held))
            holders = set(
                conn.scalars(select(m.c.contact_pk).where(m.c.persona_pk == c.persona_pk))
            )
            history: dict[int, list[str]] = {}
            rows = conn.execute(
                select(lg.c.contact_pk, lg.c.change, lg.c.bulk_count)
                .where(lg.c.persona_pk == c.persona_pk)
                .order_by(lg.c.seq)
            )
            for cpk, change, bulk in rows:
                assert bulk is None
                history.setdefault(int(cpk), []).append(change)
            for cpk, changes in history.items():
                expected = ["enter", "exit"] * len(changes)
                assert changes == expected[: len(changes)], (c.label, cpk, changes)
                assert (changes[-1] == "enter") == (cpk in holders), (c.label, cpk, changes)
            assert holders <= set(history), c.label  # nobody holds it without an enter


def wait_caught_up(store: Store, timeout_s: float, message: str) -> None:
    """Wait until the stream (every partition, if it runs in them) is at the feed's head."""
    deadline = time.monotonic() + timeout_s
    while True:
        with store.read() as conn:
            if partitions.least(conn, store, OFFSET_NAME) == changefeed.head(conn, store):
                return
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def _now():  # type: ignore[no-untyped-def]
    from personatag.domain import utcnow

    return utcnow()


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")}
    return env | {
        "PERSONATAG_STORE_URL": url,
        "PERSONATAG_STREAM_RECONCILE_S": "0",
        "PERSONATAG_STREAM_BATCH": "50",
    }


def start_stream(url: str, log: Path, *options: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "personatag.cli",
                "stream",
                "--no-webhooks",
                "--metrics-port",
                "0",
                *options,
            ],
            env=_env(url),
            stdout=out,
            stderr=out,
        )


def wait_started(log: Path, starts: int, proc: subprocess.Popen[bytes]) -> None:
    """Wait (up to 60 s) until `starts` processors have said they follow the feed."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if log.read_bytes().count(b"following the change feed") >= starts:
            return
        time.sleep(0.02)


def start_load(url: str, seed: int, count: int, done: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.stream.load", url, str(seed), str(count), str(done)],
        env=_env(url),
    )


@pytest.mark.slow
def test_kill_9_under_load_loses_and_repeats_nothing(store_url: str, tmp_path: Path) -> None:
    store = open_store(store_url)
    prepare(store)
    rng = random.Random(7)
    done = tmp_path / "load.done"
    load = start_load(store_url, seed=11, count=1500, done=done)
    kills = 0
    log = tmp_path / "stream.log"
    try:
        while load.poll() is None or kills < 12:
            proc = start_stream(store_url, log)
            # The random point is counted from when this processor follows the
            # feed: a start-up slowed by a busy machine must not eat the window.
            wait_started(log, kills + 1, proc)
            time.sleep(rng.uniform(0.3, 2.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            kills += 1
            if kills > 60:
                break
    finally:
        if load.poll() is None:
            load.wait(300)
    assert load.returncode == 0 and done.read_text() == "1500"
    with store.read() as conn:
        assert changefeed.get_offset(conn, store, OFFSET_NAME) > 1, (
            "the killed processors did no work"
        )
    # The last processor starts where the killed ones stopped and catches up.
    StreamProcessor(store, SETTINGS).catch_up(timeout_s=300)
    verify(store)
    with store.read() as conn:
        ch = store.tables.changes
        assert conn.scalar(select(ch.c.seq).order_by(ch.c.seq.desc()).limit(1)) >= 1500
    store.dispose()


@pytest.fixture
def private_pg(tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    """A PostgreSQL server of our own (so restarting it disturbs no other test):
    (store URL, data directory, pg_ctl)."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not bins:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    pg_ctl = str(bins[-1])
    initdb = str(bins[-1].parent / "initdb")
    # Not under tmp_path: the server's user must be able to reach the directory.
    root = Path(tempfile.mkdtemp(prefix="pt-pg-"))
    data = root / "data"
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        shutil.chown(root, "postgres", "postgres")
    subprocess.run(
        [*as_pg, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    port = 20000 + random.randrange(20000)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*as_pg, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "pg.log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    try:
        yield url, data, pg_ctl
    finally:
        subprocess.run(
            [*as_pg, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_a_postgresql_restart_during_streaming_loses_nothing(
    private_pg: tuple[str, Path, str], tmp_path: Path
) -> None:
    url, data, pg_ctl = private_pg
    log = data.parent / "pg.log"
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    store = open_store(url, create=True)
    prepare(store)
    done = tmp_path / "load.done"
    load = start_load(url, seed=5, count=800, done=done)
    stream = start_stream(url, tmp_path / "stream.log")
    try:
        for _ in range(2):
            time.sleep(1.5)
            # An immediate stop is a crash for PostgreSQL: recovery on start.
            # With -l the new server writes to its log, not to a pipe run would wait on.
            subprocess.run(
                [
                    *as_pg,
                    pg_ctl,
                    "-D",
                    str(data),
                    "-m",
                    "immediate",
                    "-w",
                    "-l",
                    str(log),
                    "restart",
                ],
                check=True,
                capture_output=True,
            )
        load.wait(300)
        assert load.returncode == 0 and done.read_text() == "800"
        wait_caught_up(store, 120, "the stream did not catch up after the restarts")
        assert stream.poll() is None, "the stream processor died with the database"
    finally:
        stream.send_signal(signal.SIGTERM)
        stream.wait(60)
        if load.poll() is None:
            load.kill()
    verify(store)
    store.dispose()
