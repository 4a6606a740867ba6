"""Per-field catch-up: a contact change that names its fields re-reads only
those fields, and the copy stays exact whatever order whole-row and
per-field changes of one contact come in (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from personatag.config import Settings
from personatag.contacts import add_events, set_contact
from personatag.engines.columnar import copy
from personatag.engines.columnar.copy import open_frame
from personatag.generate.run import generate
from personatag.store import Store
from personatag.tagging.preview import preview
from tests.columnar.support import assert_exact
from tests.columnar.test_copy import persist_mode, settings_for  # noqa: F401

END = datetime(2026, 6, 30, tzinfo=UTC)


@pytest.fixture
def populated(store: Store) -> Store:
    generate(store, contacts=80, seed=11, end=END)
    return store


def _cached_delta(s: Settings, store: Store) -> copy.Delta:
    return copy._CACHE[copy.folder_of(s, store).resolve()][1]


def _reopen(s: Settings, store: Store) -> None:
    copy._CACHE.pop(copy.folder_of(s, store).resolve(), None)


def test_a_named_field_change_is_a_patch(populated: Store, tmp_path: Path) -> None:
    s = settings_for(populated, tmp_path)
    open_frame(populated, s)
    set_contact(populated, "c00000004", {"seniority": "9", "region": "Ωmega"})
    frame = open_frame(populated, s)
    delta = _cached_delta(s, populated)
    assert delta.contacts.n == 0  # no whole row re-read
    assert set(delta.patches) == {"seniority", "region", "updated_at"}
    assert_exact(frame, populated)


def test_whole_rows_and_patches_in_any_order(
    populated: Store,
    tmp_path: Path,
    persist_mode: str,  # noqa: F811
) -> None:
    s = settings_for(populated, tmp_path)
    open_frame(populated, s)
    set_contact(populated, "c00000001", {"region": "A", "seniority": "1"})
    assert_exact(open_frame(populated, s), populated)
    # A whole-row change (no field list: as `generate` writes) after a patch.
    with populated.write() as conn:
        conn.execute(text("UPDATE contacts SET region = 'B', firm = 'F' WHERE pk = 1"))
        conn.execute(
            text("INSERT INTO changes (at, kind, contact_pk, n) VALUES (0, 'contact', 1, 1)")
        )
    assert_exact(open_frame(populated, s), populated)
    # A patch after the whole row, then a new contact and a patch of it.
    set_contact(populated, "c00000001", {"region": ""})
    set_contact(populated, "new-1", {"region": "N"}, create=True)
    set_contact(populated, "new-1", {"interests": "x;y", "seniority": "4"})
    assert_exact(open_frame(populated, s), populated)
    _reopen(s, populated)
    assert_exact(open_frame(populated, s), populated)
    set_contact(populated, "c00000002", {"interests": "", "email": "e@x"})
    add_events(populated, "c00000002", logins=[END])
    assert_exact(open_frame(populated, s), populated)
    _reopen(s, populated)
    assert_exact(open_frame(populated, s), populated)


def test_a_field_the_copy_does_not_know_rereads_the_row(populated: Store, tmp_path: Path) -> None:
    s = settings_for(populated, tmp_path)
    open_frame(populated, s)
    with populated.write() as conn:
        conn.execute(text("UPDATE contacts SET region = 'Q', firm = 'G' WHERE pk = 3"))
        conn.execute(
            text(
                "INSERT INTO changes (at, kind, contact_pk, n, fields)"
                " VALUES (0, 'contact', 3, 1, 'region,not_a_field')"
            )
        )
    frame = open_frame(populated, s)
    assert _cached_delta(s, populated).contacts.n == 1
    assert_exact(frame, populated)


def test_many_single_contact_changes(
    populated: Store,
    tmp_path: Path,
    persist_mode: str,  # noqa: F811
) -> None:
    """What the benchmark writes: one feed row per contact, one field each."""
    s = settings_for(populated, tmp_path)
    open_frame(populated, s)
    with populated.write() as conn:
        conn.execute(text("UPDATE contacts SET seniority = coalesce(seniority, 0) + 1"))
        conn.execute(
            text(
                "INSERT INTO changes (at, kind, contact_pk, n, fields)"
                " SELECT 0, 'contact', pk, 1, 'seniority' FROM contacts"
            )
        )
    assert_exact(open_frame(populated, s), populated)
    _reopen(s, populated)
    assert_exact(open_frame(populated, s), populated)


def test_compaction_links_what_it_leaves_unchanged(
    populated: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(copy, "PERSIST_CHANGES", 1)
    monkeypatch.setattr(copy, "COMPACT_SHARE", 0.0)
    s = settings_for(populated, tmp_path)
    open_frame(populated, s)
    folder = copy.folder_of(s, populated)
    old = folder / json.loads((folder / copy.MANIFEST).read_text())["base"]
    inodes = {p.name: p.stat().st_ino for p in old.iterdir()}
    set_contact(populated, "c00000005", {"seniority": "3"})
    frame = open_frame(populated, s)
    manifest = json.loads((folder / copy.MANIFEST).read_text())
    assert manifest["delta"] is None and (folder / manifest["base"]) != old
    new = {p.name: p.stat().st_ino for p in (folder / manifest["base"]).iterdir()}
    fields = [f for f, _ in manifest["fields"]]
    rewritten = {fields.index("seniority"), fields.index("updated_at")}
    for name, inode in new.items():
        parts = name.split(".")
        if name == "meta.json" or (
            parts[0] == "contacts" and parts[1].isdigit() and int(parts[1]) in rewritten
        ):
            assert inode != inodes.get(name), name
        else:
            assert inode == inodes[name], name  # reads, logins, publications, pk, others
    assert_exact(frame, populated)
    _reopen(s, populated)
    assert_exact(open_frame(populated, s), populated)


def test_a_copy_of_another_format_rebuilds(populated: Store, tmp_path: Path) -> None:
    s = settings_for(populated, tmp_path)
    open_frame(populated, s)
    folder = copy.folder_of(s, populated)
    manifest = json.loads((folder / copy.MANIFEST).read_text())
    old_base = manifest["base"]
    (folder / copy.MANIFEST).write_text(json.dumps({**manifest, "format": copy.FORMAT - 1}))
    _reopen(s, populated)
    frame = open_frame(populated, s)
    manifest = json.loads((folder / copy.MANIFEST).read_text())
    assert manifest["format"] == copy.FORMAT and manifest["base"] != old_base
    assert_exact(frame, populated)
    assert np.all(np.diff(np.asarray(frame.pk)) > 0)


def test_list_values_new_in_an_overlay_then_patched_are_one_code(
    populated: Store, tmp_path: Path
) -> None:
    # A new contact brings a list value the base does not know, sorting before
    # all of its values (the overlay appends it to the dictionary's tail, out
    # of order); a patch of another contact then names the same value: both
    # must hold the same code, or `contains` finds only one of them.
    s = settings_for(populated, tmp_path)
    open_frame(populated, s)
    set_contact(populated, "new-1", {"interests": "AAA-first"}, create=True)
    open_frame(populated, s)
    set_contact(populated, "c00000002", {"interests": "AAA-first;Alpha-new"})
    set_contact(populated, "c00000003", {"interests": "Alpha-new"})
    frame = open_frame(populated, s)
    assert_exact(frame, populated)
    words = list(frame.contacts.columns["interests"].dictionary)
    assert len(words) == len(set(words)), sorted(w for w in set(words) if words.count(w) > 1)
    for expr, want in (
        ('interests contains "AAA-first"', 2),
        ('interests contains "Alpha-new"', 2),
        ('interests contains_all ("AAA-first", "Alpha-new")', 1),
    ):
        for engine in ("columnar", "local"):
            got = preview(populated, expr, engine=engine, settings=s)
            assert got["count"] == want, (expr, engine, got)
