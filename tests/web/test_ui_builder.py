"""The criterion builder's authoring flows in a real browser (Debian's Chromium,
Playwright) against a real `personatag serve` over 3,000 generated contacts:

- build a criterion in the visual tree, save it (ongoing, exit remove), open it
  again from its name and save a new version;
- the persona field has no silent default: nothing is saved or sent until one
  is chosen;
- a mass tag over the confirmation threshold (1,000 by default) shows what it
  will do and asks; cancelling sends nothing, confirming sends; a tag never
  shows "would exit", an untag does;
- a value compare that finds nothing but would match ignoring case says so.

Each flow goes through the UI only; the API is read only to check results.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.web.browser import SHOTS as browser_shots
from tests.web.browser import browser, login, shot, start_server

__all__ = ["browser"]

pytestmark = pytest.mark.slow

# Both widths of each page; SHOTS_DIR puts them elsewhere (e.g. to look at them).
SHOTS = Path(os.environ.get("SHOTS_DIR", str(browser_shots)))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_server(tmp_path_factory.mktemp("ui-builder")) as url:
        yield url


def screenshots(page: Any, name: str) -> None:
    """The page at desktop and phone width, for people to look at (not the repo)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width, height in ((1280, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=str(SHOTS / f"ui-{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def origin(page: Any) -> str:
    parts = urlsplit(page.url)
    return f"{parts.scheme}://{parts.netloc}"


def api_get(page: Any, path: str) -> Any:
    """Read the API with the page's session (to check results, not to act)."""
    r = page.request.get(origin(page) + path)
    assert r.ok, (path, r.status, r.text())
    return r.json()


def posts_to(page: Any, path: str) -> list[str]:
    """Records every POST the page sends to `path` (the list fills as it goes)."""
    sent: list[str] = []

    def seen(r: Any) -> None:
        if r.method == "POST" and r.url.endswith(path):
            sent.append(r.post_data or "")

    page.on("request", seen)
    return sent


def test_build_visually_save_and_save_a_new_version(browser: object, server: str) -> None:
    from playwright.sync_api import expect

    page: Any = login(browser, server, "erin")
    page.goto(f"{server}/criteria/new")
    expect(page.locator("#persona")).to_have_value("")  # no silent default
    expect(page.locator("#persona option:checked")).to_have_text("choose a persona…")

    # region = "EMEA" and seniority >= 5, by clicking
    root = page.locator("#tree .vb-group").first
    for field, op, value in (("region", "=", "EMEA"), ("seniority", ">=", "5")):
        root.locator(":scope > .vb-head .vb-add-cond").click()
        row = root.locator(":scope > .vb-children > .vb-cond").last
        row.locator(".vb-field").select_option(field)
        row.locator(".vb-op").select_option(op)
        row.locator(".vb-value").fill(value)
    expect(page.locator("#expr")).to_have_value('region = "EMEA" and seniority >= 5')
    expect(page.locator("#preview-count")).to_have_text(re.compile(r"\d[\d,]* match"))

    page.fill("#save-name", "emea-senior")
    page.select_option("#save-mode", "ongoing")
    # an ongoing criterion tags; its exit policy says what happens on leaving
    expect(page.locator('#save-action option[value="untag"]')).to_be_disabled()
    expect(page.locator("#save-exit")).to_be_enabled()
    page.select_option("#save-exit", "remove")
    expect(page.locator("#save-help")).to_contain_text("leaves")

    # Saving without a persona refuses and says why; nothing is sent.
    sent = posts_to(page, "/api/v1/criteria")
    page.click("#save-criterion")
    expect(page.locator(".toast-error")).to_contain_text("Choose a persona")
    expect(page.locator("#persona")).to_have_attribute("aria-invalid", "true")
    assert sent == []
    page.select_option("#persona", "emea-cio")
    # what the ongoing criterion would do once swapped in (nobody holds emea-cio yet)
    expect(page.locator("#save-effect")).to_contain_text("would enter")
    expect(page.locator("#save-effect")).to_contain_text("0 contacts would exit")
    page.select_option("#save-exit", "keep")
    expect(page.locator("#save-effect")).to_contain_text("nobody leaves")
    page.select_option("#save-exit", "remove")
    expect(page.locator("#save-effect")).to_contain_text("would exit")
    screenshots(page, "builder-save-form")
    page.click("#save-criterion")
    expect(page.locator(".toast-ok")).to_contain_text("Saved emea-senior version 1")
    page.wait_for_url(re.compile(r"/criteria/emea-senior$"))
    saved = api_get(page, "/api/v1/criteria/emea-senior")["versions"]
    assert [(v["version"], v["persona"], v["mode"], v["action"], v["exit"]) for v in saved] == [
        (1, "emea-cio", "ongoing", "tag", "remove")
    ]
    assert saved[0]["expr"] == 'region = "EMEA" and seniority >= 5'
    assert saved[0]["created_by"] == "erin"

    # Opened by name, the builder holds it; saving adds version 2.
    page.goto(f"{server}/criteria/new?criterion=emea-senior")
    expect(page.locator("#expr")).to_have_value('region = "EMEA" and seniority >= 5')
    expect(page.locator("#persona")).to_have_value("emea-cio")
    expect(page.locator("#save-name")).to_have_value("emea-senior")
    expect(page.locator("#save-name")).to_have_attribute("readonly", "")
    expect(page.locator("#save-mode")).to_have_value("ongoing")
    expect(page.locator("#save-exit")).to_have_value("remove")
    value = page.locator("#tree .vb-cond").nth(1).locator(".vb-value")
    expect(value).to_have_value("5")
    value.fill("7")
    expect(page.locator("#expr")).to_have_value('region = "EMEA" and seniority >= 7')
    screenshots(page, "builder-edit")
    page.click("#save-criterion")
    expect(page.locator(".toast-ok")).to_contain_text("Saved emea-senior version 2")
    page.wait_for_url(re.compile(r"/criteria/emea-senior$"))
    saved = api_get(page, "/api/v1/criteria/emea-senior")["versions"]
    assert [(v["version"], v["expr"]) for v in saved] == [
        (1, 'region = "EMEA" and seniority >= 5'),
        (2, 'region = "EMEA" and seniority >= 7'),
    ]

    # An unknown name is a 404 page that says so.
    page.goto(f"{server}/criteria/new?criterion=no-such")
    assert "no criterion named 'no-such'" in page.inner_text("main")


def test_a_request_needs_a_persona(browser: object, server: str) -> None:
    from playwright.sync_api import expect

    page: Any = login(browser, server, "erin")
    page.goto(f"{server}/criteria/new")
    page.fill("#expr", 'region = "APAC"')
    expect(page.locator("#preview-count")).to_be_visible()
    # without a persona the preview counts matches, and says enter/exit need one
    expect(page.locator("#preview-out")).to_contain_text("Choose a persona")
    expect(page.locator("#preview-enter")).to_have_count(0)
    sent = posts_to(page, "/api/v1/requests")
    page.click("#submit-request")
    expect(page.locator(".toast-error")).to_contain_text("Choose a persona")
    expect(page.locator("#persona")).to_be_focused()
    assert sent == []


def test_mass_tag_asks_first_and_untag_shows_who_leaves(browser: object, server: str) -> None:
    from playwright.sync_api import expect

    page: Any = login(browser, server, "erin")
    page.goto(f"{server}/criteria/new")
    page.select_option("#persona", "emea-cio")
    page.fill("#expr", "id is not null")  # all 3,000: over the 1,000 threshold
    expect(page.locator("#preview-count")).to_contain_text("3,000 match")
    expect(page.locator("#preview-enter")).to_contain_text("3,000")
    expect(page.locator("#preview-exit")).to_have_count(0)  # a tag removes nobody
    sent = posts_to(page, "/api/v1/requests")

    page.click("#submit-request")
    dialog = page.locator("dialog.confirm")
    expect(dialog).to_be_visible()
    expect(dialog.locator("h2")).to_have_text("Tag 3,000 contacts?")
    expect(dialog).to_contain_text("would enter")
    expect(dialog).not_to_contain_text("would exit")
    expect(dialog.locator(".contact-chip").first).to_be_visible()  # a sample, as links
    screenshots(page, "builder-confirm-tag")
    dialog.get_by_role("button", name="Cancel").click()
    expect(page.locator("#submit-status")).to_have_text("cancelled: nothing was sent")
    assert sent == []

    page.click("#submit-request")
    page.locator("#confirm-ok").click()
    link = page.locator("#submit-status a")
    expect(link).to_be_visible()
    request_id = link.inner_text()
    assert len(sent) == 1 and '"action":"tag"' in sent[0]
    expect(page.locator(".toast-ok")).to_contain_text(f"Request {request_id} submitted")
    page.goto(f"{server}/requests")
    page.locator(f'tr[data-request="{request_id}"][data-status="succeeded"]').wait_for(
        timeout=60_000
    )

    # An untag shows who would leave (and never who would enter); over the
    # threshold it asks too.
    page.goto(f"{server}/criteria/new")
    sent = posts_to(page, "/api/v1/requests")
    page.select_option("#persona", "emea-cio")
    page.select_option("#action", "untag")
    page.fill("#expr", "id is not null")
    expect(page.locator("#preview-exit")).to_contain_text("3,000")
    expect(page.locator("#preview-enter")).to_have_count(0)
    screenshots(page, "builder-untag-preview")
    page.click("#submit-request")
    expect(dialog.locator("h2")).to_have_text("Untag 3,000 contacts?")
    expect(dialog).to_contain_text("would exit")
    expect(dialog).not_to_contain_text("would enter")
    dialog.get_by_role("button", name="Cancel").click()
    expect(page.locator("#submit-status")).to_have_text("cancelled: nothing was sent")
    # A dry run changes nothing: it goes without asking.
    page.check("#dry-run")
    page.click("#submit-request")
    expect(page.locator("#submit-status a")).to_be_visible()
    expect(dialog).to_have_count(0)
    assert len(sent) == 1 and '"dry_run":true' in sent[0]
    # Back to tag: the exit count goes away again.
    page.select_option("#action", "tag")
    expect(page.locator("#preview-enter .value")).to_have_text(re.compile(r"^0 contacts$"))
    expect(page.locator("#preview-exit")).to_have_count(0)


def test_a_case_mismatch_is_hinted(browser: object, server: str) -> None:
    from playwright.sync_api import expect

    page: Any = login(browser, server, "vic")  # a viewer previews too
    page.goto(f"{server}/criteria/new")
    page.fill("#expr", 'region = "emea" and seniority >= 0')
    expect(page.locator("#preview-count")).to_contain_text("0 match")
    hint = page.locator("#preview-hint")
    expect(hint).to_have_text(re.compile(r"^0 match; [\d,]+ would match ignoring case — use ilike"))
    folded = int(re.sub(r"\D", "", hint.inner_text().split(";")[1]))
    r = page.request.post(
        origin(page) + "/api/v1/preview",
        data={"expr": 'region ilike "emea" and seniority >= 0'},
        headers={"X-CSRF-Token": page.locator('meta[name="csrf"]').get_attribute("content")},
    )
    assert r.ok and r.json()["count"] == folded > 0
    # a viewer has no save form
    expect(page.locator("#save-form")).to_have_count(0)
    screenshots(page, "builder-case-hint-viewer")
    # one click rewrites the compare
    page.click("#use-suggestion")
    expect(page.locator("#expr")).to_have_value('region ilike "emea" and seniority >= 0')
    expect(page.locator("#preview-count")).to_contain_text(f"{folded:,} match")
    expect(page.locator("#tree .vb-op").first).to_have_value("ilike")
    page.fill("#expr", 'region = "EMEA"')
    expect(page.locator("#preview-count")).not_to_contain_text(re.compile(r"^0 match"))
    expect(hint).to_have_count(0)
    shot(page, "ui-builder-case-hint")
