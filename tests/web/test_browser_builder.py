"""The criterion builder's tree in a real browser (Debian's Chromium, Playwright) against
a real `personatag serve`: build a criterion by clicking only and see the text follow,
type text and see the tree follow, type nonsense and see the tree marked out of date.
Screenshots go to test-artifacts/screenshots/ like the other browser flows.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.web.browser import browser, login, server, shot

__all__ = ["browser", "server"]  # the fixtures, shared with the other browser flows

pytestmark = pytest.mark.slow

BUILT = '(region = "EMEA" or region = "APAC") and not seniority >= 8'
TYPED = 'region = "AMER" or job_title ilike "%cio%" or count(read where sector = "Banks", 30d) >= 2'
EDITED = TYPED.replace('"Banks", 30d', '"Energy", 60d')


def test_the_tree_and_the_text_edit_one_criterion(browser: object, server: str) -> None:
    from playwright.sync_api import expect

    page: Any = login(browser, server, "erin")
    page.goto(f"{server}/criteria/new")
    tree = page.locator("#tree")
    root = tree.locator(".vb-group").first
    expect(root.locator(":scope > .vb-children > .vb-empty")).to_be_visible()
    expect(root.locator(":scope > .vb-head .vb-join")).to_have_value("and")

    # (region = "EMEA" or region = "APAC") ...
    root.locator(":scope > .vb-head .vb-add-group").click()
    inner = root.locator(":scope > .vb-children > .vb-group")
    inner.locator(":scope > .vb-head .vb-join").select_option("or")
    for region in ("EMEA", "APAC"):
        inner.locator(":scope > .vb-head .vb-add-cond").click()
        row = inner.locator(".vb-cond").last
        expect(row.locator(".vb-field")).to_be_focused()  # the keyboard follows the new row
        row.locator(".vb-field").select_option("region")
        expect(row.locator(".vb-op")).to_have_value("=")
        row.locator(".vb-value").fill(region)
    # ... and not seniority >= 8
    root.locator(":scope > .vb-head .vb-add-cond").click()
    row = root.locator(":scope > .vb-children > .vb-cond")
    row.locator(".vb-field").select_option("seniority")
    row.locator(".vb-op").select_option(">=")
    expect(row.locator(".vb-value")).to_have_attribute("type", "number")
    row.locator(".vb-value").fill("8")
    row.locator(".vb-not").click()
    expect(row.locator(".vb-not")).to_have_attribute("aria-pressed", "true")

    expect(page.locator("#expr")).to_have_value(BUILT)
    expect(page.locator("#expr-status")).to_have_text("valid")
    count = page.locator("#preview-count")
    expect(count).to_have_text(re.compile(r"\d[\d,]* match"))  # the preview follows the tree
    shot(page, "14-builder-tree-built-by-clicking")

    # A tree error is shown beside the tree and leaves the text alone.
    root.locator(":scope > .vb-head .vb-add-cond").click()
    expect(page.locator("#tree-status")).to_contain_text("choose a field")
    expect(tree.locator(".vb-bad .vb-field")).to_have_value("")
    expect(page.locator("#expr")).to_have_value(BUILT)
    root.locator(":scope > .vb-children > .vb-cond").last.locator(".vb-remove").click()
    expect(page.locator("#tree-status")).to_have_text("")

    # The text drives the tree: an `or` of three conditions, one of them a count.
    page.fill("#expr", TYPED)
    expect(root.locator(":scope > .vb-head .vb-join")).to_have_value("or")
    expect(root.locator(":scope > .vb-children > .vb-cond")).to_have_count(2)
    expect(tree.locator(".vb-group")).to_have_count(2)  # the root and the count's where
    pattern = root.locator(".vb-cond").nth(1)
    expect(pattern.locator(".vb-op")).to_have_value("ilike")
    expect(pattern.locator(".vb-value")).to_have_value("%cio%")
    counted = root.locator(".vb-count")
    expect(counted.locator(".vb-days")).to_have_value("30")
    expect(counted.locator(".vb-where .vb-cond .vb-field")).to_have_value("sector")
    # and the count's parts are editable in the tree
    counted.locator(".vb-days").fill("60")
    counted.locator(".vb-where .vb-cond .vb-value").fill("Energy")
    expect(page.locator("#expr")).to_have_value(EDITED)
    shot(page, "15-builder-tree-from-text")

    # Text that does not parse leaves the tree as it was, marked out of date.
    page.fill("#expr", 'region = "AMER" or job_title ilike')
    expect(tree).to_have_attribute("data-stale", "true")
    expect(page.locator("#tree-status")).to_contain_text("out of date")
    expect(root.locator(":scope > .vb-children > .vb-cond")).to_have_count(2)
    shot(page, "16-builder-tree-out-of-date")
    # Fixing the text brings it back.
    page.fill("#expr", 'not (region = "EMEA" and seniority between 3 and 5)')
    expect(tree).to_have_attribute("data-stale", "false")
    expect(tree.locator(".vb-group").first).to_have_class(re.compile(r"\bvb-negated\b"))
    expect(tree.locator(".vb-cond")).to_have_count(2)
