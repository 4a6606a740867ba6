"""Jobs through store faults: dropped connections and deadlocks, on real PostgreSQL."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import func, select, text

from personatag.buckets import open_buckets
from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.domain import Action, utcnow
from personatag.jobs import repository as jobs
from personatag.jobs.progress import Progress
from personatag.requests.dispatcher import PREPARE_ATTEMPTS, Dispatcher
from personatag.requests.results import changes_csv_gz, changes_of
from personatag.store import Store
from personatag.tagging.changes import ChangesBuilder
from personatag.tagging.plan import Item, resolve
from personatag.tagging.runner import execute
from tests.helpers import add_contacts, population, terminate_other_backends

PERSONAS = ["p0", "p1", "p2", "p3"]


class FaultAfterItems(Progress):
    """A job's real progress, which also runs `fault` once, inside the job's
    transaction, after its first item is applied (before the next one)."""

    def __init__(self, store: Store, job_pk: int, fault: Callable[[], int]) -> None:
        super().__init__(store, job_pk)
        self.fault = fault
        self.fired = 0

    @contextmanager
    def in_transaction(
        self, name: str, *, total: int, unit: str, holds_write_lock: bool
    ) -> Iterator[Callable[[int], None]]:
        with super().in_transaction(
            name, total=total, unit=unit, holds_write_lock=holds_write_lock
        ) as step:

            def step_then_fault(done: int) -> None:
                step(done)
                if done == 1 and not self.fired:
                    self.fired = self.fault() or 1

            yield step_then_fault


def memberships(store: Store) -> dict[str, set[str]]:
    t = store.tables
    with store.read() as conn:
        rows = conn.execute(
            select(t.personas.c.key, t.contacts.c.id)
            .join(t.memberships, t.memberships.c.persona_pk == t.personas.c.pk)
            .join(t.contacts, t.contacts.c.pk == t.memberships.c.contact_pk)
        ).all()
    out: dict[str, set[str]] = {}
    for key, cid in rows:
        out.setdefault(key, set()).add(cid)
    return out


def test_a_job_whose_connections_are_terminated_mid_transaction_finishes_exactly(
    pg_store: Store,
) -> None:
    """Issue 17 item 6: a dropped PostgreSQL connection ("terminating connection
    due to administrator command", then PendingRollbackError) failed the job for
    good. The job's transaction is run again on a fresh connection and the job
    ends with exact memberships, counts and log (exactly once)."""
    store = pg_store
    add_contacts(store, population(400))
    for key in PERSONAS[:3]:
        add_persona(store, key, name=key, category="x")
    items = [
        Item("p0", Action.TAG, expr='region = "EMEA"'),
        Item("p1", Action.TAG, expr="seniority >= 5"),
        Item("p2", Action.TAG, contact_ids=[(1, "c0001"), (2, "c0002"), (3, "nobody")]),
    ]
    plan = resolve(store, items)
    now = utcnow()
    request_pk, job_pk, _ = jobs.open_request(
        store,
        request_id="killed",
        submitted_by="ana",
        persona_pk=None,
        action="tag",
        engine="local",
        criterion_pk=None,
        expr=None,
        as_of=now,
        dry_run=False,
        spec={"request": "killed"},
    )
    progress = FaultAfterItems(store, job_pk, lambda: terminate_other_backends(store))
    changes = ChangesBuilder(store)  # bulk entries' lines, built beside the transaction
    try:
        result = execute(
            store,
            Settings(bulk_log_threshold=10),
            plan,
            request_id="killed",
            request_pk=request_pk,
            job_pk=job_pk,
            as_of=now,
            dry_run=False,
            actor="ana",
            engine_name="local",
            progress=progress,
            changes=changes,
        )
        with store.read() as conn:
            data = gzip.decompress(
                changes_csv_gz(changes_of(conn, store, request_pk, prebuilt=changes))
            )
    finally:
        progress.close()
        changes.close()
    assert progress.fired >= 1  # the job's own session was among those ended
    assert result.status == "partial"  # "nobody" is not a contact
    assert (result.counts.tagged, result.failed) == (100 + 200 + 2, 1)
    got = memberships(store)
    people = population(400)
    assert got["p0"] == {p["id"] for p in people if p["region"] == "EMEA"}
    assert got["p1"] == {p["id"] for p in people if p["seniority"] >= 5}
    assert got["p2"] == {"c0001", "c0002"}
    t = store.tables
    with store.read() as conn:
        logged = conn.scalar(
            select(func.coalesce(func.sum(func.coalesce(t.membership_log.c.bulk_count, 1)), 0))
        )
        job = conn.execute(select(t.jobs.c.status, t.jobs.c.error).where(t.jobs.c.pk == job_pk))
        status, error = job.one()
    assert logged == 302  # each enter logged once: the rolled-back try left nothing
    assert (status, error) == ("partial", None)
    lines = data.decode().splitlines()
    assert lines[0] == "contact_id,persona,change"
    assert sorted(lines[1:]) == sorted(
        f"{cid},{key},enter" for key, ids in got.items() for cid in ids
    )  # the changes file lists each enter once


def _csv_request(rid: int, order: list[str], n: int) -> bytes:
    lines = ["contact_id,persona,action"]
    for key in order:
        lines += [f"c{i:04d},{key},tag" for i in range(rid % 2, n, 2)]
    return ("\n".join(lines) + "\n").encode()


def test_requests_locking_personas_in_opposite_orders_all_succeed(
    store: Store, tmp_path: Path
) -> None:
    """Issue 17 item 7: two workers running multi-persona CSV requests took the
    per-persona advisory locks in different orders and deadlocked on
    PostgreSQL; 4 of 6 requests failed with `current transaction is aborted`,
    which hid the deadlock. Every request must succeed with exact memberships."""
    n = 2000
    add_contacts(store, population(n))
    for key in PERSONAS:
        add_persona(store, key, name=key, category="x")
    settings = Settings(data_dir=tmp_path)
    b = open_buckets(settings)
    for rid in range(6):
        order = PERSONAS if rid % 2 == 0 else PERSONAS[::-1]
        b["requests"].put(f"r{rid}.csv", _csv_request(rid, order, n))
    d = Dispatcher(store, b, settings, workers=2)
    d.scan()
    d.drain()
    d.close()
    summaries = [json.loads(b["results"].get(f"r{rid}/summary.json")) for rid in range(6)]
    assert [(s["status"], s["error"]) for s in summaries] == [("succeeded", None)] * 6
    everyone = {f"c{i:04d}" for i in range(n)}
    assert memberships(store) == {key: everyone for key in PERSONAS}


class DropsWhilePreparing(Dispatcher):
    """A real dispatcher whose session is ended by the server (as an
    administrator or a restart would) the first `drops` times it looks for a
    prior run while preparing a file."""

    drops = 1

    def _prior_success(self, request_id: str) -> str | None:
        if self.drops > 0:
            self.drops -= 1
            with self.store.read() as conn:
                conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        return super()._prior_success(request_id)


def _expr_request(rid: str) -> bytes:
    return json.dumps(
        {"version": 1, "request_id": rid, "persona": "p0", "expr": 'region = "EMEA"'}
    ).encode()


def _outcomes(store: Store) -> dict[str, str | None]:
    rf = store.tables.request_files
    with store.read() as conn:
        return {r.key: r.outcome for r in conn.execute(select(rf.c.key, rf.c.outcome))}


def test_a_connection_dropped_while_a_file_is_prepared_does_not_fail_it(
    pg_store: Store, tmp_path: Path
) -> None:
    """Issue 17 items 4 and 6 together: a dropped PostgreSQL connection while a
    request file was being prepared ended the file as failed for good (`the
    request could not be prepared: the store failed (connection lost):
    terminating connection due to administrator command`), as if the file
    were bad. Preparing is tried again and the request runs, once."""
    store = pg_store
    add_contacts(store, population(40))
    add_persona(store, "p0", name="p0", category="x")
    settings = Settings(data_dir=tmp_path)
    b = open_buckets(settings)
    b["requests"].put("r1.json", _expr_request("r1"))
    d = DropsWhilePreparing(store, b, settings, workers=1)
    d.scan()
    d.drain()
    d.close()
    assert d.drops == 0  # the fault fired
    assert _outcomes(store) == {"r1.json": "succeeded"}
    summary = json.loads(b["results"].get("r1/summary.json"))
    assert summary["status"] == "succeeded" and summary["error"] is None
    emea = {row["id"] for row in population(40) if row["region"] == "EMEA"}
    assert memberships(store).get("p0", set()) == emea


def test_a_store_that_stays_down_while_a_file_is_prepared_lets_the_file_go(
    pg_store: Store, tmp_path: Path
) -> None:
    """Issue 17 items 4 and 6: when the store keeps failing while a file is
    prepared, the file is not ended as failed (nothing is wrong with it): its
    claim is let go, and a later scan runs it."""
    store = pg_store
    add_contacts(store, population(40))
    add_persona(store, "p0", name="p0", category="x")
    settings = Settings(data_dir=tmp_path)
    b = open_buckets(settings)
    b["requests"].put("r1.json", _expr_request("r1"))
    d = DropsWhilePreparing(store, b, settings, workers=1)
    d.drops = PREPARE_ATTEMPTS  # every attempt of the first scan fails
    d.scan()
    assert d.drops == 0
    assert list(d.stats.deferred) == ["r1.json"]
    assert _outcomes(store) == {}  # not failed, not claimed
    d.drops = 0
    d.scan()
    d.drain()
    d.close()
    assert _outcomes(store) == {"r1.json": "succeeded"}
    assert not b["results"].exists("r1+refused/summary.json")
