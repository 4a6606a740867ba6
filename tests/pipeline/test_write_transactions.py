"""How many write transactions one request takes (issue 18: the request, job
and claim bookkeeping in as few as correctness allows). Counted on the store's
own commits, on SQLite and PostgreSQL; progress counts are kept out of it (a
long interval), so only phases and bookkeeping are counted.

A request file: its claim; its request and job (queued, owned, named on the
claim); the job's start with its first phase; the `applying` phase, written
before the apply so that it shows while the apply runs; the memberships with
the job's outcome and `writing results`; the file's outcome with `done`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from personatag.buckets import open_buckets
from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.domain import Action, utcnow
from personatag.requests.dispatcher import Dispatcher
from personatag.store import Store
from personatag.tagging.outcome import AdhocResult
from personatag.tagging.plan import Item, resolve
from personatag.tagging.runner import JobRequest, JobRunner
from tests.helpers import add_contacts, population

LONG = 3600.0  # seconds between progress counts: none is written


@pytest.fixture
def pop(store: Store) -> Store:
    add_contacts(store, population(40))
    add_persona(store, "emea", name="EMEA", category="region")
    add_persona(store, "cio", name="CIO", category="job title")
    return store


@pytest.fixture
def writes(pop: Store) -> Iterator[Callable[[Callable[[], Any]], int]]:
    def commit(conn: Any) -> None:
        if counting and conn.get_execution_options().get("pt_write"):
            counted.append(1)

    counted: list[int] = []
    counting = False
    event.listen(pop.engine, "commit", commit)

    def count(work: Callable[[], Any]) -> int:
        nonlocal counting
        counted.clear()
        counting = True
        try:
            work()
        finally:
            counting = False
        return len(counted)

    yield count
    event.remove(pop.engine, "commit", commit)


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("expr.json", {"request_id": "e", "persona": "emea", "expr": 'region = "EMEA"'}),
        ("list.csv", "contact_id,persona,action\nc0001,cio,tag\nnope,cio,tag\nc0002,cio,tag\n"),
    ],
)
def test_a_request_file_takes_six_write_transactions(
    pop: Store,
    writes: Callable[[Callable[[], Any]], int],
    tmp_path: Path,
    name: str,
    body: str | dict[str, str],
) -> None:
    settings = Settings(data_dir=tmp_path)
    buckets = open_buckets(settings)
    data = body if isinstance(body, str) else json.dumps({"version": 1, **body})
    buckets["requests"].put(name, data.encode())
    d = Dispatcher(pop, buckets, settings, workers=1, progress_s=LONG)
    try:
        assert writes(lambda: (d.scan(), d.drain())) == 6
    finally:
        d.close()
    # One row of the list is an unknown contact: partial.
    assert d.stats.finished == {"partial" if name.endswith(".csv") else "succeeded": 1}


@pytest.mark.parametrize(
    ("item", "dry_run", "expected"),
    [
        (Item("emea", Action.TAG, expr='region = "EMEA"'), False, 3),
        (Item("emea", Action.TAG, expr='region = "EMEA"'), True, 3),
        (Item("cio", Action.TAG, contact_ids=[(1, "c0001"), (2, "c0002")]), False, 3),
    ],
)
def test_a_command_line_request_takes_three_write_transactions(
    pop: Store,
    writes: Callable[[Callable[[], Any]], int],
    item: Item,
    dry_run: bool,
    expected: int,
    tmp_path: Path,
) -> None:
    """The request with its job (running at once, `evaluating` when there is a
    criterion to compute), the `applying` phase, and the memberships with the
    job's outcome and `done` (a dry run: the outcome and `done`)."""
    runner = JobRunner(pop, Settings(data_dir=tmp_path), progress_s=LONG)
    request = JobRequest("cli", resolve(pop, [item]), utcnow(), "columnar", dry_run=dry_run)

    def run() -> None:
        job = runner.open(request)
        assert not isinstance(job, AdhocResult)
        assert runner.run(job).status == "succeeded"

    assert writes(run) == expected
