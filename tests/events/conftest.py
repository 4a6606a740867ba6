"""A populated store (both kinds) and a live receiver for the events tests."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.domain import Action, utcnow
from personatag.store import Store
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from tests.events.receiver import Receiver, receiver
from tests.helpers import NOW, add_contacts, population

# Tiny waits so retries come due at once; a small batch so bulk entries split.
FAST = Settings(
    webhook_backoff_s=1.0,
    webhook_backoff_max_s=1.5,
    webhook_max_attempts=3,
    webhook_batch=4,
    webhook_timeout_s=5.0,
)


def tag(
    store: Store, persona: str, expr: str | None, *, bulk: int = 50_000, **kw: Any
) -> dict[str, Any]:
    """A real ad hoc run; `bulk` is the bulk-log threshold (small: one bulk entry)."""
    kw.setdefault("action", Action.TAG)
    kw.setdefault("as_of", NOW)
    kw.setdefault("actor", "alice")
    settings = Settings(bulk_log_threshold=bulk)
    return run_adhoc(store, AdhocRequest(persona=persona, expr=expr, **kw), settings).as_json()


class Clock:
    """A fake `now` that moves an hour per tick: retries are always due."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> Any:
        self.now += timedelta(hours=1)
        return self.now


@pytest.fixture
def pop(store: Store) -> Store:
    add_contacts(store, population(40))
    add_persona(store, "emea", name="EMEA readers", category="region")
    add_persona(store, "cio", name="CIO", category="job title")
    return store


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with receiver() as r:
        yield r
