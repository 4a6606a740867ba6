"""Contacts in a real browser: search by name, id, email and firm; edit a
contact on its page; with an ongoing criterion in place, edit a contact so it
matches and watch it enter the persona (the serve process runs the stream
processor); a viewer has no edit controls and the API refuses the edit."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests.web.browser import browser, cli, login, shot, start_server

__all__ = ["browser"]

pytestmark = pytest.mark.slow

ZELDA = "c00000042"
TARGET = "c00000043"


def _setup(env: dict[str, str]) -> None:
    cli(env, "contact", "set", ZELDA, "first_name=Zelda", "last_name=Quixote",
        "email=zelda.q@quillfirm.example", "firm=Quill Firm")  # fmt: skip
    cli(env, "persona", "add", "cpo", "--name", "Chief Persona Officers", "--category", "role")
    cli(env, "criterion", "add", "cpo-title", "--persona", "cpo", "--mode", "ongoing",
        "--expr", 'job_title = "Chief Persona Officer"')  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_server(tmp_path_factory.mktemp("contacts"), setup=_setup) as url:
        yield url


def _search(page: object, text: str) -> object:
    page.fill("#contact-q", text)  # type: ignore[attr-defined]
    page.press("#contact-q", "Enter")  # type: ignore[attr-defined]
    page.locator("#contact-results").wait_for()  # type: ignore[attr-defined]
    return page.locator("#contact-results li[data-contact]")  # type: ignore[attr-defined]


def test_search_by_name_id_email_and_firm(browser: object, server: str) -> None:
    page = login(browser, server, "erin")
    page.click("nav >> text=Contacts")  # type: ignore[attr-defined]
    page.locator("#contact-results-empty").wait_for()  # type: ignore[attr-defined]
    hits = _search(page, "zelda qui")
    assert hits.count() == 1  # type: ignore[attr-defined]
    assert "zelda.q@quillfirm.example" in hits.first.inner_text()  # type: ignore[attr-defined]
    shot(page, "contacts-01-search-by-name")
    for query in ("  C00000042 ", "ZELDA.Q@", "quill f", "Quixote"):
        hits = _search(page, query)
        assert [hits.nth(i).get_attribute("data-contact") for i in range(hits.count())] == [  # type: ignore[attr-defined]
            ZELDA
        ], query
    hits = _search(page, "zzzz-nobody")
    page.locator("#contact-results-empty", has_text="Try fewer letters").wait_for()  # type: ignore[attr-defined]
    hits = _search(page, "zelda")
    page.click(f"#contact-results li[data-contact='{ZELDA}'] a.hit-name")  # type: ignore[attr-defined]
    page.wait_for_url(re.compile(rf".*/contacts/{ZELDA}$"))  # type: ignore[attr-defined]
    assert "Zelda Quixote" in page.inner_text("h1")  # type: ignore[attr-defined]


def test_editor_edits_an_attribute_with_errors_shown_per_field(
    browser: object, server: str
) -> None:
    page = login(browser, server, "erin")
    page.goto(f"{server}/contacts/{ZELDA}")  # type: ignore[attr-defined]
    page.click("#attr-edit")  # type: ignore[attr-defined]
    page.fill("#attr-seniority", "senior")  # type: ignore[attr-defined]
    page.click("#attr-save")  # type: ignore[attr-defined]
    page.locator("#attr-seniority-error", has_text="whole number").wait_for()  # type: ignore[attr-defined]
    shot(page, "contacts-02-edit-error")
    page.fill("#attr-seniority", "7")  # type: ignore[attr-defined]
    page.fill("#attr-country", "Portugal")  # type: ignore[attr-defined]
    page.click("#attr-save")  # type: ignore[attr-defined]
    page.locator(".toast", has_text="Saved country, seniority").wait_for()  # type: ignore[attr-defined]
    view = page.locator("#attr-view")  # type: ignore[attr-defined]
    assert "Portugal" in view.locator("tr", has_text="country").inner_text()
    assert "7" in view.locator("tr", has_text="seniority").inner_text()
    shot(page, "contacts-03-edit-saved")


def test_editing_a_contact_so_it_matches_an_ongoing_criterion_enters_it(
    browser: object, server: str
) -> None:
    page = login(browser, server, "erin")
    page.goto(f"{server}/contacts/{TARGET}")  # type: ignore[attr-defined]
    assert page.locator("#contact-personas tr[data-persona='cpo']").count() == 0  # type: ignore[attr-defined]
    page.click("#attr-edit")  # type: ignore[attr-defined]
    page.fill("#attr-job_title", "Chief Persona Officer")  # type: ignore[attr-defined]
    page.click("#attr-save")  # type: ignore[attr-defined]
    page.locator(".toast", has_text="Saved job_title").wait_for()  # type: ignore[attr-defined]
    row = page.locator("#contact-personas tr[data-persona='cpo']")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 90  # the stream picks the change up within seconds
    while row.count() == 0:
        assert time.monotonic() < deadline, "the contact did not enter cpo"
        time.sleep(1)
        page.reload()  # type: ignore[attr-defined]
    why = row.first.inner_text()
    assert "cpo-title@1" in why and 'job_title = "Chief Persona Officer"' in why
    assert row.first.locator("a[href='/criteria/cpo-title']").count() == 1
    entered = page.locator("#contact-history tr[data-change='enter']", has_text="cpo")  # type: ignore[attr-defined]
    assert entered.count() >= 1
    shot(page, "contacts-04-entered-persona")


def test_viewer_sees_no_edit_controls_and_cannot_patch(browser: object, server: str) -> None:
    page = login(browser, server, "vic")
    page.goto(f"{server}/contacts/{ZELDA}")  # type: ignore[attr-defined]
    page.locator("#contact-personas").wait_for()  # type: ignore[attr-defined]
    for control in ("#attr-edit", "#attr-form", "#pin-persona", "button.pin", "#unpin"):
        assert page.locator(control).count() == 0, control  # type: ignore[attr-defined]
    status = page.evaluate(  # type: ignore[attr-defined]
        """async (id) => (await fetch(`/api/v1/contacts/${id}`, {method: "PATCH",
             headers: {"Content-Type": "application/json",
                       "X-CSRF-Token": document.querySelector('meta[name="csrf"]').content},
             body: JSON.stringify({fields: {country: "Nowhere"}})})).status""",
        ZELDA,
    )
    assert status == 403
    shot(page, "contacts-05-viewer")


def test_an_unknown_contact_is_a_404_page_that_says_so(browser: object, server: str) -> None:
    page = login(browser, server, "vic")
    r = page.goto(f"{server}/contacts/nobody-here")  # type: ignore[attr-defined]
    assert r.status == 404
    assert "There is no contact 'nobody-here'" in page.inner_text("main")  # type: ignore[attr-defined]
