"""A criterion's versions, their diff (text and membership) and its progress, over
the API; bad input is a clear 4xx."""

from __future__ import annotations

from personatag.tagging.versions import text_diff
from tests.web.conftest import API, Api


def _make(api: Api, name: str = "emea-chiefs", **extra: str) -> None:
    body = {"name": name, "persona": "emea", "expr": 'region = "EMEA"', **extra}
    r = api.client.post(f"{API}/criteria", json=body, headers=api.headers("editor"))
    assert r.status_code == 201, r.text


def test_text_diff_is_token_by_token() -> None:
    parts = text_diff('region = "EMEA" and seniority >= 5', 'region = "APAC" and seniority >= 5')
    assert parts == [
        {"op": "same", "text": "region = "},
        {"op": "del", "text": '"EMEA"'},
        {"op": "add", "text": '"APAC"'},
        {"op": "same", "text": " and seniority >= 5"},
    ]
    new = "".join(p["text"] for p in parts if p["op"] != "del")
    assert new == 'region = "APAC" and seniority >= 5'
    assert text_diff("a", "a") == [{"op": "same", "text": "a"}]


def test_versions_with_who_when_and_events(api: Api) -> None:
    _make(api)
    editor = api.headers("editor")
    r = api.client.put(
        f"{API}/criteria/emea-chiefs", json={"expr": 'region = "APAC"'}, headers=editor
    )
    assert r.status_code == 200
    r = api.client.get(f"{API}/criteria/emea-chiefs/versions", headers=api.headers("viewer"))
    assert r.status_code == 200
    versions = r.json()["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    assert [v["created_by"] for v in versions] == ["editor", "editor"]
    assert versions[1]["expr"] == 'region = "APAC"'
    assert [e["action"] for e in versions[0]["events"]] == ["add"]
    assert [e["action"] for e in versions[1]["events"]] == ["edit"]
    assert versions[1]["state"] == "active"
    r = api.client.get(f"{API}/criteria/nope/versions", headers=api.headers("viewer"))
    assert r.status_code == 404
    assert "unknown criterion 'nope'" in r.json()["error"]["message"]


def test_diff_of_two_versions_text_and_membership(api: Api) -> None:
    _make(api)
    editor = api.headers("editor")
    api.client.put(
        f"{API}/criteria/emea-chiefs",
        json={"expr": 'region = "EMEA" or region = "APAC"'},
        headers=editor,
    )
    url = f"{API}/criteria/emea-chiefs/diff?from=1&to=2"
    r = api.client.get(url, headers=api.headers("viewer"))
    assert r.status_code == 200, r.text
    d = r.json()
    assert {"op": "add", "text": ' or region = "APAC"'} in d["text"]
    m = d["membership"]
    # population(40): regions cycle EMEA, AMER, APAC, None
    assert m["old_count"] == 10 and m["new_count"] == 20
    assert m["gained"]["count"] == 10 and m["lost"]["count"] == 0
    assert m["gained"]["sample"][0] == "c0002"
    assert m["would_enter"] == 20  # nobody holds emea yet
    assert m["would_exit"] is None  # an ad hoc tag removes nobody
    # defaults: the newest against the one before
    assert api.client.get(f"{API}/criteria/emea-chiefs/diff", headers=editor).json() == d


def test_draft_diff_shows_would_exit_only_where_it_can_remove(api: Api) -> None:
    _make(api)
    viewer = api.headers("viewer")
    url = f"{API}/criteria/emea-chiefs/diff"
    r = api.client.post(url, json={"expr": 'region  =  "AMER"'}, headers=viewer)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["new"]["version"] is None and d["new"]["expr"] == 'region = "AMER"'
    assert d["membership"]["lost"]["count"] == 10 and d["membership"]["would_exit"] is None
    r = api.client.post(url, json={"mode": "ongoing", "exit": "remove"}, headers=viewer)
    assert r.json()["membership"]["would_exit"] == 0  # nobody holds it: nobody leaves
    r = api.client.post(url, json={"action": "untag"}, headers=viewer)
    assert r.json()["membership"]["would_enter"] is None
    assert r.json()["membership"]["would_exit"] == 0


def test_bad_input_is_a_clear_4xx(api: Api) -> None:
    _make(api)
    viewer = api.headers("viewer")
    url = f"{API}/criteria/emea-chiefs/diff"
    r = api.client.get(f"{url}?from=1&to=7", headers=viewer)
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "criterion 'emea-chiefs' has no version 7 (it has 1)"
    assert api.client.get(f"{url}?from=zero", headers=viewer).status_code == 422
    assert api.client.get(f"{url}?from=0", headers=viewer).status_code == 422
    r = api.client.post(url, json={"expr": 'regoin = "EMEA"'}, headers=viewer)
    assert r.status_code == 422
    assert "did you mean 'region'" in r.json()["error"]["message"]
    r = api.client.post(url, json={"persona": "nobody"}, headers=viewer)
    assert r.status_code == 404
    r = api.client.post(url, json={"mode": "ongoing", "action": "untag"}, headers=viewer)
    assert r.status_code == 422 and r.json()["error"]["field"] == "action"
    r = api.client.post(url, json={"colour": "red"}, headers=viewer)
    assert r.status_code == 422
    r = api.client.post(url, json={"from": 9}, headers=viewer)
    assert r.status_code == 404


def test_progress_of_an_ongoing_criterion(api: Api) -> None:
    _make(api, mode="ongoing")
    viewer = api.headers("viewer")
    r = api.client.get(f"{API}/criteria/emea-chiefs/progress", headers=viewer)
    assert r.status_code == 200, r.text
    p = r.json()
    # no stream runs in this app: it waits to be built
    assert p["state"] == "building" and p["building"] is True
    assert p["ahead"] == [] and p["swap"] is None and p["stream"]["lag_changes"] >= 0
    editor = api.headers("editor")
    assert api.client.post(f"{API}/criteria/emea-chiefs/pause", headers=editor).status_code == 200
    p = api.client.get(f"{API}/criteria/emea-chiefs/progress", headers=viewer).json()
    assert p["state"] == "paused" and p["building"] is False
    _make(api, "one-off")
    p = api.client.get(f"{API}/criteria/one-off/progress", headers=viewer).json()
    assert p["state"] == "active" and p["mode"] == "adhoc"


def test_viewers_read_but_cannot_change(api: Api) -> None:
    _make(api, mode="ongoing")
    viewer = api.headers("viewer")
    for path in ("pause", "resume", "retire"):
        r = api.client.post(f"{API}/criteria/emea-chiefs/{path}", headers=viewer)
        assert r.status_code == 403
    r = api.client.put(f"{API}/criteria/emea-chiefs", json={"expr": "1 = 1"}, headers=viewer)
    assert r.status_code == 403


def test_pages_list_empty_state_and_missing_criterion(api: Api) -> None:
    viewer = api.headers("viewer")
    page = api.client.get("/criteria", headers=viewer)
    assert page.status_code == 200
    assert "No criteria yet" in page.text and 'href="/criteria/new"' in page.text
    _make(api)
    page = api.client.get("/criteria?mode=ongoing", headers=viewer)
    assert "No criterion matches these filters (1 in all)" in page.text
    page = api.client.get("/criteria?persona=emea&q=chiefs", headers=viewer)
    assert 'data-criterion="emea-chiefs"' in page.text
    page = api.client.get("/criteria/emea-chiefs", headers=viewer)
    assert page.status_code == 200 and 'id="crit-edit"' not in page.text  # no controls
    page = api.client.get("/criteria/emea-chiefs", headers=api.headers("editor"))
    assert 'id="crit-edit"' in page.text and 'id="crit-run"' in page.text
    page = api.client.get("/criteria/nope", headers=viewer)
    assert page.status_code == 404 and "There is no criterion named “nope”" in page.text
    # the builder's edit link loads the criterion; an unknown one is a 404 page
    page = api.client.get("/criteria/new?criterion=emea-chiefs", headers=viewer)
    assert page.status_code == 200 and "region = &#34;EMEA&#34;" in page.text
    page = api.client.get("/criteria/new?criterion=nope", headers=viewer)
    assert page.status_code == 404
