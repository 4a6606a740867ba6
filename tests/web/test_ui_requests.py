"""Requests and jobs in a real browser: submit from the builder, find the request
in the list (who, source), filter the list (kept in the URL), open its job
(criterion, persona, phases, counts, result files); a missing job is a 404 page.

Screenshots of the list and the job page at 1280 px and 390 px go to
test-artifacts/screenshots/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.web.browser import browser, cli, login, shot, start_server

__all__ = ["browser"]

pytestmark = pytest.mark.slow

EXPR = 'region = "EMEA" and job_title ilike "%chief%"'


def _setup(env: dict[str, str]) -> None:
    cli(env, "persona", "add", "apac-pm", "--name", "APAC PM", "--category", "role")
    # A request from the command line, by carl: it runs at once.
    carl = {**env, "PERSONATAG_ACTOR": "carl"}
    cli(carl, "tag", "--persona", "apac-pm", "--expr", 'region = "APAC"', "--request-id", "cli-1")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_server(tmp_path_factory.mktemp("ui-requests"), setup=_setup) as url:
        yield url


def test_submit_find_filter_and_open_the_job(browser: object, server: str) -> None:
    page = login(browser, server, "erin")
    page.set_viewport_size({"width": 1280, "height": 900})
    # Submit through the builder's own button.
    page.goto(f"{server}/criteria/new")
    page.select_option("#persona", "emea-cio")
    page.fill("#expr", EXPR)
    page.locator("#expr-status").filter(has_text="valid").wait_for()
    page.click("#submit-request")
    submitted = page.locator("#submit-status a")
    submitted.wait_for()
    request_id = submitted.inner_text()

    # The list: the request with who and source, once it has run.
    page.click("nav >> text=Requests")
    page.wait_for_url(re.compile(r".*/requests$"))
    row = page.locator(f'tr[data-request="{request_id}"][data-status="succeeded"]')
    row.wait_for(timeout=60_000)
    assert row.locator("td.source-cell").inner_text() == "workbench"
    assert row.locator("td.who-cell").inner_text() == "erin"
    assert "emea-cio" in row.inner_text()
    cli_row = page.locator('tr[data-request="cli-1"]')
    assert cli_row.locator("td.source-cell").inner_text() == "cli"
    assert cli_row.locator("td.who-cell").inner_text() == "carl"
    assert page.locator("#requests-total").inner_text() == "2 requests"
    shot(page, "requests-list")

    # Filter by persona: the choice goes into the URL, the list follows.
    page.select_option("#request-filters select[name=persona]", "apac-pm")
    page.wait_for_url(re.compile(r".*/requests\?persona=apac-pm$"))
    page.locator('tr[data-request="cli-1"]').wait_for()
    assert page.locator(f'tr[data-request="{request_id}"]').count() == 0
    assert page.locator("#requests-total").inner_text() == "1 request"
    # ... and by source, from a clean slate.
    page.click("#clear-filters")
    page.wait_for_url(re.compile(r".*/requests$"))
    page.select_option("#request-filters select[name=source]", "workbench")
    page.wait_for_url(re.compile(r".*/requests\?source=workbench$"))
    page.locator(f'tr[data-request="{request_id}"]').wait_for()
    assert page.locator('tr[data-request="cli-1"]').count() == 0
    # A filter that matches nothing says so, with the way back.
    page.fill("#request-filters input[name=who]", "nobody")
    page.click("#request-filters button[type=submit]")
    page.wait_for_url(re.compile(r".*who=nobody.*"))
    page.locator("#requests-empty", has_text="No request matches these filters").wait_for()
    page.go_back()
    page.wait_for_url(re.compile(r".*/requests\?source=workbench$"))

    # Its job: criterion, persona, who, source, phases with counts, result files.
    page.locator(f'tr[data-request="{request_id}"] td a[href^="/jobs/"]').click()
    page.wait_for_url(re.compile(r".*/jobs/\d+$"))
    assert page.locator("#job-criterion").inner_text() == EXPR
    assert page.locator("#job-who").inner_text() == "erin"
    assert page.locator("#job-source").inner_text() == f"workbench {request_id}.json"
    assert page.locator("a.chip", has_text="emea-cio").count() >= 1
    assert page.locator("#job-status").inner_text() == "succeeded"
    phases = page.locator("#job-phases li")
    assert phases.evaluate_all("els => els.map(e => [e.dataset.phase, e.dataset.state])") == [
        ["evaluating", "done"],
        ["applying", "done"],
        ["writing results", "done"],
        ["done", "done"],
    ]
    matched = page.locator('#job-counts [data-count="matched"] .value').inner_text()
    assert int(re.sub(r"\D", "", matched)) > 0
    files = page.locator("#job-files a").all_inner_texts()
    assert files == ["summary.json", "failed.csv", "changes.csv.gz"]
    href = page.locator("#job-files a").first.get_attribute("href")
    summary = page.request.get(f"{server}{href}")
    assert summary.ok and summary.json()["request_id"] == request_id
    shot(page, "requests-job-page")

    # The command-line request's job: no result files, and it says why.
    page.goto(f"{server}/jobs/cli-1")
    assert page.locator("#job-source").inner_text() == "cli"
    assert "command line" in page.locator("#job-files").inner_text()


def test_csv_upload_lists_the_rows_it_cannot_use(browser: object, server: str) -> None:
    page = login(browser, server, "erin")
    page.goto(f"{server}/requests")
    bad = (
        b"contact_id,persona,action\n"
        b"c00000001,emea-cio,tag\n,emea-cio,tag\nc00000002,emea-cio,retag\n"
    )
    page.set_input_files(
        "#upload-form input[type=file]",
        files=[{"name": "bad-list.csv", "mimeType": "text/csv", "buffer": bad}],
    )
    page.click("#upload-form button[type=submit]")
    rows = page.locator("#upload-out table.upload-errors tbody tr")
    rows.first.wait_for()
    assert rows.count() == 2
    assert rows.nth(0).locator("td").first.inner_text() == "3"
    assert "2 row(s) cannot be used" in page.locator("#upload-out p.error").inner_text()
    page.locator(".toast-error").wait_for()
    shot(page, "requests-upload-errors")
    good = b"contact_id,persona,action\nc00000001,emea-cio,tag\n"
    page.set_input_files(
        "#upload-form input[type=file]",
        files=[{"name": "good-list.csv", "mimeType": "text/csv", "buffer": good}],
    )
    page.click("#upload-form button[type=submit]")
    page.locator("#upload-out p.ok").wait_for()
    row = page.locator('tr[data-request="good-list"]')
    row.wait_for(timeout=60_000)
    assert row.locator("td.source-cell").inner_text() == "workbench"
    assert row.locator("td.who-cell").inner_text() == "erin"


def test_a_viewer_sees_no_upload_and_no_cancel(browser: object, server: str) -> None:
    page = login(browser, server, "vic")
    page.goto(f"{server}/requests")
    page.locator("#requests-table tbody tr").first.wait_for()
    assert page.locator("#upload-form").count() == 0
    page.goto(f"{server}/jobs/cli-1")
    assert page.locator("#job-cancel").count() == 0


def test_a_missing_job_is_a_404_page(browser: object, server: str) -> None:
    page = login(browser, server, "vic")
    for ref in ("999999", "no-such-request", "bad%20id!", "9" * 30):
        answer = page.goto(f"{server}/jobs/{ref}")
        assert answer.status == 404, ref
        assert "There is no job" in page.locator("main").inner_text()
        assert page.title().startswith("Not found")


def test_screenshots(browser: object, server: str) -> None:
    """The list and a job at desktop and phone widths, for a person to look at."""
    page = login(browser, server, "erin")
    for width, height in ((1280, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.goto(f"{server}/requests")
        page.locator("#requests-table tbody tr").first.wait_for()
        shot(page, f"requests-{width}")
        page.goto(f"{server}/requests?source=file")
        page.locator("#requests-empty .empty").wait_for()
        shot(page, f"requests-empty-{width}")
        page.goto(f"{server}/jobs/cli-1")
        shot(page, f"requests-job-{width}")
        page.goto(f"{server}/jobs/2")  # the workbench's request, when the flow above ran
        shot(page, f"requests-job-workbench-{width}")
        page.goto(f"{server}/jobs/424242")
        shot(page, f"requests-job-missing-{width}")
