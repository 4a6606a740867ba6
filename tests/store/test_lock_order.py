"""Writers of several personas take their locks in one global order (PostgreSQL)."""

from __future__ import annotations

import threading
import time

from sqlalchemy import text

from personatag.definitions.criteria import add_criterion, edit_criterion
from personatag.definitions.personas import add_persona
from personatag.memberships.retire import set_ongoing_status
from personatag.store import Store
from tests.helpers import add_contacts, population


def _persona_pk(store: Store, key: str) -> int:
    p = store.tables.personas
    with store.read() as conn:
        return int(conn.execute(p.select().where(p.c.key == key)).one().pk)


def _someone_waits_for_an_advisory_lock(store: Store) -> bool:
    with store.read() as conn:
        return bool(
            conn.scalar(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND database = (SELECT oid FROM pg_database "
                    "WHERE datname = current_database())"
                )
            )
        )


def test_retiring_a_criterion_whose_versions_name_two_personas_cannot_deadlock(
    pg_store: Store,
) -> None:
    """Issue 17 item 7 (its family): retiring an ongoing criterion whose live
    versions name different personas (v1 active on one persona, v2 building on
    another after `criterion edit --persona`) locked those personas in version
    order, not in the global order every other writer uses; against a
    request or a stream step holding the lower persona it deadlocked. Retire
    takes them in the global order, so it simply waits its turn."""
    store = pg_store
    add_contacts(store, population(20))
    add_persona(store, "p-low", name="low", category="x")
    add_persona(store, "p-high", name="high", category="x")
    low, high = _persona_pk(store, "p-low"), _persona_pk(store, "p-high")
    assert low < high
    add_criterion(store, "c", persona="p-high", expr='region = "EMEA"', mode="ongoing")
    edit_criterion(store, "c", persona="p-low")  # both versions are live (building)

    errors: list[BaseException] = []

    def retire() -> None:
        try:
            set_ongoing_status(store, "c", "retire")
        except BaseException as exc:
            errors.append(exc)

    # Another writer of both personas (a multi-persona request), in the global order.
    with store.engine.connect() as other, other.begin() as tx:
        store.lock_personas(other, [low])
        worker = threading.Thread(target=retire)
        worker.start()
        deadline = time.monotonic() + 30
        while not _someone_waits_for_an_advisory_lock(store):  # retire waits for a lock
            assert worker.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        try:
            store.lock_personas(other, [high])
        except BaseException as exc:
            errors.append(exc)
            tx.rollback()
    worker.join(60)
    assert not worker.is_alive()
    assert errors == []
    c = store.tables.criteria
    with store.read() as conn:
        assert set(conn.scalars(c.select().with_only_columns(c.c.status))) == {"retired"}
