"""The embedded stream processor, on real SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from personatag.audit_log import list_events
from personatag.config import Settings
from personatag.contacts import add_events, set_contact
from personatag.criteria.to_python import EvalInput
from personatag.definitions.criteria import add_criterion, edit_criterion
from personatag.definitions.personas import add_persona
from personatag.domain import Action, PinKind, utcnow
from personatag.engines.local.stream import ongoing
from personatag.engines.local.stream.evaluate import Evaluated
from personatag.engines.local.stream.inputs import grouped
from personatag.engines.local.stream.processor import StreamProcessor
from personatag.importer import import_file
from personatag.memberships.log import decode_ids
from personatag.memberships.pins import pin
from personatag.memberships.retire import set_ongoing_status
from personatag.metrics import Metrics
from personatag.store import Store
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from tests.helpers import add_contacts, population
from tests.memberships.guard import outside_writes

SETTINGS = Settings(stream_reconcile_s=0)


def members(store: Store, key: str, source: int | None = None) -> set[str]:
    t = store.tables
    m = t.memberships
    with store.read() as conn:
        pk = conn.scalar(select(t.personas.c.pk).where(t.personas.c.key == key))
        sub = select(m.c.contact_pk).where(m.c.persona_pk == pk)
        if source is not None:
            sub = sub.where(m.c.source == source)
        return set(conn.scalars(select(t.contacts.c.id).where(t.contacts.c.pk.in_(sub))))


def log_of(store: Store, key: str) -> list[tuple[str, str]]:
    """(contact id, change) for every log entry of a persona, in order; a
    compact entry (PERSONATAG_STREAM_LOG_COMPACT) gives one per contact it names."""
    t = store.tables
    lg = t.membership_log
    with store.read() as conn:
        pk = conn.scalar(select(t.personas.c.pk).where(t.personas.c.key == key))
        ids = dict(conn.execute(select(t.contacts.c.pk, t.contacts.c.id)).all())
        rows = conn.execute(
            select(lg.c.contact_pk, lg.c.change, lg.c.bulk_ids)
            .where(lg.c.persona_pk == pk)
            .order_by(lg.c.seq)
        ).all()
    out = []
    for cpk, change, bulk in rows:
        for c in [cpk] if bulk is None else decode_ids(bulk).tolist():
            if c in ids:
                out.append((ids[c], change))
    return out


def criterion_pk(store: Store, name: str) -> int:
    c = store.tables.criteria
    with store.read() as conn:
        return int(
            conn.scalar(
                select(c.c.pk).where(c.c.name == name).order_by(c.c.version.desc()).limit(1)
            )
        )


def ongoing_criterion(
    store: Store, name: str, persona: str, expr: str, exit_policy: str = "keep"
) -> None:
    add_criterion(store, name, persona=persona, expr=expr, mode="ongoing", exit_policy=exit_policy)


@pytest.fixture
def pop(store: Store) -> Store:
    add_contacts(store, population(40))
    add_persona(store, "emea-senior", name="EMEA senior", category="region")
    add_persona(store, "energy", name="Energy readers", category="sector")
    with store.write() as conn:
        conn.execute(
            store.tables.publications.insert(),
            [
                {"id": f"p{i}", "title": f"Report {i}", "sector": "Energy" if i < 5 else "Credit"}
                for i in range(10)
            ],
        )
    return store


def test_a_change_tags_and_untags_once_the_criterion_is_swapped_in(pop: Store) -> None:
    ongoing_criterion(
        pop, "emea", "emea-senior", 'region = "EMEA" and seniority >= 5', exit_policy="remove"
    )
    p = StreamProcessor(pop, SETTINGS)
    done = p.catch_up()
    assert any("swapped in" in line for line in done.lifecycle)
    backfilled = {f"c{i:04d}" for i in range(40) if i % 4 == 0 and i % 10 >= 5}
    assert members(pop, "emea-senior") == backfilled
    # c0001 is AMER with seniority 1: it enters, then leaves.
    set_contact(pop, "c0001", {"region": "EMEA", "seniority": "7"})
    step = p.catch_up()
    assert (step.changes, step.entered, step.exited) == (1, 1, 0)
    assert "c0001" in members(pop, "emea-senior")
    set_contact(pop, "c0001", {"seniority": "2"})
    assert p.catch_up().exited == 1
    assert "c0001" not in members(pop, "emea-senior")
    assert log_of(pop, "emea-senior")[-2:] == [("c0001", "enter"), ("c0001", "exit")]
    with pop.read() as conn:
        assert conn.scalar(select(func.count()).select_from(pop.tables.stream_errors)) == 0


def test_the_latency_of_every_change_is_observed(pop: Store) -> None:
    ongoing_criterion(pop, "emea", "emea-senior", 'region = "EMEA"')
    metrics = Metrics()
    p = StreamProcessor(pop, SETTINGS, metrics)
    p.catch_up()
    before = metrics.registry.get_sample_value("personatag_stream_latency_seconds_count") or 0
    for i in range(7):  # one read by the criterion, the rest not
        set_contact(pop, f"c{i:04d}", {"seniority" if i else "region": "3" if i else "EMEA"})
    assert p.catch_up().changes == 7
    got = metrics.registry.get_sample_value("personatag_stream_latency_seconds_count")
    assert got == before + 7
    assert (
        metrics.registry.get_sample_value(
            "personatag_stream_latency_seconds_bucket", {"le": "+Inf"}
        )
        == got
    )


def test_a_failed_guard_exits_a_member_without_evaluating(pop: Store) -> None:
    ongoing_criterion(
        pop, "emea", "emea-senior", 'region = "EMEA" and seniority >= 5', exit_policy="remove"
    )
    p = StreamProcessor(pop, SETTINGS)
    p.catch_up()
    assert "c0008" in members(pop, "emea-senior")  # EMEA, seniority 8
    # Leaving EMEA fails the criterion's guard: answered "no match" without an
    # evaluation, and the membership held through it exits all the same.
    set_contact(pop, "c0008", {"region": "APAC"})
    step = p.step()
    assert (step.changes, step.evaluations, step.entered, step.exited) == (1, 0, 0, 1)
    assert "c0008" not in members(pop, "emea-senior")
    assert log_of(pop, "emea-senior")[-1] == ("c0008", "exit")
    # Back in EMEA: evaluated again and entered again.
    set_contact(pop, "c0008", {"region": "EMEA"})
    step = p.step()
    assert (step.evaluations, step.entered) == (1, 1)
    assert "c0008" in members(pop, "emea-senior")


def test_exit_keep_leaves_members_and_unread_fields_cost_nothing(pop: Store) -> None:
    add_criterion(
        pop, "emea", persona="emea-senior", expr='region = "EMEA"', mode="ongoing"
    )  # --exit keep is the default
    p = StreamProcessor(pop, SETTINGS)
    p.catch_up()
    set_contact(pop, "c0000", {"region": "APAC"})
    assert p.catch_up().exited == 0
    assert "c0000" in members(pop, "emea-senior")
    # No ongoing criterion reads job_title: the change is consumed, nothing evaluated.
    set_contact(pop, "c0002", {"job_title": "CIO"})
    step = p.step()
    assert (step.changes, step.evaluations) == (1, 0)


def test_pins_win_and_other_sources_keep_the_persona(pop: Store) -> None:
    ongoing_criterion(pop, "emea", "emea-senior", 'region = "EMEA"', exit_policy="remove")
    p = StreamProcessor(pop, SETTINGS)
    p.catch_up()
    pin(pop, "emea-senior", "c0001", PinKind.OUT)
    set_contact(pop, "c0001", {"region": "EMEA"})
    assert p.catch_up().entered == 0
    assert "c0001" not in members(pop, "emea-senior")
    # c0004 also holds the persona through an ad hoc request: leaving the
    # criterion removes its row but the persona stays, and no exit is logged.
    run_adhoc(
        pop,
        AdhocRequest(persona="emea-senior", action=Action.TAG, contact_ids=["c0004"]),
        SETTINGS,
    )
    before = log_of(pop, "emea-senior")
    set_contact(pop, "c0004", {"region": "AMER"})
    assert p.catch_up().exited == 0
    assert "c0004" in members(pop, "emea-senior")
    assert "c0004" not in members(pop, "emea-senior", source=criterion_pk(pop, "emea"))
    assert log_of(pop, "emea-senior") == before


def test_window_expiry_untags_without_any_change(pop: Store) -> None:
    ongoing_criterion(
        pop,
        "energy",
        "energy",
        'count(read where sector = "Energy", 90 d) >= 2',
        exit_policy="remove",
    )
    p = StreamProcessor(pop, SETTINGS)
    p.catch_up()
    now = utcnow()
    edge = now - timedelta(days=90) + timedelta(hours=1)  # leaves the window in an hour
    add_events(pop, "c0003", reads=[("p1", edge), ("p2", now - timedelta(days=3))])
    assert p.catch_up().entered == 1
    rc = pop.tables.stream_rechecks
    with pop.read() as conn:
        due = conn.execute(select(rc.c.due_at)).scalars().all()
    assert due == [edge + timedelta(days=90)]
    # Nothing happens before it is due ...
    assert p.step(now=now + timedelta(minutes=30)).rechecks == 0
    assert "c0003" in members(pop, "energy")
    # ... and at that moment the contact is re-checked and leaves.
    step = p.step(now=edge + timedelta(days=90, seconds=1))
    assert (step.changes, step.rechecks, step.exited) == (0, 1, 1)
    assert "c0003" not in members(pop, "energy")
    with pop.read() as conn:
        assert conn.scalar(select(func.count()).select_from(rc)) == 0  # no longer a member


def test_edit_builds_beside_the_old_version_and_swaps(pop: Store) -> None:
    ongoing_criterion(pop, "emea", "emea-senior", 'region = "EMEA"', exit_policy="remove")
    p = StreamProcessor(pop, SETTINGS)
    p.catch_up()
    old_members = members(pop, "emea-senior")
    edit_criterion(pop, "emea", expr='region = "EMEA" and seniority >= 5')
    # The backfill starts; the stream keeps applying changes with the old version.
    p.step()
    set_contact(pop, "c0001", {"region": "EMEA", "seniority": "9"})
    done = p.catch_up()
    assert any("emea@2 swapped in" in line for line in done.lifecycle)
    swaps = list_events(pop, action="criterion.swap")
    assert swaps and {(e["actor"], e["source"]) for e in swaps} == {("stream", "stream")}
    new_members = members(pop, "emea-senior")
    assert new_members == {c for c in old_members if int(c[1:]) % 10 >= 5} | {"c0001"}
    # Contacts in both versions were handed over: no exit and re-enter.
    log = log_of(pop, "emea-senior")
    kept = old_members & new_members
    assert all(log.count((c, "enter")) == 1 and (c, "exit") not in log for c in kept)
    c = pop.tables.criteria
    with pop.read() as conn:
        rows = conn.execute(select(c.c.version, c.c.status).where(c.c.name == "emea")).all()
        assert {v: s for v, s in rows} == {
            1: ongoing.SUPERSEDED,
            2: ongoing.ACTIVE,
        }


def test_pause_resume_and_retire(pop: Store) -> None:
    ongoing_criterion(pop, "emea", "emea-senior", 'region = "EMEA"', exit_policy="remove")
    p = StreamProcessor(pop, SETTINGS)
    p.catch_up()
    set_ongoing_status(pop, "emea", "pause")
    set_contact(pop, "c0001", {"region": "EMEA"})
    assert p.catch_up().entered == 0
    assert "c0001" not in members(pop, "emea-senior")
    set_ongoing_status(pop, "emea", "resume")  # rebuilt: catches up on what it missed
    p.catch_up()
    assert "c0001" in members(pop, "emea-senior")
    n = len(members(pop, "emea-senior"))
    set_ongoing_status(pop, "emea", "retire")
    assert members(pop, "emea-senior") == set()
    assert [change for _, change in log_of(pop, "emea-senior")].count("exit") == n
    set_contact(pop, "c0005", {"region": "EMEA"})
    assert p.catch_up().entered == 0


def test_persona_criteria_follow_in_the_same_batch(pop: Store) -> None:
    ongoing_criterion(pop, "emea", "emea-senior", 'region = "EMEA"', exit_policy="remove")
    ongoing_criterion(
        pop,
        "energy-emea",
        "energy",
        'persona("emea-senior") and seniority >= 8',
        exit_policy="remove",
    )
    p = StreamProcessor(pop, SETTINGS)
    p.catch_up()
    assert members(pop, "energy") == {"c0008", "c0028"}
    # c0009 (seniority 9) enters emea-senior, and so energy, in one step.
    set_contact(pop, "c0009", {"region": "EMEA"})
    step = p.step()
    assert (step.entered, step.exited) == (2, 0)
    assert "c0009" in members(pop, "energy")
    set_contact(pop, "c0009", {"region": "APAC"})
    assert p.step().exited == 2


def test_contacts_are_read_back_by_the_personas_their_changes_touch(pop: Store) -> None:
    """60 contacts changing region are read back as one group (the region
    criterion's persona only), the readers and the seniority change together with
    the union of theirs: pins, other sources and exits all still count."""
    add_contacts(pop, population(120)[40:])
    add_persona(pop, "senior", name="Senior", category="seniority")
    ongoing_criterion(pop, "emea", "emea-senior", 'region = "EMEA"', exit_policy="remove")
    ongoing_criterion(
        pop, "energy", "energy", 'count(read where sector = "Energy", 30 d) >= 1', "remove"
    )
    ongoing_criterion(pop, "senior", "senior", "seniority >= 5", exit_policy="remove")
    p = StreamProcessor(pop, SETTINGS)
    p.catch_up()
    pin(pop, "emea-senior", "c0050", PinKind.OUT)  # APAC, about to move to EMEA
    run_adhoc(  # EMEA, about to move to AMER
        pop,
        AdhocRequest(persona="emea-senior", action=Action.TAG, contact_ids=["c0048"]),
        SETTINGS,
    )
    p.catch_up()
    before = log_of(pop, "emea-senior")
    for i in range(40, 100):
        set_contact(pop, f"c{i:04d}", {"region": "AMER" if i % 4 == 0 else "EMEA"})
    for i in range(5):
        add_events(pop, f"c{i:04d}", reads=[("p1", utcnow() - timedelta(days=1))])
    set_contact(pop, "c0003", {"seniority": "9"})
    step = p.step()
    assert step.changes == 66
    moved = log_of(pop, "emea-senior")[len(before) :]
    entered = {c for c, change in moved if change == "enter"}
    exited = {c for c, change in moved if change == "exit"}
    assert entered == {f"c{i:04d}" for i in range(40, 100) if i % 4} - {"c0050"}
    assert exited == {f"c{i:04d}" for i in range(40, 100) if i % 4 == 0} - {"c0048"}
    assert "c0048" in members(pop, "emea-senior")
    assert {f"c{i:04d}" for i in range(5)} <= members(pop, "energy")
    assert "c0003" in members(pop, "senior")
    for crit in p.criteria().criteria:
        report = p.reconcile(crit, repair=False)
        assert (crit.name, report["missing"], report["extra"]) == (crit.name, 0, 0)


def test_grouped_reads_large_groups_alone_and_the_rest_together() -> None:
    wanted = {1: {10, 11}, 2: {11, 10}, 3: {12}, 4: set(), 5: {13, 10}}
    assert grouped(wanted, min_group=2) == [([10, 11], [1, 2]), ([10, 12, 13], [3, 5])]
    assert grouped(wanted, min_group=1) == [([10, 11], [1, 2]), ([12], [3]), ([10, 13], [5])]
    assert grouped({}) == []


class Flaky(StreamProcessor):
    """Evaluations of c0001 fail (as a criterion broken for one contact would)."""

    def evaluate_batch(
        self, work: dict[int, set[int]], inputs: dict[int, EvalInput], index: ongoing.Index
    ) -> Evaluated:
        out = super().evaluate_batch(work, inputs, index)
        bad = [(c, k) for c, k in out.evaluated if inputs[c].contact["id"] == "c0001"]
        for c, k in bad:
            out.evaluated.remove((c, k))
            out.matched.discard((c, k))
            out.errors.append((k, c, "ValueError: cannot compare"))
        return out


@pytest.mark.parametrize("reads_personas", [False, True])
def test_one_failing_evaluation_is_reported_not_fatal(pop: Store, reads_personas: bool) -> None:
    """A pair the evaluator fails on is answered by the store's SQL (as for a
    value of another type: tests/stream/test_odd_lists.py); one the store
    does not answer (a persona(...) criterion: settled in memory) is
    reported as an error, and the rest of the batch goes on."""
    expr = 'region = "EMEA"'
    if reads_personas:
        add_persona(pop, "nobody", name="Nobody", category="none")
        expr += ' and not persona("nobody")'
    ongoing_criterion(pop, "emea", "emea-senior", expr, exit_policy="remove")
    p = Flaky(pop, SETTINGS)
    p.catch_up()
    set_contact(pop, "c0001", {"region": "EMEA"})
    set_contact(pop, "c0005", {"region": "EMEA"})
    step = p.catch_up()
    with pop.read() as conn:
        errors = conn.execute(select(pop.tables.stream_errors)).all()
    held = members(pop, "emea-senior")
    if reads_personas:
        assert (step.changes, step.entered, step.errors) == (2, 1, 1)
        assert "c0005" in held and "c0001" not in held
        assert [e.error for e in errors] == ["ValueError: cannot compare"]
    else:
        assert (step.changes, step.entered, step.errors) == (2, 2, 0)
        assert {"c0001", "c0005"} <= held and not errors


def test_reconciliation_repairs_drift(pop: Store) -> None:
    ongoing_criterion(pop, "emea", "emea-senior", 'region = "EMEA"', exit_policy="remove")
    p = StreamProcessor(pop, SETTINGS)
    p.catch_up()
    t = pop.tables
    with pop.write() as conn, outside_writes():  # drift: a row lost, one too many
        pk = criterion_pk(pop, "emea")
        c0 = conn.scalar(select(t.contacts.c.pk).where(t.contacts.c.id == "c0000"))
        c1 = conn.scalar(select(t.contacts.c.pk).where(t.contacts.c.id == "c0001"))
        conn.execute(t.memberships.delete().where(t.memberships.c.contact_pk == c0))
        persona = conn.scalar(select(t.criteria.c.persona_pk).where(t.criteria.c.pk == pk))
        conn.execute(
            t.memberships.insert().values(
                persona_pk=persona, contact_pk=c1, source=pk, since=utcnow(), criterion_pk=pk
            )
        )
    crit = p.criteria().by_pk[pk]
    assert p.reconcile(crit, repair=False)["missing"] == 1
    report = p.reconcile(crit)
    assert (report["missing"], report["extra"]) == (1, 1)
    assert "c0000" in members(pop, "emea-senior")
    assert "c0001" not in members(pop, "emea-senior")
    assert p.reconcile(crit) == {"missing": 0, "extra": 0, "offset": report["offset"]}


def test_imports_feed_the_stream_set_based(pop: Store, tmp_path: Path) -> None:
    ongoing_criterion(pop, "emea", "emea-senior", 'region = "EMEA"', exit_policy="remove")
    settings = Settings(stream_reconcile_s=0, stream_set_based_contacts=5)
    p = StreamProcessor(pop, settings)
    p.catch_up()
    rows = ["id,region"] + [f"c{i:04d},{'EMEA' if i % 2 else 'AMER'}" for i in range(20)]
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    import_file(pop, "contacts", tmp_path / "c.csv")
    step = p.catch_up()
    assert step.changes == 1
    expected = {f"c{i:04d}" for i in range(20, 40, 4)} | {f"c{i:04d}" for i in range(1, 20, 2)}
    assert members(pop, "emea-senior") == expected


def test_ongoing_criteria_must_tag(pop: Store) -> None:
    from personatag.errors import InputError

    with pytest.raises(InputError, match="ongoing criterion tags"):
        add_criterion(
            pop, "x", persona="energy", expr='region = "EMEA"', mode="ongoing", action="untag"
        )
