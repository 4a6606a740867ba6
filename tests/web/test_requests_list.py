"""The requests list: who submitted each request and from where (workbench,
API token, CLI, a file dropped into the bucket), and its filters and paging,
on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from personatag.cli.client import LocalClient
from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.domain import Action
from personatag.requests.dispatcher import Dispatcher
from personatag.store import Store, open_store
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from tests.web.conftest import API, Api
from tests.web.test_auth import login


@pytest.fixture
def settings(tmp_path: Path, flink_url: str, store_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", flink_url=flink_url, store_url=store_url)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """Each test runs on SQLite and on PostgreSQL."""
    st = open_store(store_url)
    yield st
    st.dispose()


def run_dispatcher(api: Api) -> None:
    d = Dispatcher(api.store, api.app.state.ctx.buckets, api.settings)
    d.scan()
    d.drain()
    d.close()


def listed(api: Api, **params: Any) -> dict[str, Any]:
    r = api.client.get(f"{API}/requests", params=params, headers=api.headers("viewer"))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def ids(answer: dict[str, Any]) -> list[str]:
    return [x["request_id"] for x in answer["requests"]]


def submit_all_ways(api: Api, tmp_path: Path) -> None:
    """One request from each way in; all run by a dispatcher."""
    c = api.client
    add_persona(api.store, "apac", name="APAC", category="region")
    # An API token (the `editor` user's token "tests").
    body = {"version": 1, "request_id": "by-api", "persona": "emea", "expr": 'region = "EMEA"'}
    assert c.post(f"{API}/requests", json=body, headers=api.headers("editor")).status_code == 202
    # The CLI through the API: the same token, with the CLI's header.
    cli_headers = api.headers("admin") | {"X-Personatag-Client": "cli"}
    body = {
        "version": 1,
        "request_id": "by-cli-api",
        "persona": "apac",
        "action": "untag",
        "expr": 'region = "APAC"',
    }
    assert c.post(f"{API}/requests", json=body, headers=cli_headers).status_code == 202
    # A CSV list uploaded with a token: several personas, both actions.
    rows = "contact_id,persona,action\nc0001,emea,tag\nc0002,apac,tag\nc0003,apac,untag\n"
    r = c.post(
        f"{API}/requests/upload",
        files={"file": ("by-upload.csv", rows.encode(), "text/csv")},
        headers=api.headers("editor"),
    )
    assert r.status_code == 202, r.text
    # A file put into the requests bucket directly, naming its author.
    dropped = {
        "version": 1,
        "request_id": "by-file",
        "persona": "emea",
        "expr": 'region = "APAC"',
        "dry_run": True,
        "submitted_by": "ops@example.com",
    }
    api.app.state.ctx.buckets["requests"].put("by-file.json", json.dumps(dropped).encode())
    # `personatag submit` on the local store.
    local = tmp_path / "by-cli-file.json"
    body = {"version": 1, "request_id": "by-cli-file", "persona": "apac", "expr": 'region = "EMEA"'}
    local.write_text(json.dumps(body))
    local_client = LocalClient(api.settings)
    try:
        local_client.submit(local, wait=False, timeout=1)
    finally:
        local_client.close()
    run_dispatcher(api)
    # `personatag tag` (runs at once, no file).
    req = AdhocRequest(
        "emea", Action.TAG, expr='region = "EMEA"', actor="carol", request_id="by-cli-tag"
    )
    run_adhoc(api.store, req, api.settings)
    # The workbench: a browser session (cookie and CSRF token), last.
    csrf = login(c, "editor")
    body = {
        "version": 1,
        "request_id": "by-workbench",
        "persona": "emea",
        "expr": 'region = "APAC"',
    }
    r = c.post(f"{API}/requests", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 202, r.text
    c.cookies.clear()
    run_dispatcher(api)


def test_who_and_source_are_recorded_for_every_way_in(api: Api, tmp_path: Path) -> None:
    submit_all_ways(api, tmp_path)
    answer = listed(api)
    assert answer["total"] == 7
    seen = {
        x["request_id"]: (
            x["request"]["submitted_by"],
            x["request"]["source"],
            x["request"]["token"],
        )
        for x in answer["requests"]
    }
    assert seen == {
        "by-workbench": ("editor", "workbench", None),
        "by-cli-tag": ("carol", "cli", None),
        "by-api": ("editor", "api", "tests"),
        "by-cli-api": ("admin", "cli", "tests"),
        "by-upload": ("editor", "api", "tests"),
        "by-file": ("ops@example.com", "file", None),
        "by-cli-file": (seen["by-cli-file"][0], "cli", None),
    }
    assert seen["by-cli-file"][0]  # the account the CLI ran under
    # Newest first; the job carries the same.
    assert ids(answer)[0] == "by-workbench"
    job = answer["requests"][0]["job"]
    assert (job["submitted_by"], job["source"], job["token"]) == ("editor", "workbench", None)
    shown = api.client.get(f"{API}/jobs/by-api", headers=api.headers("viewer")).json()
    assert (shown["source"], shown["token"]) == ("api", "tests")
    # What each asked for: a list request names its personas and actions.
    upload = next(x for x in answer["requests"] if x["request_id"] == "by-upload")["request"]
    assert (upload["personas"], upload["actions"], upload["format"]) == (
        ["emea", "apac"],
        ["tag", "untag"],
        "csv",
    )
    assert sum(i["contacts"] for i in upload["items"]) == 3
    one = api.client.get(f"{API}/requests/by-api", headers=api.headers("viewer")).json()
    assert one["request"]["items"][0]["expr"] == 'region = "EMEA"'


def test_filters_and_paging(api: Api, tmp_path: Path) -> None:
    submit_all_ways(api, tmp_path)
    everything = set(ids(listed(api)))
    assert set(ids(listed(api, persona="apac"))) == {"by-cli-api", "by-upload", "by-cli-file"}
    assert set(ids(listed(api, persona="emea"))) == {
        "by-api",
        "by-upload",
        "by-file",
        "by-cli-tag",
        "by-workbench",
    }
    assert set(ids(listed(api, action="untag"))) == {"by-cli-api", "by-upload"}
    assert set(ids(listed(api, action="tag"))) == everything - {"by-cli-api"}
    assert ids(listed(api, dry_run="true")) == ["by-file"]
    assert "by-file" not in ids(listed(api, dry_run="false"))
    # None of them named an engine: each ran on, and is filed under, the
    # store's batch engine (columnar by default).
    assert set(ids(listed(api, engine="columnar"))) == everything
    assert ids(listed(api, engine="local")) == []
    assert set(ids(listed(api, who="editor"))) == {"by-api", "by-upload", "by-workbench"}
    assert ids(listed(api, who="nobody")) == []
    assert set(ids(listed(api, source="cli"))) == {"by-cli-api", "by-cli-file", "by-cli-tag"}
    assert ids(listed(api, source="workbench")) == ["by-workbench"]
    assert ids(listed(api, source="file")) == ["by-file"]
    assert set(ids(listed(api, status="succeeded"))) == everything
    assert ids(listed(api, status="failed")) == []
    # Filters combine.
    assert ids(listed(api, persona="emea", source="api")) == ["by-upload", "by-api"]
    assert ids(listed(api, persona="apac", source="api", action="untag")) == ["by-upload"]
    # Pages: newest first, `total` counts every match.
    first = listed(api, limit=3)
    second = listed(api, limit=3, offset=3)
    last = listed(api, limit=3, offset=6)
    assert first["total"] == second["total"] == last["total"] == 7
    assert (len(first["requests"]), len(second["requests"]), len(last["requests"])) == (3, 3, 1)
    assert ids(first) + ids(second) + ids(last) == ids(listed(api))
    assert listed(api, offset=100)["requests"] == []


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"persona": "nobody"}, "persona"),
        ({"action": "retag"}, "action"),
        ({"engine": "steam"}, "engine"),
        ({"dry_run": "perhaps"}, "dry_run"),
        ({"source": "fax"}, "source"),
        ({"status": "sleeping"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"who": "x" * 129}, "who"),
    ],
)
def test_bad_filters_say_what_is_wrong(api: Api, params: dict[str, str], where: str) -> None:
    r = api.client.get(f"{API}/requests", params=params, headers=api.headers("viewer"))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert where in json.dumps(error)
