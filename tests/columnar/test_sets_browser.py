"""A persona's page in a real browser against a real `personatag serve`: the
overlap with another persona and the size chart, fed from the persona sets."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.web.browser import browser, cli, login, shot, start_server

__all__ = ["browser"]

pytestmark = pytest.mark.slow


def _setup(env: dict[str, str]) -> None:
    cli(env, "persona", "add", "senior", "--name", "Senior", "--category", "seniority")
    cli(env, "tag", "--persona", "emea-cio", "--expr", 'region = "EMEA"')
    cli(env, "tag", "--persona", "senior", "--expr", "seniority >= 5")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("persona-sets")
    with start_server(data, contacts=300, setup=_setup) as url:
        yield url, data


def test_overlap_and_size_chart(browser: object, site: tuple[str, Path]) -> None:
    url, data = site
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")},
        "PERSONATAG_DATA_DIR": str(data),
    }
    want = json.loads(cli(env, "persona", "stats", "emea-cio", "senior", "--json", "--days", "90"))
    page = login(browser, url, "vic")
    page.goto(f"{url}/personas/emea-cio")  # type: ignore[attr-defined]
    size = page.locator("#size-chart[data-fed]")  # type: ignore[attr-defined]
    size.wait_for(state="attached")
    fed = json.loads(size.get_attribute("data-fed") or "{}")
    assert fed["labels"] == want["history"]["days"]
    assert fed["series"][0]["data"] == want["history"]["size"]["emea-cio"]
    page.select_option("#overlap-with", "senior")  # type: ignore[attr-defined]
    chart = page.locator("#overlap-chart[data-fed]")  # type: ignore[attr-defined]
    chart.wait_for(state="attached")
    fed = json.loads(chart.get_attribute("data-fed") or "{}")
    pair = want["pairs"][0]
    assert [s["label"] for s in fed["series"]] == ["emea-cio only", "both", "senior only"]
    assert [s["data"][0] for s in fed["series"]] == [
        pair["a_not_b"], pair["both"], pair["b_not_a"]
    ]  # fmt: skip
    assert pair["both"] > 0
    text = page.inner_text("#overlap-figures")  # type: ignore[attr-defined]
    assert f"{pair['both']:,} hold both" in text and "Jaccard" in text
    shot(page, "persona-sets-overlap")
