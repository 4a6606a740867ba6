"""The flink stream engine on a real cluster: the same membership changes as the
embedded processor, on two identical stores fed the same scripted changes."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from personatag.config import Settings
from personatag.contacts import add_events, set_contact
from personatag.definitions.criteria import add_criterion, edit_criterion
from personatag.definitions.personas import add_persona
from personatag.domain import utcnow
from personatag.engines.flink.stream import FlinkStream, FlinkStreamError
from personatag.engines.local.stream.processor import StreamProcessor
from personatag.memberships.log import decode_ids
from personatag.store import Store, changefeed, open_store
from tests.flink.conftest import wait_until
from tests.flink.engine_support import flink_settings
from tests.helpers import add_contacts, population

N = 120
PUBS = 10
CRITERIA = [
    # name, persona, expression, exit policy
    ("emea", "emea-senior", 'region = "EMEA" and seniority >= 5', "remove"),
    ("energy", "energy", 'count(read where sector = "Energy", 30 d) >= 2', "remove"),
    ("active", "active", "count(login, 7 d) >= 1", "keep"),
    ("cio", "cio", 'job_title ilike "%cio%" or interests contains "Credit"', "keep"),
    ("senior-energy", "senior-energy", 'persona("energy") and seniority >= 3', "remove"),
    ("lapsed", "lapsed", "count(login, 7 d) = 0 and seniority >= 8", "remove"),
]
REGIONS = ["EMEA", "AMER", "APAC", None]
TITLES = ["CIO", "Chief Investment Officer", "Credit Analyst", "Treasurer", None]
# Event ages well inside or outside every window (7 d, 30 d), so two stores
# evaluated seconds apart see them the same way.
DAYS_AGO = [0.5, 2, 5, 12, 20, 45, 80]


def build(store: Store, criteria: list[tuple[str, str, str, str]] = CRITERIA) -> None:
    add_contacts(store, population(N))
    for _, key, _, _ in criteria:
        add_persona(store, key, name=key, category="test")
    with store.write() as conn:
        conn.execute(
            store.tables.publications.insert(),
            [
                {"id": f"p{i}", "title": f"Report {i}", "sector": "Energy" if i < 5 else "Credit"}
                for i in range(PUBS)
            ],
        )
    for name, key, expr, exit_policy in criteria:
        add_criterion(store, name, persona=key, expr=expr, mode="ongoing", exit_policy=exit_policy)


def script(seed: int, rounds: int, now: datetime) -> list[list[tuple[str, str, Any]]]:
    """Rounds of (operation, contact id, argument), the same for both stores."""
    rng = random.Random(seed)
    out = []
    for _ in range(rounds):
        ops: list[tuple[str, str, Any]] = []
        for _ in range(40):
            cid = f"c{rng.randrange(N):04d}"
            kind = rng.random()
            if kind < 0.4:
                values: dict[str, Any] = {}
                if rng.random() < 0.6:
                    values["region"] = rng.choice(REGIONS) or ""
                if rng.random() < 0.6:
                    values["seniority"] = str(rng.randrange(10))
                if rng.random() < 0.3:
                    values["job_title"] = rng.choice(TITLES) or ""
                if rng.random() < 0.2:
                    values["interests"] = rng.choice(["Energy;Credit", "Energy", ""])
                if values:
                    ops.append(("set", cid, values))
            elif kind < 0.75:
                reads = [
                    (f"p{rng.randrange(PUBS)}", now - timedelta(days=rng.choice(DAYS_AGO)))
                    for _ in range(rng.randrange(1, 4))
                ]
                ops.append(("reads", cid, reads))
            else:
                ops.append(("logins", cid, [now - timedelta(days=rng.choice(DAYS_AGO))]))
        out.append(ops)
    return out


def apply(store: Store, ops: list[tuple[str, str, Any]]) -> None:
    for op, cid, arg in ops:
        if op == "set":
            set_contact(store, cid, arg)
        elif op == "reads":
            add_events(store, cid, reads=arg)
        else:
            add_events(store, cid, logins=arg)


def memberships(store: Store) -> set[tuple[str, str, str]]:
    t = store.tables
    m, c, p, cr = t.memberships, t.contacts, t.personas, t.criteria
    with store.read() as conn:
        rows = conn.execute(
            select(p.c.key, c.c.id, cr.c.name, cr.c.version)
            .select_from(m)
            .join(c, c.c.pk == m.c.contact_pk)
            .join(p, p.c.pk == m.c.persona_pk)
            .join(cr, cr.c.pk == m.c.source)
        ).all()
    return {(k, cid, f"{n}@{v}") for k, cid, n, v in rows}


def log_sequence(store: Store) -> list[tuple[str, str, str, str]]:
    """(persona, contact, change, criterion) of every membership-log entry, in
    order; a compact entry (PERSONATAG_STREAM_LOG_COMPACT) gives one per contact
    it names, in pk order."""
    t = store.tables
    lg, c, p, cr = t.membership_log, t.contacts, t.personas, t.criteria
    with store.read() as conn:
        ids = dict(conn.execute(select(c.c.pk, c.c.id)).all())
        rows = conn.execute(
            select(p.c.key, lg.c.contact_pk, lg.c.change, cr.c.name, cr.c.version, lg.c.bulk_ids)
            .select_from(lg)
            .join(p, p.c.pk == lg.c.persona_pk)
            .outerjoin(cr, cr.c.pk == lg.c.criterion_pk)
            .order_by(lg.c.seq)
        ).all()
    return [
        (k, ids.get(cpk), ch, f"{n}@{v}")
        for k, one, ch, n, v, bulk in rows
        for cpk in ([one] if bulk is None else decode_ids(bulk).tolist())
    ]


def stream_errors(store: Store) -> list[str]:
    with store.read() as conn:
        return list(conn.scalars(select(store.tables.stream_errors.c.error)))


def fresh_store(path: Path) -> Store:
    path.mkdir(parents=True, exist_ok=True)
    return open_store(f"sqlite:///{path / 'store.db'}", create=True)


def twins(tmp_path: Path) -> tuple[Store, Store, StreamProcessor]:
    """Two stores built alike (`embedded/`, `flink/`) and the embedded
    processor of the first: the reference a flink stream is compared with."""
    embedded_store = fresh_store(tmp_path / "embedded")
    flink_store = fresh_store(tmp_path / "flink")
    build(embedded_store)
    build(flink_store)
    return (
        embedded_store,
        flink_store,
        StreamProcessor(embedded_store, Settings(stream_reconcile_s=0)),
    )


def stream_settings(data_dir: Path, **extra: object) -> Settings:
    values: dict[str, object] = {
        "stream_reconcile_s": 0,
        "flink_parallelism": 2,
        "stream_flink_checkpoint_s": 0.3,
        "stream_flink_monitor_s": 0.2,
        "stream_flink_timeout_s": 90,
    }
    return flink_settings(data_dir, **(values | extra))


def same_round(
    embedded: StreamProcessor, flink: FlinkStream, ops: list[tuple[str, str, Any]], what: str
) -> None:
    """Apply `ops` to both processors' stores and catch both up: the same changes."""
    apply(embedded.store, ops)
    apply(flink.store, ops)
    a = embedded.catch_up()
    b = flink.catch_up(timeout_s=120)
    assert (b.changes, b.entered, b.exited, b.errors) == (
        a.changes,
        a.entered,
        a.exited,
        a.errors,
    ), what


def test_flink_stream_gives_the_same_membership_changes_as_the_embedded_processor(
    tmp_path: Path,
) -> None:
    embedded_store, flink_store, embedded = twins(tmp_path)
    rounds = script(seed=7, rounds=5, now=utcnow())
    flink = FlinkStream(flink_store, stream_settings(tmp_path / "flink"))
    try:
        embedded.catch_up()
        flink.catch_up(timeout_s=180)
        for i, ops in enumerate(rounds):
            if i == 3:
                # A new version mid-stream: backfill, catch-up and swap, then
                # evaluations against a new rules generation.
                for store in (embedded_store, flink_store):
                    edit_criterion(store, "emea", expr='region = "EMEA" and seniority >= 3')
            same_round(embedded, flink, ops, f"round {i}")
        assert memberships(flink_store) == memberships(embedded_store)
        assert log_sequence(flink_store) == log_sequence(embedded_store)
        assert len(log_sequence(flink_store)) > 100  # the script really moved people
        assert stream_errors(flink_store) == stream_errors(embedded_store) == []
        # The job evaluated (not the local fallback): answers went through staging.
        jid = json.loads(flink.state_file.read_text())["jid"]
        assert jid == flink.job_id and flink.rest.job(jid)["state"] == "RUNNING"
    finally:
        flink.close()
        embedded_store.dispose()
        flink_store.dispose()
    assert not flink.state_file.exists()


def test_an_unreachable_cluster_fails_the_step_and_moves_no_offset(tmp_path: Path) -> None:
    store = fresh_store(tmp_path / "s")
    build(store, CRITERIA[:1])  # no windows: swapping in needs no evaluation
    settings = stream_settings(tmp_path / "s").model_copy(
        update={"flink_url": "http://127.0.0.1:9"}  # nothing listens on the discard port
    )
    p = FlinkStream(store, settings)
    p.catch_up()
    memberships_before = memberships(store)
    set_contact(store, "c0001", {"region": "EMEA", "seniority": "9"})
    with pytest.raises(FlinkStreamError, match="does not answer"):
        p.step()
    with store.read() as conn:
        assert changefeed.get_offset(conn, store, "stream") == 0
        assert memberships(store) == memberships_before
    store.dispose()


def test_a_cancelled_job_is_replaced_and_the_batch_applied_once(tmp_path: Path) -> None:
    store = fresh_store(tmp_path / "s")
    build(store, CRITERIA[:1])
    p = FlinkStream(store, stream_settings(tmp_path / "s"))
    try:
        p.catch_up()
        set_contact(store, "c0001", {"region": "EMEA", "seniority": "9"})
        assert p.catch_up(timeout_s=120).entered == 1
        first = p.job_id
        assert first is not None
        p.rest.cancel(first)
        wait_until(lambda: p.rest.job(first)["state"] == "CANCELED", 60, "the cancel")
        set_contact(store, "c0002", {"region": "EMEA", "seniority": "9"})
        failures = 0
        while True:  # what StreamProcessor.run does, without its back-off
            try:
                step = p.step()
                break
            except FlinkStreamError as exc:
                failures += 1
                assert failures < 3, exc
        assert (step.changes, step.entered) == (1, 1)
        assert p.job_id not in (None, first)
        entered = [e for e in log_sequence(store) if e[1] == "c0002"]
        assert entered == [("emea-senior", "c0002", "enter", "emea@1")]
    finally:
        p.close()
        store.dispose()


def test_a_rescale_through_a_savepoint_loses_and_doubles_nothing(tmp_path: Path) -> None:
    embedded_store, flink_store, embedded = twins(tmp_path)
    # One rescale here (each start of the job loads its classes into the shared
    # cluster's task manager again); test_autoscale moves a job back down.
    rounds = script(seed=11, rounds=2, now=utcnow())
    flink = FlinkStream(flink_store, stream_settings(tmp_path / "flink", flink_parallelism=1))
    try:
        embedded.catch_up()
        flink.catch_up(timeout_s=180)
        jobs = [flink.job_id]
        for i, ops in enumerate(rounds):
            if i:  # 1 -> 2 through a savepoint
                flink.rescale(2)
                jid = flink.job_id
                assert jid is not None and jid not in jobs
                jobs.append(jid)
                state = json.loads(flink.state_file.read_text())
                assert state["jid"] == jid and state["parallelism"] == 2
                assert state["savepoint"].startswith("file:")
                restored = _restored_from(flink, jid)
                assert restored["is_savepoint"] is True
                assert restored["external_path"] == state["savepoint"]
                old = flink.rest.job(jobs[-2])["state"]
                assert old == "FINISHED"  # stopped with the savepoint, not failed
            same_round(embedded, flink, ops, f"round {i}")
        assert memberships(flink_store) == memberships(embedded_store)
        assert log_sequence(flink_store) == log_sequence(embedded_store)
        assert stream_errors(flink_store) == []
        assert max(v["parallelism"] for v in flink.rest.job(jobs[-1])["vertices"]) == 2
        assert max(v["parallelism"] for v in flink.rest.job(jobs[-2])["vertices"]) == 1
    finally:
        flink.close()
        embedded_store.dispose()
        flink_store.dispose()


def test_a_redeploy_of_new_code_restores_the_job_from_a_savepoint(tmp_path: Path) -> None:
    """A process with other code (another bundle fingerprint) finds the job an
    earlier one left running: it stops that job with a savepoint and starts its
    own code from it, and the stream goes on losing and doubling nothing."""
    embedded_store, flink_store, embedded = twins(tmp_path)
    rounds = script(seed=5, rounds=2, now=utcnow())
    settings = stream_settings(tmp_path / "flink", flink_parallelism=1)
    old = FlinkStream(flink_store, settings)
    new: FlinkStream | None = None
    try:
        embedded.catch_up()
        old.catch_up(timeout_s=180)
        same_round(embedded, old, rounds[0], "round 0, the old code")
        first = old.job_id
        assert first is not None
        # The old process goes away without stopping its job (a deploy replaces
        # it); its state file says the job runs other code than this one's.
        state = json.loads(old.state_file.read_text())
        old.state_file.write_text(json.dumps(state | {"fingerprint": "0" * 16}))
        new = FlinkStream(flink_store, settings)
        same_round(embedded, new, rounds[1], "round 1, the new code")
        assert new.redeploys == [(first, new.job_id)] and new.job_id != first
        assert new.rest.job(first)["state"] == "FINISHED"  # stopped with a savepoint
        recorded = json.loads(new.state_file.read_text())
        assert recorded["jid"] == new.job_id and recorded["fingerprint"] != "0" * 16
        restored = _restored_from(new, str(new.job_id))
        assert restored["is_savepoint"] is True
        assert restored["external_path"] == recorded["savepoint"]
        assert memberships(flink_store) == memberships(embedded_store)
        assert log_sequence(flink_store) == log_sequence(embedded_store)
        assert stream_errors(flink_store) == []
    finally:
        (new or old).close()
        embedded_store.dispose()
        flink_store.dispose()


def _restored_from(flink: FlinkStream, jid: str, timeout: float = 60) -> dict[str, Any]:
    """What job `jid` was restored from (its checkpoint statistics' `restored`)."""

    def restored() -> dict[str, Any] | None:
        latest = flink.rest.get(f"/jobs/{jid}/checkpoints").get("latest") or {}
        found: dict[str, Any] | None = latest.get("restored")
        return found

    found = wait_until(restored, timeout, f"job {jid} to report its restore")
    assert isinstance(found, dict)
    return found
