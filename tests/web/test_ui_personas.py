"""Personas in a real browser against a real `personatag serve`: an editor
creates a persona, edits it, opens a persona's page (members, search, pins,
recent changes, the size chart fed from the membership log), archives and
restores; a viewer sees no controls and the API refuses them."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from personatag.config import Settings
from personatag.store import open_store
from tests.web.browser import browser, cli, login, shot, start_server

__all__ = ["browser"]

pytestmark = pytest.mark.slow


def _setup(env: dict[str, str]) -> None:
    cli(env, "tag", "--persona", "emea-cio", "--expr", 'region = "EMEA"')
    cli(env, "untag", "--persona", "emea-cio", "--expr", 'region = "EMEA" and seniority < 2')
    cli(env, "pin", "emea-cio", "c00000007", "--in", "--reason", "key account")
    cli(env, "criterion", "add", "emea-all", "--persona", "emea-cio", "--expr", 'region = "EMEA"')


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("personas")
    with start_server(data, contacts=1000, setup=_setup) as url:
        yield url, data


def _api(page: object, method: str, path: str, body: object = None) -> dict[str, object]:
    """Call the API from the page's session (what the page's own script would do)."""
    return page.evaluate(  # type: ignore[attr-defined,no-any-return]
        """async ([method, path, body]) => {
            const csrf = document.querySelector('meta[name="csrf"]').content;
            const init = {method, headers: {'X-CSRF-Token': csrf}};
            if (body !== null) {
                init.headers['Content-Type'] = 'application/json';
                init.body = JSON.stringify(body);
            }
            const r = await fetch('/api/v1' + path, init);
            return {status: r.status, body: await r.json()};
        }""",
        [method, path, body],
    )


def _size_per_day(data: Path, key: str, days: int) -> dict[str, list[int]]:
    """The persona's daily size, counted here from the log rows in the store."""
    store = open_store(Settings(data_dir=data).resolved_store_url)
    t = store.tables
    log = t.membership_log
    try:
        with store.read() as conn:
            pk = conn.scalar(select(t.personas.c.pk).where(t.personas.c.key == key))
            rows = conn.execute(
                select(log.c.at, log.c.change, log.c.bulk_count).where(log.c.persona_pk == pk)
            ).all()
    finally:
        store.dispose()
    today = datetime.now(UTC).date()
    window = [today - timedelta(days=days - 1 - i) for i in range(days)]
    net: Counter[date] = Counter()
    for at, change, bulk in rows:
        net[max(at.astimezone(UTC).date(), window[0] - timedelta(days=1))] += (bulk or 1) * (
            1 if change == "enter" else -1
        )
    size, sizes = net[window[0] - timedelta(days=1)], []
    for d in window:
        size += net[d]
        sizes.append(size)
    return {"days": [d.isoformat() for d in window], "size": sizes}


def test_editor_creates_edits_archives_and_restores(
    browser: object, site: tuple[str, Path]
) -> None:
    url, _ = site
    page = login(browser, url, "erin")
    page.goto(f"{url}/personas")
    shot(page, "personas-01-list")
    page.click("#persona-new")
    page.fill("#pc-key", "apac-treasurers")
    page.fill("#pc-name", "APAC treasurers")
    page.fill("#pc-category", "role")
    page.fill("#pc-description", "Treasurers of Asia-Pacific firms")
    page.click("#persona-create-submit")
    page.wait_for_url(f"{url}/personas/apac-treasurers")
    assert page.inner_text("#persona-title") == "APAC treasurers"
    assert "No members yet" in page.inner_text("#persona-members")
    shot(page, "personas-02-created")

    # a key in use is refused, and the form says why
    page.goto(f"{url}/personas")
    page.click("#persona-new")
    page.fill("#pc-key", "emea-cio")
    page.fill("#pc-name", "Again")
    page.fill("#pc-category", "role")
    page.click("#persona-create-submit")
    page.locator("#persona-create-error", has_text="already exists").wait_for()
    page.click("#persona-create-cancel")

    # edit from the list
    page.click('[data-edit="apac-treasurers"]')
    page.fill("#pe-name", "APAC treasurers and CFOs")
    page.fill("#pe-category", "job title")
    page.click("#persona-edit-save")
    row = page.locator('tr[data-persona="apac-treasurers"]')
    row.filter(has_text="APAC treasurers and CFOs").wait_for()
    assert page.locator('section[data-category="job title"]', has=row).count() == 1
    shown = _api(page, "GET", "/personas/apac-treasurers")
    assert shown["status"] == 200
    assert shown["body"]["category"] == "job title"  # type: ignore[index]
    assert shown["body"]["description"] == "Treasurers of Asia-Pacific firms"  # type: ignore[index]
    shot(page, "personas-03-edited")

    # archive from its page, restore from the list
    page.goto(f"{url}/personas/apac-treasurers")
    page.click('[data-archive="apac-treasurers"]')
    page.click("#confirm-ok")
    page.locator("#persona-archived").wait_for()
    page.goto(f"{url}/personas")
    archived = page.locator('#personas-archived tr[data-persona="apac-treasurers"]')
    archived.wait_for()
    shot(page, "personas-04-archived")
    archived.locator("[data-restore]").click()
    page.wait_for_function(
        "() => !document.querySelector('#personas-archived tr[data-persona=\"apac-treasurers\"]')"
    )
    assert page.locator('section[data-category] tr[data-persona="apac-treasurers"]').count() == 1
    listed = _api(page, "GET", "/personas")["body"]["personas"]  # type: ignore[index]
    assert "apac-treasurers" in [p["key"] for p in listed]

    page.goto(f"{url}/personas/no-such-persona")
    assert "no persona 'no-such-persona'" in page.inner_text("main")


def test_a_personas_page_shows_members_pins_changes_and_its_size(
    browser: object, site: tuple[str, Path]
) -> None:
    url, data = site
    page = login(browser, url, "erin")
    page.goto(f"{url}/personas")
    page.click('tr[data-persona="emea-cio"] a.persona-name')
    page.wait_for_url(f"{url}/personas/emea-cio")
    api_view = _api(page, "GET", "/personas/emea-cio")["body"]
    size = api_view["members"]  # type: ignore[index]
    assert size > 60
    assert page.inner_text("#persona-size").replace(",", "").startswith(str(size))
    # the chart is fed the store's own numbers
    canvas = page.locator("#size-chart[data-fed]")
    canvas.wait_for(state="attached")
    fed = json.loads(canvas.get_attribute("data-fed") or "{}")
    expected = _size_per_day(data, "emea-cio", 90)
    assert fed["labels"] == expected["days"]
    assert fed["series"][0]["data"] == expected["size"]
    assert fed["series"][0]["data"][-1] == size
    assert fed["unit"] == "contacts"
    moves = json.loads(page.locator("#moves-chart").get_attribute("data-fed") or "{}")
    assert [s["label"] for s in moves["series"]] == ["entered", "exited"]
    assert sum(moves["series"][1]["data"]) > 0  # the untag's exits
    shot(page, "personas-05-page")

    # criteria, pins, recent changes
    crit = page.locator('#persona-criteria tr[data-criterion="emea-all"]')
    assert "adhoc" in crit.inner_text() and "v1" in crit.inner_text()
    assert crit.locator('a[href="/criteria/emea-all"]').count() == 1
    assert "c00000007" in page.inner_text("#persona-pins")
    assert "key account" in page.inner_text("#persona-pins")
    changes = page.inner_text("#persona-changes")
    assert "enter" in changes and "exit" in changes

    # members: paged by id, searchable by name prefix
    rows = page.locator("#persona-members tr[data-member]")
    assert rows.count() == 25  # a page
    first_ids = [rows.nth(i).get_attribute("data-member") for i in range(25)]
    assert first_ids == sorted(first_ids)
    page.click("#members-next")
    page.wait_for_url(re.compile(r".*after=.*"))
    assert (rows.first.get_attribute("data-member") or "") > (first_ids[-1] or "")
    name = rows.first.locator("td").nth(1).inner_text().split()[0]
    page.fill("#member-q", name[:3].lower())
    page.press("#member-q", "Enter")
    page.wait_for_url(re.compile(r".*q=.*"))
    assert rows.count() >= 1
    for i in range(rows.count()):
        cells = rows.nth(i).locator("td").nth(1).inner_text().lower().split()
        assert any(part.startswith(name[:3].lower()) for part in cells)

    # the export link streams every member as CSV
    with page.expect_download() as got:
        page.click("#persona-export")
    lines = Path(got.value.path()).read_text().splitlines()
    assert lines[0].startswith("id,first_name,last_name") and len(lines) == size + 1


def test_viewer_sees_no_controls_and_the_api_refuses(
    browser: object, site: tuple[str, Path]
) -> None:
    url, _ = site
    page = login(browser, url, "vic")
    page.goto(f"{url}/personas")
    page.locator('tr[data-persona="emea-cio"]').wait_for()
    for control in ("#persona-new", "#persona-create", "[data-edit]", "[data-archive]"):
        assert page.locator(control).count() == 0, control
    shot(page, "personas-06-viewer-list")
    page.goto(f"{url}/personas/emea-cio")
    for control in ("[data-edit]", "[data-archive]", "[data-restore]", "#persona-edit"):
        assert page.locator(control).count() == 0, control
    page.locator("#size-chart[data-fed]").wait_for(state="attached")  # reading is allowed
    for method, path, body in (
        ("POST", "/personas", {"key": "x", "name": "X", "category": "c"}),
        ("PATCH", "/personas/emea-cio", {"name": "X"}),
        ("POST", "/personas/emea-cio/archive", None),
        ("POST", "/personas/emea-cio/restore", None),
    ):
        answer = _api(page, method, path, body)
        assert answer["status"] == 403, (method, path, answer)
