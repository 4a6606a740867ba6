"""`personatag persona stats` and `GET /api/v1/persona-stats` on both stores:
their shapes, read-your-writes, and an unknown key (exit 2 / 404)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from personatag import accounts
from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.domain import Action
from personatag.store import Store
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from personatag.web import create_app
from tests.helpers import add_contacts, population
from tests.test_cli import CLI, cli
from tests.web.conftest import API, PASSWORD, Api

__all__ = ["cli"]

KEYS = {"personas", "all", "any", "pairs", "matrix", "history", "log_seq", "took_ms"}
PAIR = {"a", "b", "both", "a_not_b", "b_not_a", "either", "jaccard"}


def test_cli_stats(cli: CLI, tmp_path: Path) -> None:
    cli("persona", "add", "emea", "--name", "EMEA readers", "--category", "region")
    cli("persona", "add", "senior", "--name", "Senior", "--category", "seniority")
    cli("tag", "--persona", "emea", "--expr", 'region = "EMEA"')
    cli("tag", "--persona", "senior", "--expr", "seniority >= 5")
    out = cli.json("persona", "stats", "emea", "senior", "--json")
    assert set(out) == KEYS and out["history"] is None
    assert [(p["key"], p["size"]) for p in out["personas"]] == [("emea", 10), ("senior", 20)]
    assert set(out["pairs"][0]) == PAIR
    pair = out["pairs"][0]
    # population(40): EMEA is i % 4 == 0, senior i % 10 >= 5
    both = sum(1 for i in range(40) if i % 4 == 0 and i % 10 >= 5)
    assert (pair["both"], pair["a_not_b"], pair["b_not_a"]) == (both, 10 - both, 20 - both)
    assert out["matrix"] == [[10, both], [both, 20]]
    # read-your-writes: a new process sees the untag just committed
    cli("untag", "--persona", "emea", "--expr", "seniority >= 0")
    out = cli.json("persona", "stats", "emea", "senior", "--json", "--days", "7")
    assert out["personas"][0]["size"] == 0 and out["all"] == 0
    assert out["history"]["size"]["emea"][-1] == 0
    assert out["history"]["entered"]["emea"][-1] == 10
    assert len(out["history"]["days"]) == 7
    text = cli("persona", "stats", "emea", "senior").stdout
    assert "emea and senior: 0" in text and "senior" in text.splitlines()[1]
    assert list((tmp_path / "columnar").glob("*/sets/manifest.json"))
    proc = cli("persona", "stats", "emea", "nope", ok=False)
    assert proc.returncode == 2
    assert "unknown persona 'nope'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture
def both(store: Store, store_url: str, tmp_path: Path) -> Iterator[Api]:
    add_contacts(store, population(40))
    add_persona(store, "emea", name="EMEA", category="region")
    add_persona(store, "amer", name="AMER", category="region")
    add_persona(store, "senior", name="Senior", category="seniority")
    accounts.create_user(store, "viewer", PASSWORD, "viewer", actor="test")
    token, _ = accounts.create_token(store, "viewer", "tests", actor="test")
    settings = Settings(data_dir=tmp_path / "data", store_url=store_url)
    with TestClient(create_app(settings, store)) as client:
        yield Api(client.app, client, store, settings, {"viewer": token})  # type: ignore[arg-type]


def test_api_stats(both: Api) -> None:
    c, viewer = both.client, both.headers("viewer")
    settings = Settings(stream_reconcile_s=0, bulk_log_threshold=3)
    for key, expr in (("emea", 'region = "EMEA"'), ("amer", 'region = "AMER"')):
        run_adhoc(both.store, AdhocRequest(persona=key, action=Action.TAG, expr=expr), settings)
    r = c.get(f"{API}/persona-stats?key=emea&key=amer&key=senior&days=2", headers=viewer)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == KEYS
    assert [p["size"] for p in out["personas"]] == [10, 10, 0]
    assert (out["all"], out["any"]) == (0, 20)
    assert [(p["a"], p["b"]) for p in out["pairs"]] == [
        ("emea", "amer"), ("emea", "senior"), ("amer", "senior")
    ]  # fmt: skip
    assert out["pairs"][0] | {"jaccard": 0} == {
        "a": "emea", "b": "amer", "both": 0, "a_not_b": 10, "b_not_a": 10, "either": 20,
        "jaccard": 0,
    }  # fmt: skip
    assert out["history"]["size"]["amer"][-1] == 10 and len(out["history"]["days"]) == 2
    # read-your-writes in a long-lived process
    run_adhoc(
        both.store,
        AdhocRequest(persona="senior", action=Action.TAG, expr="seniority >= 5"),
        settings,
    )
    out = c.get(f"{API}/persona-stats?key=emea&key=senior", headers=viewer).json()
    assert out["personas"][1]["size"] == 20 and out["history"] is None
    r = c.get(f"{API}/persona-stats?key=emea&key=nope", headers=viewer)
    assert r.status_code == 404 and "unknown persona 'nope'" in r.text
    assert c.get(f"{API}/persona-stats", headers=viewer).status_code == 422
    assert c.get(f"{API}/persona-stats?key=emea&key=emea", headers=viewer).status_code == 422
    assert c.get(f"{API}/persona-stats?key=emea").status_code == 401
