"""The dashboard, the Monitoring charts and the Flink cluster page in a real
browser (Debian's Chromium, Playwright) against a real `personatag serve`.

The charts are checked by the numbers they are fed (the canvas's data-fed):
equal to what the API answers, and the API's equal to counts this test makes
from the store itself. Screenshots at 1280 and 390 px go to
test-artifacts/screenshots/.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from personatag.config import Settings
from personatag.store import open_store
from tests.web.browser import browser, cli, login, shot, start_server

__all__ = ["browser"]

pytestmark = pytest.mark.slow

WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}


def _activity(env: dict[str, str]) -> None:
    cli(env, "persona", "add", "apac-cio", "--name", "APAC CIO", "--category", "role")
    cli(env, "tag", "--persona", "emea-cio", "--expr", 'region = "EMEA"')
    cli(env, "tag", "--persona", "apac-cio", "--expr", 'region = "APAC"')
    cli(
        env,
        "untag",
        "--persona",
        "apac-cio",
        "--expr",
        'region = "APAC" and job_title ilike "%chief%"',
    )
    cli(env, "tag", "--persona", "emea-cio", "--expr", 'region = "AMER"', "--dry-run")


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A server with requests done and the stream sampling every second."""
    data = tmp_path_factory.mktemp("busy")
    extra = {"PERSONATAG_STREAM_SAMPLE_S": "1"}
    with start_server(data, contacts=1500, setup=_activity, env_extra=extra) as url:
        yield url, data


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with no request yet and its only persona archived."""
    data = tmp_path_factory.mktemp("fresh")

    def archive(env: dict[str, str]) -> None:
        cli(env, "persona", "archive", "emea-cio")

    with start_server(data, contacts=50, setup=archive) as url:
        yield url


def fed(page: Any, canvas: str) -> dict[str, Any]:
    raw = page.get_attribute(f"#{canvas}", "data-fed")
    assert raw, f"#{canvas} was fed nothing"
    return json.loads(raw)  # type: ignore[no-any-return]


def fed_when(page: Any, canvas: str, test: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """What #canvas is fed once `test` holds (the page re-feeds it after a change)."""
    for _ in range(100):
        found = fed(page, canvas)
        if test(found):
            return found
        page.wait_for_timeout(100)
    raise AssertionError(f"#{canvas} was not re-fed: {fed(page, canvas)}")


def get(page: Any, path: str) -> Any:
    return page.evaluate(
        "async (p) => (await fetch('/api/v1' + p, {credentials: 'same-origin'})).json()", path
    )


def both_widths(page: Any, name: str) -> None:
    page.set_viewport_size(WIDE)
    shot(page, f"{name}-1280")
    page.set_viewport_size(NARROW)
    shot(page, f"{name}-390")
    page.set_viewport_size(WIDE)


def test_dashboard_shows_personas_requests_stream_and_flink(
    browser: object, busy: tuple[str, Path]
) -> None:
    url, _ = busy
    page = login(browser, url, "vic")
    assert page.url.rstrip("/") == url  # after login people land on the dashboard
    assert page.locator("h1").inner_text() == "Dashboard"
    personas = page.locator("#dash-personas")
    assert personas.locator("a.chip", has_text="emea-cio").count() == 1
    assert personas.locator("a.chip", has_text="apac-cio").count() == 1
    assert page.locator("#stat-personas").inner_text() == "2"
    rows = page.locator("#dash-requests tbody tr")
    assert rows.count() == 4
    newest = rows.first
    assert "dry run" in newest.inner_text()
    assert newest.locator(".badge.status-succeeded").count() == 1
    assert newest.locator("a.chip", has_text="emea-cio").count() == 1
    assert re.search(r"just now|min ago", newest.locator("time").inner_text())
    page.locator("#stream-state", has_text="running").wait_for()
    assert "changes/s" in page.locator("#stream-rate").inner_text()
    assert page.locator("#jobs-succeeded").inner_text() == "4"
    assert page.locator("#stat-flink").inner_text() == "not reachable"
    assert "start it with personatag flink start" in page.locator("#flink-reason").inner_text()
    both_widths(page, "ui-monitoring-01-dashboard")
    # a request row links to its job
    newest.locator("a[href^='/jobs/']").click()
    page.wait_for_url(re.compile(r".*/jobs/\d+$"))
    assert "succeeded" in page.locator("#job-status").inner_text()


def test_dashboard_empty_states_say_what_to_do(browser: object, fresh: str) -> None:
    page = login(browser, fresh, "erin")
    assert "No personas yet — create one" in page.locator("#dash-personas").inner_text()
    requests = page.locator("#dash-requests")
    assert "No requests yet — build a criterion" in requests.inner_text()
    assert "No jobs today" in page.locator("#dash-jobs").inner_text()
    both_widths(page, "ui-monitoring-02-dashboard-empty")
    requests.get_by_role("link", name="Build a criterion").click()
    page.wait_for_url(re.compile(r".*/criteria/new$"))
    page.go_back()
    page.locator("#dash-personas").get_by_role("link", name="Create a persona").click()
    page.wait_for_url(re.compile(r".*/personas$"))


def test_monitoring_charts_are_fed_what_the_store_holds(
    browser: object, busy: tuple[str, Path]
) -> None:
    url, data = busy
    page = login(browser, url, "vic")
    errors: list[str] = []  # the charts keep to the CSP and run without a script error
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.get_by_role("link", name="Monitoring", exact=True).first.click()
    page.wait_for_url(re.compile(r".*/monitoring$"))
    page.locator("body[data-charts-ready]").wait_for()

    # Jobs per day: drawn == API == counted from the store's rows.
    jobs_api = get(page, "/monitoring/jobs-daily?days=30")["days"]
    drawn = fed(page, "chart-jobs")
    assert drawn["unit"] == "jobs/day" and len(drawn["labels"]) == 30
    by_label = {s["label"]: s["data"] for s in drawn["series"]}
    for outcome in ("succeeded", "partial", "failed", "cancelled"):
        assert by_label[outcome] == [d[outcome] for d in jobs_api]
    store = open_store(Settings(data_dir=data).resolved_store_url)
    try:
        t = store.tables
        with store.read() as conn:
            jobs = list(conn.execute(select(t.jobs.c.status, t.jobs.c.finished_at)))
            requests = list(conn.execute(select(t.requests.c.created_at, t.requests.c.dry_run)))
            log = list(
                conn.execute(
                    select(
                        t.membership_log.c.at,
                        t.membership_log.c.change,
                        t.membership_log.c.bulk_count,
                    )
                )
            )
    finally:
        store.dispose()
    ended = Counter((f.astimezone(UTC).strftime("%Y-%m-%d"), s) for s, f in jobs if f is not None)
    assert {(d["day"], o): d[o] for d in jobs_api for o in ("succeeded", "failed") if d[o]} == dict(
        ended
    )
    assert sum(by_label["succeeded"]) == 4

    durations = fed(page, "chart-durations")
    assert durations["unit"] == "seconds"
    assert durations["series"][1]["data"] == [d["max_seconds"] for d in jobs_api]

    # Requests per day (and per hour once switched).
    req_api = get(page, "/monitoring/requests-daily?days=30")["days"]
    drawn = fed(page, "chart-requests")
    assert drawn["unit"] == "requests/day"
    assert drawn["series"][1]["data"] == [d["dry_runs"] for d in req_api]
    assert [a + b for a, b in zip(*(s["data"] for s in drawn["series"]), strict=True)] == [
        d["requests"] for d in req_api
    ]
    assert sum(d["requests"] for d in req_api) == len(requests) == 4
    page.select_option("#mon-requests-by", "hour")
    hourly = fed_when(page, "chart-requests", lambda f: f["unit"] == "requests/hour")
    assert len(hourly["labels"]) == 48
    assert sum(hourly["series"][0]["data"]) + sum(hourly["series"][1]["data"]) == 4

    # Enters and exits per day, from the membership log.
    moves_api = get(page, "/monitoring/memberships-daily?days=30")["days"]
    drawn = fed(page, "chart-moves")
    assert drawn["unit"] == "contacts/day"
    assert drawn["series"][0]["data"] == [d["entered"] for d in moves_api]
    assert drawn["series"][1]["data"] == [d["exited"] for d in moves_api]
    entered = sum(b or 1 for _, c, b in log if c == "enter")
    exited = sum(b or 1 for _, c, b in log if c == "exit")
    assert (sum(drawn["series"][0]["data"]), sum(drawn["series"][1]["data"])) == (
        entered,
        exited,
    )
    assert entered > 0 and exited > 0

    # Persona sizes, largest first.
    sizes_api = get(page, "/monitoring/persona-sizes")["personas"]
    drawn = fed(page, "chart-sizes")
    assert drawn["unit"] == "contacts"
    assert drawn["labels"] == [p["key"] for p in sizes_api]
    assert drawn["series"][0]["data"] == [p["members"] for p in sizes_api]
    personas = get(page, "/personas")["personas"]
    assert dict(zip(drawn["labels"], drawn["series"][0]["data"], strict=True)) == {
        p["key"]: p["members"] for p in personas
    }

    # The stream's lag and changes/s over time, from its stored samples.
    stream = get(page, "/monitoring/stream-history?hours=24")
    lag = fed(page, "chart-stream-lag")
    rate = fed(page, "chart-stream-rate")
    assert (lag["unit"], rate["unit"]) == ("seconds", "changes/s")
    shown = len(lag["series"][0]["data"])
    assert shown >= 1 and stream["running"] is True
    assert lag["series"][0]["data"] == [s["lag_seconds"] for s in stream["samples"][:shown]]
    assert rate["series"][0]["data"] == [s["changes_per_s"] for s in stream["samples"][:shown]]

    # A shorter span re-feeds the daily charts.
    page.select_option("#mon-days", "7")
    fed_when(page, "chart-jobs", lambda f: len(f["labels"]) == 7)
    assert not errors, errors
    both_widths(page, "ui-monitoring-03-monitoring")


def test_cluster_page_says_why_flink_is_not_reachable(
    browser: object, busy: tuple[str, Path]
) -> None:
    url, _ = busy
    page = login(browser, url, "vic")
    page.locator("#dash-flink").get_by_role("link", name="Details →").click()
    page.wait_for_url(re.compile(r".*/cluster$"))
    assert page.locator("#cluster-reachable").inner_text() == "not reachable"
    reason = page.locator("#cluster-reason").inner_text()
    assert re.fullmatch(
        r"nothing listens on 127\.0\.0\.1:\d+ — start it with personatag flink start", reason
    )
    assert page.locator("#cluster-taskmanagers").count() == 0
    api = get(page, "/flink/cluster")
    assert page.locator("#cluster-reason code").inner_text() == "personatag flink start"
    assert api["reachable"] is False and api["reason"].replace("`", "") == reason
    both_widths(page, "ui-monitoring-04-cluster-down")


@pytest.mark.skipif(
    not os.environ.get("PERSONATAG_TEST_FLINK_URL"),
    reason="PERSONATAG_TEST_FLINK_URL is not set (`make test` starts a local cluster)",
)
def test_cluster_page_with_the_test_cluster(
    browser: object, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from personatag.engines.flink.runtime.rest import FlinkRest

    flink = os.environ["PERSONATAG_TEST_FLINK_URL"]
    data = tmp_path_factory.mktemp("cluster")
    with start_server(data, contacts=50, env_extra={"PERSONATAG_FLINK_URL": flink}) as url:
        page = login(browser, url, "vic")
        page.get_by_role("link", name="Flink cluster", exact=True).click()
        page.wait_for_url(re.compile(r".*/cluster$"))
        assert page.locator("#cluster-reachable").inner_text() == "reachable"
        with FlinkRest(flink) as rest:
            overview = rest.overview()
            tms = rest.taskmanagers()
        assert page.locator("#cluster-tms").inner_text() == str(len(tms))
        slots = page.locator("#cluster-slots").inner_text()
        assert slots.startswith(f"{overview['slots-available']}") and "of" in slots
        rows = page.locator("#cluster-taskmanagers tbody tr")
        assert rows.count() == len(tms)
        assert "GiB" in rows.first.inner_text()
        assert page.locator("#flink-dashboard").get_attribute("href") == "/flink/"
        both_widths(page, "ui-monitoring-05-cluster-up")
        page.click("#flink-dashboard")
        page.wait_for_url(re.compile(r".*/flink/.*"))
