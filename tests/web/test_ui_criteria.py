"""The Criteria pages in a real browser against a real `personatag serve` (store,
dispatcher and stream): the list and its filters; run an ad hoc criterion and
follow its job to done; edit a criterion, save the new version and see the
version diff (text and membership); make a criterion ongoing, watch it swap
in, pause, resume and retire it; a viewer sees no controls and the API refuses.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.web.browser import browser, cli, login, shot, start_server

__all__ = ["browser"]

pytestmark = pytest.mark.slow

CHIEFS = 'region = "EMEA" and job_title ilike "%chief%"'


def _setup(env: dict[str, str]) -> None:
    cli(env, "persona", "add", "apac", "--name", "APAC", "--category", "region")
    cli(env, "criterion", "add", "emea-chiefs", "--persona", "emea-cio", "--expr", CHIEFS)
    cli(env, "criterion", "add", "to-edit", "--persona", "emea-cio", "--expr", 'region = "EMEA"')
    cli(env, "criterion", "add", "apac-watch", "--persona", "apac", "--expr", 'region = "APAC"')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_server(tmp_path_factory.mktemp("criteria"), contacts=2000, setup=_setup) as url:
        yield url


def _api(page: Any, method: str, path: str, body: Any = None) -> Any:
    """Read (or try) the API from the page's session, to check what the UI shows."""
    return page.evaluate(
        """async ([method, path, body]) => {
            const csrf = document.querySelector('meta[name="csrf"]').content;
            const r = await fetch('/api/v1' + path, {method,
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
                body: body === null ? undefined : JSON.stringify(body)});
            return {status: r.status, data: await r.json()};
        }""",
        [method, path, body],
    )


def test_list_filters_and_a_missing_criterion(browser: object, server: str) -> None:
    page = login(browser, server, "erin")
    page.click("nav >> text=Criteria")
    page.wait_for_url(f"{server}/criteria")
    rows = page.locator("#criteria-table tbody tr")
    assert rows.count() == 3
    row = page.locator('tr[data-criterion="emea-chiefs"]')
    assert "adhoc" in row.inner_text() and "v1" in row.inner_text()
    assert row.locator("a.chip", has_text="emea-cio").count() == 1
    assert row.locator(".badge", has_text="active").count() == 1
    shot(page, "criteria-01-list")
    page.select_option("select[name=persona]", "apac")
    page.wait_for_url(re.compile(r".*persona=apac.*"))
    assert page.locator("#criteria-table tbody tr").count() == 1
    page.select_option("select[name=mode]", "ongoing")
    page.wait_for_url(re.compile(r".*mode=ongoing.*"))
    page.locator(".empty", has_text="No criterion matches these filters").wait_for()
    page.click("text=Clear the filters")
    page.fill("input[name=q]", "chief")
    page.click("button:has-text('Filter')")
    page.wait_for_url(re.compile(r".*q=chief.*"))
    assert page.locator("#criteria-table tbody tr").count() == 1
    response = page.goto(f"{server}/criteria/nope")
    assert response is not None and response.status == 404
    assert "There is no criterion named “nope”" in page.inner_text("main")


def test_run_an_ad_hoc_criterion_and_follow_its_job(browser: object, server: str) -> None:
    page = login(browser, server, "erin")
    page.goto(f"{server}/criteria")
    page.click("a:has-text('emea-chiefs')")
    page.wait_for_url(f"{server}/criteria/emea-chiefs")
    assert page.locator("#crit-expr").inner_text() == CHIEFS
    page.click("#crit-run")
    status = page.locator("#run-status .badge")
    status.filter(has_text="succeeded").wait_for(timeout=90_000)
    shot(page, "criteria-02-run-done")
    page.click("#run-job")
    page.wait_for_url(re.compile(r".*/jobs/\d+$"))
    assert "succeeded" in page.inner_text("main")
    jobs = _api(page, "GET", "/requests?limit=5")["data"]["requests"]
    assert jobs[0]["status"] == "succeeded"


def test_edit_saves_a_version_and_shows_the_diff(browser: object, server: str) -> None:
    page = login(browser, server, "erin")
    page.goto(f"{server}/criteria/to-edit")
    page.click("#crit-edit")
    page.fill("#edit-expr", 'regoin = "EMEA" or region = "APAC"')
    page.locator("#edit-status").filter(has_text="did you mean 'region'").wait_for()
    page.fill("#edit-expr", 'region = "EMEA" or region = "APAC"')
    page.locator("#edit-status").filter(has_text="valid").wait_for()
    page.click("#edit-review")
    page.locator("#diff-text ins.add").wait_for()
    assert page.locator("#diff-text ins.add").inner_text() == ' or region = "APAC"'
    expected = _api(
        page, "POST", "/criteria/to-edit/diff", {"expr": 'region = "EMEA" or region = "APAC"'}
    )["data"]["membership"]
    gained = page.locator("#diff-gained .value").inner_text()
    assert gained.startswith(f"+{expected['gained']['count']:,}") and expected["gained"]["count"]
    assert page.locator("#diff-would-exit").count() == 0  # an ad hoc tag removes nobody
    shot(page, "criteria-03-edit-review")
    page.click("#edit-save")
    page.locator(".toast", has_text="saved to-edit version 2").wait_for()
    assert page.locator("#versions tbody tr").count() == 2
    assert page.locator("#crit-expr").inner_text() == 'region = "EMEA" or region = "APAC"'
    # compare: from v1 to v2 (the defaults), then the other way round
    page.click("#compare")
    page.locator("#version-diff #diff-text ins.add").wait_for()
    assert "v1 → v2" in page.inner_text("#version-diff")
    stored = _api(page, "GET", "/criteria/to-edit/diff?from=1&to=2")["data"]["membership"]
    assert stored["gained"]["count"] == expected["gained"]["count"]
    shot(page, "criteria-04-version-diff")
    page.check('input[name="diff-from"][value="2"]')
    page.check('input[name="diff-to"][value="1"]')
    page.click("#compare")
    page.locator("#version-diff #diff-text del.del", has_text="APAC").wait_for()
    lost = page.locator("#version-diff #diff-lost .value").inner_text()
    assert lost.startswith(f"−{stored['gained']['count']:,}")
    # the builder opens a criterion to edit from its page
    page.click("text=Open in the builder")
    page.wait_for_url(re.compile(r".*/criteria/new\?criterion=to-edit$"))
    assert page.input_value("#expr") == 'region = "EMEA" or region = "APAC"'


def test_ongoing_swaps_in_then_pause_resume_retire(browser: object, server: str) -> None:
    page = login(browser, server, "erin")
    page.goto(f"{server}/criteria/apac-watch")
    page.click("#crit-edit")
    page.select_option("#edit-mode", "ongoing")
    page.select_option("#edit-exit", "remove")
    page.click("#edit-review")
    # an ongoing criterion with exit remove can remove people: would exit is shown
    page.locator("#diff-would-exit").wait_for()
    page.click("#edit-save")
    page.locator(".toast", has_text="saved apac-watch version 2").wait_for()
    # building, backfilling, then swapped in: the page follows the stream
    page.locator("#crit-swap").wait_for(timeout=90_000)
    assert page.locator("#crit-state").inner_text() == "active"
    members = _api(page, "GET", "/personas/apac")["data"]["members"]
    assert members > 0
    assert f"{members:,} members" in page.inner_text("#crit-swap")
    history = page.locator('#versions tr[data-version="2"] .crit-events').inner_text()
    assert "backfill started" in history and "swapped in" in history
    shot(page, "criteria-05-ongoing-swapped-in")
    page.click("#crit-pause")
    page.locator("#crit-state", has_text="paused").wait_for()
    assert page.locator("#crit-resume").is_visible()
    page.click("#crit-resume")
    page.locator("#crit-swap").wait_for(timeout=90_000)
    page.locator("#crit-state", has_text="active").wait_for()
    page.click("#crit-retire")
    dialog = page.locator("dialog.confirm")
    assert "Retire apac-watch?" in dialog.inner_text()
    shot(page, "criteria-06-retire-confirm")
    page.click("#confirm-ok")
    page.locator("#crit-state", has_text="retired").wait_for()
    assert _api(page, "GET", "/personas/apac")["data"]["members"] == 0
    assert not page.locator("#crit-retire").is_visible()


def test_viewer_sees_no_controls_and_the_api_refuses(browser: object, server: str) -> None:
    page = login(browser, server, "vic")
    page.goto(f"{server}/criteria")
    assert page.locator("text=New criterion").count() == 0
    page.goto(f"{server}/criteria/emea-chiefs")
    page.locator("#versions").wait_for()
    for control in ("#crit-actions", "#crit-edit", "#crit-run", "#edit-card"):
        assert page.locator(control).count() == 0
    assert _api(page, "PUT", "/criteria/emea-chiefs", {"expr": "1 = 1"})["status"] == 403
    body = {"version": 1, "criterion": "emea-chiefs"}
    assert _api(page, "POST", "/requests", body)["status"] == 403
    assert _api(page, "POST", "/criteria/apac-watch/pause")["status"] == 403
