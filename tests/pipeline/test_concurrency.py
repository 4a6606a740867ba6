"""Concurrent writers of one persona: counts and pins stay right on both stores."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.domain import Action, PinKind
from personatag.memberships.pins import pin
from personatag.store import Store
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from tests.helpers import NOW, add_contacts, population


@pytest.fixture
def pop(store: Store) -> Store:
    add_contacts(store, population(400))
    add_persona(store, "emea", name="EMEA", category="region")
    return store


def test_identical_concurrent_tags_both_succeed(pop: Store) -> None:
    results: list[dict[str, object]] = []
    errors: list[BaseException] = []

    def tag() -> None:
        try:
            req = AdhocRequest(persona="emea", action=Action.TAG, expr='region = "EMEA"', as_of=NOW)
            results.append(run_adhoc(pop, req, Settings()).as_json())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=tag) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert sorted(r["tagged"] for r in results) == [0, 0, 0, 100]
    assert all(r["already"] == 100 - r["tagged"] for r in results)


def test_a_pin_waits_for_a_running_tag_of_its_persona(pop: Store) -> None:
    t = pop.tables
    with pop.read() as conn:
        persona_pk = conn.scalar(select(t.personas.c.pk).where(t.personas.c.key == "emea"))
    done = threading.Event()

    def pin_out() -> None:
        pin(pop, "emea", "c0004", PinKind.OUT)
        done.set()

    with pop.write() as conn:
        pop.lock_persona(conn, persona_pk)
        th = threading.Thread(target=pin_out)
        th.start()
        time.sleep(0.5)  # ordering, not speed: the pin must still be waiting
        assert not done.is_set()
    th.join(timeout=60)
    assert done.is_set()
