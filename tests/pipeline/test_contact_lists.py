"""Explicit contact lists loaded into the store's temp tables."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import func, select

from personatag.store import Store
from personatag.tagging.contact_lists import CHUNK, LoadedList
from tests.helpers import add_contacts


def test_big_list_is_loaded_in_chunks_from_a_stream(store: Store) -> None:
    """Issue 17 item 10: a 26 MB contacts list cost 1.5 GB in the dispatcher: the
    ids were copied into a list, then into one row dict each for the whole list,
    before the first insert. They are now read once, CHUNK at a time, straight
    into the temp table; every id is still applied or reported exactly once."""
    add_contacts(store, [{"id": f"k{i:05d}"} for i in range(0, 2 * CHUNK + 1, 7)])
    pulled = 0

    def ids() -> Iterator[tuple[int, str]]:
        nonlocal pulled
        for i in range(2 * CHUNK + 1):
            pulled += 1
            yield i + 1, f"k{i:05d}"
        yield 2 * CHUNK + 2, ""

    with store.read() as conn:
        loaded = LoadedList(conn, store, ids())
        try:
            assert pulled == 2 * CHUNK + 1
            assert loaded.chunks == 3  # two full chunks and the rest, not one insert of all
            known = conn.execute(select(func.count()).select_from(loaded.pks)).scalar()
            assert known == len(range(0, 2 * CHUNK + 1, 7))
            failed = {(f.line, f.contact_id) for f in loaded.failed}
            assert (2 * CHUNK + 2, "") in failed
            assert len(failed) == 2 * CHUNK + 1 - known + 1
            assert [f.line for f in loaded.failed] == sorted(f.line for f in loaded.failed)
        finally:
            loaded.drop(conn)
