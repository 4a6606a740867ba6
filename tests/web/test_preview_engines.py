"""The API's previews on each engine: the same answer, and every write made
through the API (PATCH of a contact, its events) is in the next answer."""

from __future__ import annotations

import json
from typing import Any

from tests.web.conftest import API, Api


def previews(api: Api, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for engine in ("columnar", "local", None):
        r = api.client.post(
            f"{API}/preview", json={**body, "engine": engine}, headers=api.headers("viewer")
        )
        assert r.status_code == 200, r.text
        out[str(engine)] = r.json()
    assert out["columnar"] == out["local"] == out["None"], out
    return out["columnar"]


def test_api_writes_are_in_the_next_preview_on_every_engine(api: Api) -> None:
    editor = api.headers("editor")
    body = {"expr": 'region = "Atlantis"', "persona": "emea"}
    assert previews(api, body)["count"] == 0
    r = api.client.patch(
        f"{API}/contacts/c0002", json={"fields": {"region": "Atlantis"}}, headers=editor
    )
    assert r.status_code == 200, r.text
    got = previews(api, body)
    assert (got["count"], got["sample"], got["would_enter"]) == (1, ["c0002"], 1)
    # a new contact, then logins through the events API
    r = api.client.patch(
        f"{API}/contacts/new-1",
        json={"fields": {"region": "Atlantis", "seniority": 9}, "create": True},
        headers=editor,
    )
    assert r.status_code == 200, r.text
    logins = {"expr": 'region = "Atlantis" and count(login, 7d) >= 2'}
    assert previews(api, logins)["count"] == 0
    r = api.client.post(
        f"{API}/contacts/new-1/events",
        json={"logins": ["2099-01-01T00:00:00Z", "2099-01-02T00:00:00Z"]},
        headers=editor,
    )
    assert r.status_code == 200, r.text
    at = {**logins, "as_of": "2099-01-03T00:00:00Z"}
    assert previews(api, at)["sample"] == ["new-1"]


def test_an_unknown_engine_is_a_clear_error(api: Api) -> None:
    r = api.client.post(
        f"{API}/preview",
        json={"expr": "seniority > 1", "engine": "flink"},
        headers=api.headers("viewer"),
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "engine"


def test_api_previews_when_the_copy_is_damaged_or_cannot_be_written(api: Api) -> None:
    import shutil

    from personatag.engines.columnar.copy import MANIFEST, folder_of

    body = {"expr": 'region = "EMEA" or seniority >= 3', "persona": "emea"}
    first = previews(api, body)  # builds the copy
    folder = folder_of(api.settings, api.store)
    (folder / MANIFEST).write_text("{ not json")
    assert previews(api, body) == first  # rebuilt
    assert json.loads((folder / MANIFEST).read_text())["base"]
    shutil.rmtree(folder)
    folder.write_text("in the copy's way")  # cannot be written: the local engine answers
    assert previews(api, body) == first
