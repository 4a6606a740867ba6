"""The dispatcher on real stores and real (local) buckets."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from personatag.buckets import Buckets, open_buckets
from personatag.config import Settings
from personatag.pipeline.dispatcher import Dispatcher
from personatag.store import Store
from personatag.store.personas import add_persona
from tests.helpers import add_contacts, population


@pytest.fixture
def env(store: Store, tmp_path: Path) -> tuple[Store, Buckets, Settings]:
    add_contacts(store, population(40))
    add_persona(store, "emea", name="EMEA", category="region")
    add_persona(store, "cio", name="CIO", category="job title")
    settings = Settings(data_dir=tmp_path)
    return store, open_buckets(settings), settings


def summary(b: Buckets, rid: str) -> dict:  # type: ignore[type-arg]
    return json.loads(b["results"].get(f"{rid}/summary.json"))


def changes(b: Buckets, rid: str) -> list[list[str]]:
    data = gzip.decompress(b["results"].get(f"{rid}/changes.csv.gz")).decode()
    return list(csv.reader(io.StringIO(data)))


def failed(b: Buckets, rid: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(b["results"].get(f"{rid}/failed.csv").decode())))


def members(store: Store, key: str) -> int:
    t = store.tables
    with store.read() as conn:
        pk = conn.scalar(select(t.personas.c.pk).where(t.personas.c.key == key))
        q = select(func.count()).where(t.memberships.c.persona_pk == pk)
        return int(conn.scalar(q) or 0)


def test_criterion_list_and_malformed_requests(env: tuple[Store, Buckets, Settings]) -> None:
    store, b, settings = env
    req = b["requests"]
    req.put(
        "r1.json",
        json.dumps(
            {
                "version": 1,
                "request_id": "r1",
                "persona": "emea",
                "action": "tag",
                "expr": 'region = "EMEA"',
                "submitted_by": "ana",
            }
        ).encode(),
    )
    req.put("r2.csv", b"contact_id,persona,action\nc0001,cio,tag\nnope,cio,tag\nc0002,cio,tag\n")
    req.put("broken.json", b'{"version": 1, "persona": ')
    d = Dispatcher(store, b, settings, workers=2)
    assert d.scan() == 2  # the malformed file is finished at once
    d.drain()
    d.close()

    s1 = summary(b, "r1")
    assert s1["status"] == "succeeded" and s1["counts"]["tagged"] == 10 and s1["error"] is None
    assert sorted(r[0] for r in changes(b, "r1")[1:]) == [f"c{i:04d}" for i in range(0, 40, 4)]
    assert changes(b, "r1")[0] == ["contact_id", "persona", "change"]
    assert failed(b, "r1") == [["row", "contact_id", "persona", "reason"]]

    s2 = summary(b, "r2")
    assert s2["status"] == "partial" and s2["counts"]["tagged"] == 2
    assert failed(b, "r2")[1] == ["3", "nope", "cio", "unknown contact id 'nope'"]
    assert members(store, "cio") == 2

    s3 = summary(b, "broken")
    assert s3["status"] == "failed" and "broken.json" in s3["error"]
    assert changes(b, "broken") == [["contact_id", "persona", "change"]]


def test_each_file_runs_once_even_with_two_dispatchers(
    env: tuple[Store, Buckets, Settings],
) -> None:
    store, b, settings = env
    body = {"version": 1, "persona": "emea", "action": "tag", "expr": 'region = "EMEA"'}
    for i in range(6):
        b["requests"].put(f"q{i}.json", json.dumps({**body, "request_id": f"q{i}"}).encode())
    # the same request under a second file name: still one run
    b["requests"].put("q0-again.json", json.dumps({**body, "request_id": "q0"}).encode())
    one, two = Dispatcher(store, b, settings), Dispatcher(store, b, settings)
    claimed = one.scan() + two.scan()
    one.drain()
    two.drain()
    one.close()
    two.close()
    assert claimed == 6
    t = store.tables
    with store.read() as conn:
        assert conn.scalar(select(func.count()).select_from(t.jobs)) == 6
        assert conn.scalar(select(func.count()).select_from(t.request_files)) == 7
    tagged = [summary(b, f"q{i}")["counts"]["tagged"] for i in range(6)]
    assert sorted(tagged) == [0, 0, 0, 0, 0, 10]
    assert Dispatcher(store, b, settings).scan() == 0  # nothing new


def test_bad_requests_get_precise_failed_summaries(env: tuple[Store, Buckets, Settings]) -> None:
    store, b, settings = env
    req = b["requests"]
    req.put(
        "p.json", b'{"version": 1, "request_id": "p", "persona": "nobody", "expr": "seniority > 1"}'
    )
    req.put("x.json", b'{"version": 1, "request_id": "x", "persona": "emea", "expr": "regoin = 1"}')
    d = Dispatcher(store, b, settings)
    d.scan()
    d.drain()
    d.close()
    assert "unknown persona 'nobody'" in summary(b, "p")["error"]
    assert "did you mean 'region'" in summary(b, "x")["error"]
    assert members(store, "emea") == 0
