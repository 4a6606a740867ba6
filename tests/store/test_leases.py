"""Leases on real stores: one holder at a time, free again when the holder goes."""

from __future__ import annotations

from personatag.store import Store
from personatag.store.leases import try_lease
from tests.helpers import terminate_other_backends


def test_one_holder_at_a_time(store: Store) -> None:
    """Issue 17 item 13: what lets one stream processor step and the others wait."""
    first = try_lease(store, "stream-offset:stream")
    assert first is not None and first.held()
    assert try_lease(store, "stream-offset:stream") is None
    other = try_lease(store, "stream-offset:other")  # another name is another lease
    assert other is not None
    first.release()
    again = try_lease(store, "stream-offset:stream")
    assert again is not None and again.held()
    for lease in (again, other):
        lease.release()
    first.release()  # idempotent


def test_a_lease_goes_with_its_postgresql_session(pg_store: Store) -> None:
    """Issue 17 item 13: a holder whose session ended no longer holds the lease,
    and another can take it at once."""
    first = try_lease(pg_store, "stream-offset:stream")
    assert first is not None
    assert terminate_other_backends(pg_store) >= 1
    assert not first.held()
    second = try_lease(pg_store, "stream-offset:stream")
    assert second is not None and second.held()
    second.release()
