"""The columnar copy is exact after every kind of write (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from personatag.config import Settings
from personatag.contacts import add_events, set_contact
from personatag.definitions.attributes import add_attribute
from personatag.engines.columnar import copy
from personatag.engines.columnar.copy import open_frame
from personatag.generate.run import generate
from personatag.importer import import_file
from personatag.store import Store, open_store
from tests.columnar.support import assert_exact

END = datetime(2026, 6, 30, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def settings_for(store: Store, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", store_url=store.engine.url.render_as_string(False))


@pytest.fixture
def populated(store: Store) -> Store:
    generate(store, contacts=120, seed=5, end=END)
    return store


@pytest.fixture(params=["memory", "persisted", "compacted"])
def persist_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Catch-up kept in the process, persisted as a delta, or compacted into a base."""
    if request.param != "memory":
        monkeypatch.setattr(copy, "PERSIST_CHANGES", 1)
        if request.param == "compacted":
            monkeypatch.setattr(copy, "COMPACT_SHARE", 0.0)
    return str(request.param)


def fresh_process(folder: Path) -> None:
    """Forget what this process caught up, as a new process would."""
    copy._CACHE.pop(folder.resolve(), None)


def test_generate_builds_an_exact_copy(populated: Store, tmp_path: Path) -> None:
    s = settings_for(populated, tmp_path)
    frame = open_frame(populated, s)
    assert frame.personas is None
    assert all(seg.sorted for seg in frame.reads)
    assert_exact(frame, populated)
    fresh_process(copy.folder_of(s, populated))
    assert_exact(open_frame(populated, s), populated)  # opened from disk


def test_contact_set_is_seen_by_the_next_open(
    populated: Store, tmp_path: Path, persist_mode: str
) -> None:
    s = settings_for(populated, tmp_path)
    open_frame(populated, s)
    set_contact(populated, "c00000003", {"region": "Ångström", "seniority": "7"})
    set_contact(populated, "c00000004", {"interests": "Energy;Crédit;New words", "email": ""})
    set_contact(populated, "new-1", {"region": "EMEA", "interests": "Zeta"}, create=True)
    assert_exact(open_frame(populated, s), populated)
    set_contact(populated, "c00000003", {"region": ""})
    set_contact(populated, "new-2", {"job_title": "CIO"}, create=True)
    assert_exact(open_frame(populated, s), populated)
    fresh_process(copy.folder_of(s, populated))
    assert_exact(open_frame(populated, s), populated)


def test_reads_and_logins(populated: Store, tmp_path: Path, persist_mode: str) -> None:
    s = settings_for(populated, tmp_path)
    open_frame(populated, s)
    add_events(
        populated,
        "c00000010",
        reads=[("p000001", END - timedelta(days=1)), ("p000002", END)],
        logins=[END + timedelta(hours=1)],
    )
    assert_exact(open_frame(populated, s), populated)
    add_events(populated, "c00000011", logins=[END - timedelta(days=400)])
    fresh_process(copy.folder_of(s, populated))
    assert_exact(open_frame(populated, s), populated)
    add_events(populated, "c00000010", reads=[("p000003", END)])
    assert_exact(open_frame(populated, s), populated)


def test_import_of_contacts_publications_and_reads(
    store: Store, tmp_path: Path, persist_mode: str
) -> None:
    s = settings_for(store, tmp_path)
    (tmp_path / "c.csv").write_text("id,region,interests\na,EMEA,x;y\nb,,\n")
    (tmp_path / "p.csv").write_text(
        "id,title,published_at,sector\np1,T,2026-01-01T00:00:00Z,Energy\n"
    )
    import_file(store, "contacts", tmp_path / "c.csv")
    import_file(store, "publications", tmp_path / "p.csv")
    assert_exact(open_frame(store, s), store)
    (tmp_path / "c2.csv").write_text("id,region\nb,APAC\nc,AMER\n")
    (tmp_path / "p2.csv").write_text("id,title\np2,Second\n")
    (tmp_path / "r.csv").write_text(
        "contact_id,publication_id,read_at\na,p1,2026-02-01T00:00:00Z\nc,p2,2026-02-02T00:00:00Z\n"
    )
    (tmp_path / "l.csv").write_text("contact_id,login_at\nb,2026-03-01T00:00:00Z\n")
    import_file(store, "contacts", tmp_path / "c2.csv")
    import_file(store, "publications", tmp_path / "p2.csv")
    import_file(store, "reads", tmp_path / "r.csv")
    import_file(store, "logins", tmp_path / "l.csv")
    assert_exact(open_frame(store, s), store)
    fresh_process(copy.folder_of(s, store))
    assert_exact(open_frame(store, s), store)


def test_a_new_custom_attribute_rebuilds(populated: Store, tmp_path: Path) -> None:
    s = settings_for(populated, tmp_path)
    open_frame(populated, s)
    add_attribute(populated, "aum", "float")
    add_attribute(populated, "tags", "list")
    populated.refresh()
    set_contact(populated, "c00000001", {"aum": "12.5", "tags": "a;b"})
    frame = open_frame(populated, s)
    assert {"aum", "tags"} <= set(frame.contacts.columns)
    assert_exact(frame, populated)


def test_another_store_rebuilds(
    populated: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings_for(populated, tmp_path)
    open_frame(populated, s)
    first = copy.folder_of(s, populated)
    other = open_store(f"sqlite:///{tmp_path / 'other.db'}", create=True)
    try:
        generate(other, contacts=30, seed=9, end=END)
        s2 = Settings(data_dir=s.data_dir, store_url=str(other.engine.url))
        # Each store has a folder of its own; a database replaced at the same
        # URL finds the old one's copy there, and rebuilds it.
        assert copy.folder_of(s2, other) != first
        monkeypatch.setattr(copy, "folder_of", lambda settings, store: first)
        fresh_process(first)
        assert_exact(open_frame(other, s2), other)
    finally:
        other.dispose()


def test_a_store_restored_from_backup_rebuilds(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    store = open_store(f"sqlite:///{db}", create=True)
    generate(store, contacts=60, seed=2, end=END)
    store.dispose()
    shutil.copy(db, tmp_path / "backup.db")
    store = open_store(f"sqlite:///{db}")
    s = settings_for(store, tmp_path)
    set_contact(store, "c00000001", {"region": "After backup"})
    set_contact(store, "c00000002", {"region": "After backup"})
    assert_exact(open_frame(store, s), store)
    store.dispose()
    shutil.copy(tmp_path / "backup.db", db)  # the copy is now ahead of the feed
    store = open_store(f"sqlite:///{db}")
    try:
        assert_exact(open_frame(store, s), store)
        # Restored again, then written past the copy's offset: the feed row at
        # the copy's offset is not the one it reflects.
        open_frame(store, s)
        set_contact(store, "c00000005", {"region": "x"})
        frame_before = open_frame(store, s)
        assert_exact(frame_before, store)
        store.dispose()
        shutil.copy(tmp_path / "backup.db", db)
        store = open_store(f"sqlite:///{db}")
        for i in range(3):
            set_contact(store, f"c0000000{i + 6}", {"region": f"y{i}"})
        fresh_process(copy.folder_of(s, store))
        assert_exact(open_frame(store, s), store)
    finally:
        store.dispose()


SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from personatag.config import Settings
    from personatag.contacts import set_contact
    from personatag.engines.columnar import copy, delta
    from personatag.store import open_store

    url, data_dir, where = sys.argv[1:4]
    store = open_store(url)
    s = Settings(data_dir=data_dir, store_url=url)
    for i in range(5):
        set_contact(store, f"c0000002{i}", {"region": f"killed {i}"})
    if where == "after-commit":
        os.kill(os.getpid(), signal.SIGKILL)
    copy.PERSIST_CHANGES = 1
    real = delta.write_arrays if where == "mid-delta" else copy.write_table

    def die(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "mid-delta":
        delta.write_arrays = die
    else:
        copy.COMPACT_SHARE = 0.0
        copy.write_table = die
    copy.open_frame(store, s)
    """
)


@pytest.mark.parametrize("where", ["after-commit", "mid-delta", "mid-compaction"])
def test_kill_9_between_commit_and_update(populated: Store, tmp_path: Path, where: str) -> None:
    s = settings_for(populated, tmp_path)
    open_frame(populated, s)
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}")
    env = {k: v for k, v in env.items() if not k.startswith("PERSONATAG_")}
    url = populated.engine.url.render_as_string(False)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, url, str(s.data_dir), where], env=env, check=False
    )
    assert done.returncode == -signal.SIGKILL
    fresh_process(copy.folder_of(s, populated))
    assert_exact(open_frame(populated, s), populated)
    set_contact(populated, "c00000030", {"region": "later"})
    assert_exact(open_frame(populated, s), populated)
