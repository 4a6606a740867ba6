"""Every request file ends: whatever fails while it is prepared, while its
results are written, or in how it is named, it gets an outcome and a report.

Real stores and real (local) buckets; nothing of ours is mocked: the failures
come from real inputs and real components (a store that refuses a value, a
results folder that cannot be written).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from personatag.buckets import Buckets, open_buckets
from personatag.config import Settings
from personatag.pipeline.dispatcher import Dispatcher
from personatag.pipeline.submit import submit_file, wait_for_result
from personatag.store import Store
from personatag.store.personas import add_persona
from tests.helpers import add_contacts, population

Env = tuple[Store, Buckets, Settings]


@pytest.fixture
def env(store: Store, tmp_path: Path) -> Env:
    add_contacts(store, population(12))
    add_persona(store, "emea", name="EMEA", category="region")
    settings = Settings(data_dir=tmp_path)
    return store, open_buckets(settings), settings


def outcomes(store: Store) -> dict[str, str | None]:
    rf = store.tables.request_files
    with store.read() as conn:
        return {r.key: r.outcome for r in conn.execute(select(rf.c.key, rf.c.outcome))}


def job_statuses(store: Store) -> list[str]:
    j = store.tables.jobs
    with store.read() as conn:
        return list(conn.scalars(select(j.c.status).order_by(j.c.pk)))


def run_once(store: Store, b: Buckets, settings: Settings) -> Dispatcher:
    d = Dispatcher(store, b, settings, workers=1)
    d.recover()
    d.scan()
    d.drain()
    d.close()
    return d


# Inputs that make the criteria parser, checker or compiler (or the store) raise
# something other than a clean error today.
RAISING = {
    "deep": {"expr": "(" * 5000 + 'region = "EMEA"' + ")" * 5000},
    "bigint": {"expr": "seniority > " + "9" * 4301},
    "date": {"expr": 'created_at > date("0001-01-01T00:00:00+14:00")'},
    "surrogate": {"expr": 'region = "\ud800"'},
    # Not the criteria language at all: the store cannot encode the submitter.
    "submitter": {"expr": 'region = "EMEA"', "submitted_by": "ana\udfff"},
}


@pytest.mark.parametrize("case", sorted(RAISING))
def test_a_request_that_raises_while_prepared_ends_failed(env: Env, case: str) -> None:
    """Issue 17 item 4: a request file whose preparation raises (an expression
    nested 5,000 deep, a 4,301-digit integer, a date that overflows, a lone
    surrogate, a value the store cannot encode) was left claimed with no
    outcome and no results, and every restart took it over and failed again;
    a waiter saw nothing. It must end as a failed request with a one-line
    reason, and stay ended."""
    store, b, settings = env
    body = {"version": 1, "request_id": case, "persona": "emea", **RAISING[case]}
    # json.dumps escapes the lone surrogate as \\ud800, as another system would.
    submitted = submit_file(b, json.dumps(body).encode(), name=f"{case}.json")
    run_once(store, b, settings)

    assert outcomes(store) == {submitted["key"]: "failed"}
    summary = wait_for_result(b, store, submitted, timeout=0)
    assert summary["status"] == "failed" and summary["request_id"] == case
    error = summary["error"]
    assert error.startswith(f"{submitted['key']}: ") and "\n" not in error
    assert summary["source"] == submitted["key"]
    assert not any(status in ("queued", "running") for status in job_statuses(store))

    again = run_once(store, b, settings)  # a restart does not take the file over
    assert again.stats.claimed == 0 and again.stats.finished == {}
    assert outcomes(store) == {submitted["key"]: "failed"}


def test_a_job_whose_preparation_fails_after_it_was_recorded_ends_failed(env: Env) -> None:
    """Issue 17 item 4: a failure after the request's job was recorded (here the
    active job bundle record is unreadable) left the job queued for good and the
    file without an outcome. The job fails with the reason, and the file ends."""
    store, b, settings = env
    b["job-properties"].put("active.json", b"{not json")
    body = {"version": 1, "request_id": "r1", "persona": "emea", "expr": 'region = "EMEA"'}
    submitted = submit_file(b, json.dumps(body).encode(), name="r1.json")
    run_once(store, b, settings)

    assert outcomes(store) == {"r1.json": "failed"}
    assert job_statuses(store) == ["failed"]
    summary = wait_for_result(b, store, submitted, timeout=0)
    assert "active.json is not valid JSON" in summary["error"]
    assert "\n" not in summary["error"]
