"""Persona sets equal the memberships after every kind of write, on SQLite and
PostgreSQL: ad hoc tag and untag (row by row and bulk), pins, the stream's
moves; a new process loads them from disk, and a copy that is ahead or of
another store is rebuilt."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from pyroaring import BitMap
from sqlalchemy import func, select

from personatag.config import Settings
from personatag.contacts import set_contact
from personatag.definitions.criteria import add_criterion
from personatag.definitions.personas import add_persona
from personatag.domain import Action, PinKind, utcnow
from personatag.engines.columnar import sets_disk
from personatag.engines.columnar.sets import PersonaSets, sets_folder
from personatag.engines.columnar.sets_stats import history, persona_stats
from personatag.engines.local.stream.processor import StreamProcessor
from personatag.errors import InputError, NotFoundError
from personatag.memberships import persona_view
from personatag.memberships.pins import pin, unpin
from personatag.memberships.rows import Holders, Writer
from personatag.store import Store
from personatag.store.rowwise import CHUNK
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from tests.helpers import add_contacts, population

ROWS = Settings(stream_reconcile_s=0)
BULK = Settings(stream_reconcile_s=0, bulk_log_threshold=3)  # most changes as bulk entries


def held(store: Store, key: str) -> BitMap:
    """What SQL says: the contacts with any membership row of `key`."""
    t = store.tables
    m = t.memberships
    with store.read() as conn:
        pk = conn.scalar(select(t.personas.c.pk).where(t.personas.c.key == key))
        rows = conn.scalars(select(m.c.contact_pk).where(m.c.persona_pk == pk))
        return BitMap(int(c) for c in rows)


def tag(store: Store, key: str, expr: str, settings: Settings = ROWS, untag: bool = False) -> None:
    action = Action.UNTAG if untag else Action.TAG
    run_adhoc(store, AdhocRequest(persona=key, action=action, expr=expr), settings)


def same(store: Store, sets: PersonaSets, *keys: str) -> None:
    sets.refresh()
    for key in keys:
        assert sets.get(key) == held(store, key), key


@pytest.fixture
def pop(store: Store) -> Store:
    add_contacts(store, population(40))
    for key in ("a", "b", "c"):
        add_persona(store, key, name=key.upper(), category="test")
    return store


def test_sets_follow_every_writer(pop: Store, tmp_path: Path) -> None:
    sets = PersonaSets(pop, sets_folder(tmp_path, pop))
    same(pop, sets, "a", "b", "c")
    assert len(sets.get("a")) == 0
    tag(pop, "a", 'region = "EMEA"')  # a row per contact
    tag(pop, "b", "seniority >= 5", BULK)  # one bulk entry
    same(pop, sets, "a", "b", "c")
    assert len(sets.get("a")) == 10 and len(sets.get("b")) == 20
    tag(pop, "b", "seniority >= 8", BULK, untag=True)  # a bulk exit
    tag(pop, "a", 'region = "EMEA" and seniority < 3')  # already held: no entry
    same(pop, sets, "a", "b")
    # pins win: a pin-out removes every row, a pin-in adds one; unpin gives back to rules
    pin(pop, "a", "c0000", PinKind.OUT)
    pin(pop, "a", "c0001", PinKind.IN)
    same(pop, sets, "a")
    tag(pop, "a", 'region = "EMEA"')  # c0000 stays out
    tag(pop, "a", "seniority >= 0", untag=True)  # c0001 stays in
    same(pop, sets, "a")
    assert list(sets.get("a")) == [held(pop, "a").min()] and len(held(pop, "a")) == 1
    unpin(pop, "a", "c0001")
    unpin(pop, "a", "c0000")
    same(pop, sets, "a", "b", "c")
    assert len(sets.get("a")) == 0
    assert sets.rebuilds == 1  # the first refresh only


def test_sets_follow_the_stream(pop: Store, tmp_path: Path) -> None:
    add_criterion(
        pop, "oc", persona="c", expr='region = "EMEA" and seniority >= 5',
        mode="ongoing", exit_policy="remove",
    )  # fmt: skip
    sets = PersonaSets(pop, sets_folder(tmp_path, pop))
    sets.refresh()
    p = StreamProcessor(pop, BULK)
    p.catch_up()  # the backfill swaps in: a bulk enter
    same(pop, sets, "c")
    assert len(sets.get("c")) > 0
    set_contact(pop, "c0001", {"region": "EMEA", "seniority": "7"})
    p.catch_up()
    same(pop, sets, "c")
    set_contact(pop, "c0008", {"seniority": "1"})  # was a member: exits
    set_contact(pop, "c0001", {"seniority": "2"})
    p.catch_up()
    same(pop, sets, "c")


def test_a_new_process_loads_from_disk_and_catches_up(pop: Store, tmp_path: Path) -> None:
    folder = sets_folder(tmp_path, pop)
    first = PersonaSets(pop, folder)
    tag(pop, "a", 'region = "EMEA"', BULK)
    first.refresh()  # the first refresh saves
    assert (folder / sets_disk.MANIFEST).exists()
    tag(pop, "b", 'region = "AMER"')
    tag(pop, "a", "seniority >= 5", BULK, untag=True)
    second = PersonaSets(pop, folder)  # as a new process would
    same(pop, second, "a", "b")
    assert second.rebuilds == 0
    third = PersonaSets(pop, folder)
    same(pop, third, "a", "b")
    assert third.rebuilds == 0
    # the daily figures survive the round trip through the files
    assert third.daily("a") == second.daily("a") == first.refresh().daily("a")


def test_a_copy_ahead_of_the_log_or_of_another_store_is_rebuilt(pop: Store, tmp_path: Path) -> None:
    folder = sets_folder(tmp_path, pop)
    tag(pop, "a", 'region = "EMEA"')
    PersonaSets(pop, folder).refresh()
    manifest = json.loads((folder / sets_disk.MANIFEST).read_text())
    # as if the store were restored from an older backup: the copy is ahead
    (folder / sets_disk.MANIFEST).write_text(json.dumps({**manifest, "last_seq": 10**9}))
    again = PersonaSets(pop, folder)
    same(pop, again, "a")
    assert again.rebuilds == 1
    # another store under the same folder
    (folder / sets_disk.MANIFEST).write_text(json.dumps({**manifest, "store": "sqlite:///x"}))
    other = PersonaSets(pop, folder)
    same(pop, other, "a")
    assert other.rebuilds == 1
    # an entry under the last seq that is not the one applied (another log)
    (folder / sets_disk.MANIFEST).write_text(json.dumps({**manifest, "last_print": "0:0:x"}))
    third = PersonaSets(pop, folder)
    same(pop, third, "a")
    assert third.rebuilds == 1
    # a damaged file
    manifest = json.loads((folder / sets_disk.MANIFEST).read_text())
    name = next(iter(manifest["personas"].values()))
    (folder / name).write_bytes(b"PTS1\x00")
    fourth = PersonaSets(pop, folder)
    same(pop, fourth, "a")
    assert fourth.rebuilds == 1


def test_a_store_restored_from_a_backup_is_noticed(tmp_path: Path) -> None:
    """SQLite: the database file copied back from before the last changes."""
    import shutil

    from personatag.store import open_store

    db = tmp_path / "store.db"
    store = open_store(f"sqlite:///{db}", create=True)
    add_contacts(store, population(40))
    add_persona(store, "a", name="A", category="test")
    tag(store, "a", 'region = "EMEA"')
    store.dispose()
    shutil.copy(db, tmp_path / "backup.db")
    store = open_store(f"sqlite:///{db}")
    tag(store, "a", 'region = "AMER"')
    PersonaSets(store, sets_folder(tmp_path, store)).refresh()
    store.dispose()
    shutil.copy(tmp_path / "backup.db", db)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"store.db{suffix}").unlink(missing_ok=True)
    store = open_store(f"sqlite:///{db}")
    try:
        sets = PersonaSets(store, sets_folder(tmp_path, store))
        same(store, sets, "a")
        assert len(sets.get("a")) == 10 and sets.rebuilds == 1
    finally:
        store.dispose()


def test_stats_equal_sql_counts(pop: Store, tmp_path: Path) -> None:
    tag(pop, "a", 'region = "EMEA"')
    tag(pop, "b", "seniority >= 5", BULK)
    tag(pop, "c", 'job_title = "CIO"', BULK)
    tag(pop, "b", "seniority >= 8", untag=True)
    sets = PersonaSets(pop, None).refresh()
    a, b, c = (held(pop, k) for k in "abc")
    out = persona_stats(sets, ["a", "b", "c"], days=3)
    assert [p["size"] for p in out["personas"]] == [len(a), len(b), len(c)]
    assert out["all"] == len(a & b & c) and out["any"] == len(a | b | c)
    ab = out["pairs"][0]
    assert (ab["a"], ab["b"]) == ("a", "b")
    assert (ab["both"], ab["a_not_b"], ab["b_not_a"], ab["either"]) == (
        len(a & b), len(a - b), len(b - a), len(a | b),
    )  # fmt: skip
    assert out["matrix"][1][2] == len(b & c) and out["matrix"][0][0] == len(a)
    today = date.today()
    for key in "abc":
        with pop.read() as conn:
            pk = sets.info(key).pk
            want = persona_view.size_history(conn, pop, pk, 30, today=today).as_json()
        assert history(sets, key, 30, today=today) == want
        assert want["size"][-1] == len(held(pop, key))
    assert out["history"]["size"]["b"][-1] == len(b)


def test_bad_keys(pop: Store) -> None:
    sets = PersonaSets(pop, None).refresh()
    with pytest.raises(NotFoundError, match="unknown persona 'nope'"):
        persona_stats(sets, ["a", "nope"])
    with pytest.raises(NotFoundError):
        sets("nope")
    with pytest.raises(InputError, match="given twice"):
        persona_stats(sets, ["a", "a"])
    with pytest.raises(InputError, match="days"):
        history(sets, "a", 0)


def test_one_catch_up_over_many_mixed_entries(pop: Store, tmp_path: Path) -> None:
    """Singles and bulk entries of the same contacts, in and out again, read
    in one catch-up: the last entry of each contact wins, in seq order."""
    sets = PersonaSets(pop, sets_folder(tmp_path, pop)).refresh()
    tag(pop, "a", 'region = "EMEA"')  # singles
    tag(pop, "a", "seniority >= 0", BULK, untag=True)  # a bulk exit of the same
    pin(pop, "a", "c0004", PinKind.IN)  # a single enter after it
    tag(pop, "a", "seniority >= 6", BULK)  # a bulk enter
    tag(pop, "a", "seniority = 7")  # nothing: already held
    tag(pop, "a", "seniority = 9", untag=True)  # singles out
    unpin(pop, "a", "c0004")  # c0004 (seniority 4) leaves
    same(pop, sets, "a")
    assert len(sets.get("a")) == 12  # seniority 6 to 8
    with pop.read() as conn:
        want = persona_view.size_history(conn, pop, sets.info("a").pk, 2).as_json()
    assert history(sets, "a", 2) == want


def test_apply_entries_last_entry_per_contact_wins() -> None:
    import numpy as np

    from personatag.engines.columnar.sets_apply import apply_entries
    from personatag.engines.columnar.sets_disk import Held
    from personatag.store.ids import encode_ids

    day = 86_400_000_000
    rows = np.array(
        [  # seq, at, persona, contact, enter, bulk_count
            [1, day, 1, 5, 1, 0],
            [2, day, 1, 5, 0, 0],
            [3, day, 1, 6, 1, 0],
            [4, 2 * day, 1, -1, 1, 3],  # 5, 6, 7 in bulk
            [5, 2 * day, 1, 7, 0, 0],
            [6, 2 * day, 2, 7, 1, 0],
        ],
        dtype=np.int64,
    )
    personas: dict[int, Held] = {}
    touched = apply_entries(personas, rows, {4: encode_ids(np.array([5, 6, 7]))})
    assert touched == {1, 2}
    assert list(personas[1].bitmap) == [5, 6] and list(personas[2].bitmap) == [7]
    assert personas[1].days == {1: [2, 1], 2: [3, 1]}


def test_an_entry_that_commits_after_a_later_one_is_applied(pg_store: Store) -> None:
    """PostgreSQL hands out seqs at insert and shows them at commit: an entry
    whose transaction is still open when a later seq is read is applied once
    it commits, and only once."""
    from personatag.domain import utcnow
    from personatag.memberships.log import LogContext, log_one

    store = pg_store
    add_contacts(store, population(4))
    for key in ("a", "b"):
        add_persona(store, key, name=key.upper(), category="test")
    sets = PersonaSets(store, None, settle_wait_s=0.2).refresh()
    b_pk = sets.info("b").pk
    ctx = LogContext(utcnow(), b_pk, 0, None, None, "test", "late")
    with store.engine.connect() as late:
        with late.begin():
            log_one(late, store, ctx, "enter", 3)  # takes a seq, not yet visible
            pin(store, "a", "c0001", PinKind.IN)  # a later seq, committed first
            sets.refresh()
            assert list(sets.get("a")) == [2] and len(sets.get("b")) == 0
        sets.refresh()  # the late one is visible now
        assert list(sets.get("b")) == [3]
        sets.refresh()
        assert list(sets.get("b")) == [3]
        assert sum(e for e, _ in sets.daily("b").values()) == 1  # counted once


def test_one_catch_up_over_more_compact_entries_than_an_in_list_holds(
    pop: Store, tmp_path: Path
) -> None:
    # The stream logs a compact entry most steps (PERSONATAG_STREAM_LOG_COMPACT):
    # a long gap holds more bulk entries than one IN list of their blocks may.
    add_criterion(pop, "oc", persona="a", expr="seniority >= 0", mode="ongoing")
    sets = PersonaSets(pop, sets_folder(tmp_path, pop))
    sets.refresh()
    t = pop.tables
    with pop.read() as conn:
        crit = conn.scalar(select(t.criteria.c.pk).where(t.criteria.c.name == "oc"))
        ppk = conn.scalar(select(t.personas.c.pk).where(t.personas.c.key == "a"))
        cpks = [int(c) for c in conn.scalars(select(t.contacts.c.pk).order_by(t.contacts.c.pk))]
    steps = CHUNK + 100
    for i in range(steps):  # each step one contact in or out: one compact entry
        cpk = cpks[i % len(cpks)]
        with pop.write() as conn:
            holders = Holders.load(conn, pop, {cpk: {ppk}})
            writer = Writer(pop, utcnow(), 50_000, compact=1)
            inside = (ppk, cpk) in holders.sources
            writer.decide(holders, ppk, crit, True, [cpk], () if inside else {cpk})
            writer.flush(conn)
    with pop.read() as conn:
        lg = t.membership_log
        assert conn.scalar(select(func.count()).where(lg.c.bulk_count.is_not(None))) == steps
    same(pop, sets, "a")
