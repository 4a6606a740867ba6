"""The workbench in a real browser: Debian's Chromium driven by Playwright against
a real `personatag serve` process (store, dispatcher and all).

Flows: log in; write a criterion with a typo, see the marked error, fix it;
preview; submit; watch the request finish; open a contact and see the persona
with its source; a viewer cannot submit. Screenshots of each step go to
test-artifacts/screenshots/ (kept by CI as artifacts).
"""

from __future__ import annotations

import re

import pytest

from tests.web.browser import PASSWORD, browser, cli, login, server, shot

__all__ = ["browser", "cli", "server"]  # the fixtures, shared with the other browser flows

pytestmark = pytest.mark.slow


def test_editor_builds_previews_submits_and_finds_the_contact(browser: object, server: str) -> None:
    page = login(browser, server, "erin")
    shot(page, "01-personas")
    page.goto(f"{server}/criteria/new")
    page.fill("#expr", 'regoin = "EMEA" and job_title ilike "%chief%"')
    status = page.locator("#expr-status")
    status.filter(has_text="did you mean 'region'").wait_for()
    marker = page.locator("#expr-marker")
    assert "line 1, col 1" in marker.inner_text()
    shot(page, "02-criterion-typo-marked")
    page.fill("#expr", 'region = "EMEA" and job_title ilike "%chief%"')
    status.filter(has_text="valid").wait_for()
    count = page.locator("#preview-count")
    count.wait_for()  # the preview follows the typing, no click needed
    assert re.search(r"\d+ match", count.inner_text())
    shot(page, "03-preview")
    page.select_option("#persona", "emea-cio")  # no default: a persona is chosen
    page.click("#submit-request")
    submitted = page.locator("#submit-status a")
    submitted.wait_for()
    request_id = submitted.inner_text()
    page.goto(f"{server}/requests")
    row = page.locator(f'tr[data-request="{request_id}"][data-status="succeeded"]')
    row.wait_for(timeout=60_000)
    # its phase is "done" once the result files are written
    page.locator(f'tr[data-request="{request_id}"][data-phase="done"]').wait_for(timeout=60_000)
    shot(page, "04-request-succeeded")
    # a contact the request tagged, from the preview sample
    page.goto(f"{server}/criteria/new?expr=" + 'region = "EMEA" and job_title ilike "%chief%"')
    page.click("#preview")
    first = page.locator("#preview-out a").first
    first.wait_for()
    first.click()
    page.wait_for_url(re.compile(r".*/contacts\?id=.*"))
    persona_row = page.locator("#contact-personas tr", has_text="emea-cio")
    persona_row.wait_for()
    assert request_id in persona_row.inner_text()
    history = page.locator("#contact-history tr", has_text="enter")
    assert history.first.locator(f"a[href='/jobs/{request_id}']").count() == 1
    shot(page, "05-contact-with-persona")


def test_viewer_cannot_submit(browser: object, server: str) -> None:
    page = login(browser, server, "vic")
    page.goto(f"{server}/criteria/new")
    assert page.locator("#submit-request").is_disabled()
    shot(page, "06-viewer-builder")
    # and the API refuses even a hand-made request from the viewer's session
    answer = page.evaluate(
        """async () => {
            const csrf = document.querySelector('meta[name="csrf"]').content;
            const r = await fetch('/api/v1/requests', {method: 'POST',
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
                body: JSON.stringify({version: 1, persona: 'emea-cio', expr: 'region = "EMEA"'})});
            return r.status;
        }"""
    )
    assert answer == 403
    page.goto(f"{server}/audit")
    assert "needs the admin role" in page.content()
    shot(page, "07-viewer-forbidden")


def test_admin_adds_a_user_and_a_token(browser: object, server: str) -> None:
    page = login(browser, server, "ada")
    page.goto(f"{server}/admin/users")
    page.fill("#user-form input[name=username]", "newbie")
    page.fill("#user-form input[name=password]", PASSWORD)
    page.select_option("#user-form select[name=role]", "editor")
    page.click("#user-form button[type=submit]")
    page.locator("td", has_text="newbie").wait_for()
    page.select_option("#token-form select[name=username]", "newbie")
    page.fill("#token-form input[name=name]", "ci")
    page.click("#token-form button[type=submit]")
    token = page.locator("#new-token")
    token.wait_for()
    assert token.inner_text().startswith("pt_")
    shot(page, "08-admin-users-and-token")
    page.goto(f"{server}/audit")
    page.locator("td", has_text="token.create").first.wait_for()
    shot(page, "09-audit")
    page.goto(f"{server}/monitoring")
    assert "flink: " in page.inner_text("main")
    assert "feed lag" in page.inner_text("#stream")
    shot(page, "10-monitoring")


def test_editor_sees_a_feed_and_adds_a_boost_rule(browser: object, server: str) -> None:
    page = login(browser, server, "erin")
    page.goto(f"{server}/contacts?id=c00000042")
    rows = page.locator("#contact-feed tr[data-publication]")
    rows.first.wait_for()
    assert rows.count() == 10
    assert (
        page.locator("#contact-feed td", has_text="popular").count()
        + page.locator("#contact-feed td", has_text="new in").count()
        > 0
    )
    shot(page, "11-contact-feed")
    page.goto(f"{server}/feed-rules?persona=emea-cio")
    page.fill("#rule-expr", 'sectr = "Energy"')
    page.fill("#rule-weight", "2")
    page.click("#rule-form button[type=submit]")
    page.locator("#rule-status", has_text="did you mean 'sector'").wait_for()
    shot(page, "12-feed-rule-typo")
    page.fill("#rule-expr", 'sector = "Energy"')
    page.click("#rule-form button[type=submit]")
    row = page.locator("#feed-rules tr[data-rule]", has_text='sector = "Energy"')
    row.wait_for()
    assert "+2" in row.inner_text() and "erin" in row.inner_text()
    shot(page, "13-feed-rule-added")


def test_editor_compares_rankers_and_runs_a_feed_evaluation(browser: object, server: str) -> None:
    page = login(browser, server, "erin")
    page.goto(f"{server}/contacts?id=c00000042")
    page.locator("#contact-feed tr[data-publication]").first.wait_for()
    page.select_option("#feed-ranker select[name=ranker]", "b0")
    page.wait_for_url(re.compile(r"ranker=b0"))
    reasons = page.locator("#contact-feed tr[data-publication] td.reason").all_inner_texts()
    assert len(reasons) == 10 and all(r.startswith("B0 editions: ") for r in reasons)
    shot(page, "14-feed-by-a-baseline")

    page.goto(f"{server}/feed-evaluations")
    page.fill("#evaluation-form input[name=contacts]", "2500")
    page.fill("#evaluation-form input[name=reports]", "120")
    page.fill("#evaluation-form input[name=weeks]", "2")
    page.fill("#evaluation-form input[name=samples]", "20")
    page.click("#evaluation-form button[type=submit]")
    page.wait_for_url(re.compile(r"/feed-evaluations\?id=ev-"))
    # The page refreshes itself while the run goes; the results table appears.
    page.locator("#evaluation-rankers tr[data-ranker='ours']").wait_for(timeout=180_000)
    result = page.locator("#evaluation-result")
    assert result.get_attribute("data-status") == "succeeded"
    assert page.locator("#evaluation-rankers tr[data-ranker]").count() == 6
    assert page.locator("#evaluation-lifts tr[data-ranker]").count() == 5
    assert "erin" in page.locator("#evaluation-runs").inner_text()
    shot(page, "15-feed-evaluation")
    # A big one can be cancelled from its page.
    page.fill("#evaluation-form input[name=contacts]", "500000")
    page.fill("#evaluation-form input[name=reports]", "")
    page.click("#evaluation-form button[type=submit]")
    page.locator("#evaluation-cancel").click()
    page.locator("#evaluation-result[data-status='cancelled']").wait_for()
    assert "cancelled by erin" in page.locator("#evaluation-result").inner_text()


def test_every_page_keeps_to_the_content_security_policy(browser: object, server: str) -> None:
    """Issue 17 item 12: the strict CSP (own static JS/CSS only) must not break a
    page: no violation reported in the console, and the selects that submitted
    their form with an inline `onchange` still do."""
    page = login(browser, server, "ada")
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: errors.append(str(e)))  # type: ignore[attr-defined]
    for path in (
        "/personas",
        "/criteria/new",
        "/requests",
        "/contacts?id=c00000042",
        "/feed-rules",
        "/feed-evaluations",
        "/monitoring",
        "/audit",
        "/admin/users",
    ):
        r = page.goto(f"{server}{path}")  # type: ignore[attr-defined]
        assert r.status == 200, path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path
        page.wait_for_load_state("networkidle")  # type: ignore[attr-defined]
    page.goto(f"{server}/feed-rules")  # type: ignore[attr-defined]
    page.select_option("#rules-persona", "emea-cio")  # type: ignore[attr-defined]
    page.wait_for_url(re.compile(r"persona=emea-cio"))  # type: ignore[attr-defined]
    assert not [e for e in errors if "Content Security Policy" in e], errors
    assert not errors, errors


def test_the_api_page_keeps_to_its_content_security_policy(browser: object, server: str) -> None:
    """Issue 17 item 12 (a regression of its fix): the strict policy of the
    workbench was sent on `/api/v1/docs` too, where it blocked Swagger UI's
    scripts and style sheet (served from a CDN) and its inline start-up
    script, so the page `serve` advertises stayed blank. The page gets a
    policy that allows exactly what it loads (the browser checks the policy
    before any request, so this holds with or without a network)."""
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    r = page.goto(f"{server}/api/v1/docs")
    assert r.status == 200
    policy = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "'unsafe-eval'" not in policy
    page.wait_for_load_state("load")
    assert not [e for e in errors if "Content Security Policy" in e], errors
    context.close()


def test_the_api_page_works_without_internet(browser: object, server: str) -> None:
    """Issue 19 item 7: `/api/v1/docs` loaded Swagger UI from a CDN, so on a
    machine without internet it was a blank page. Every request that leaves
    the server is refused here, as it would be offline; the page still
    renders the API from files served by personatag itself."""
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    outside: list[str] = []

    def only_local(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if url.startswith(server) or url.startswith("data:"):
            route.continue_()  # type: ignore[attr-defined]
        else:
            outside.append(url)
            route.abort()  # type: ignore[attr-defined]

    page.route("**/*", only_local)
    page.goto(f"{server}/api/v1/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=15_000)
    assert page.inner_text(".swagger-ui .info .title").startswith("personatag")
    # The operations are listed (the document was fetched and rendered).
    assert page.locator(".opblock").count() > 10
    assert outside == []
    context.close()
