"""`personatag serve` with the stream in partitions (PERSONATAG_STREAM_PARTITIONS=2),
in a real browser: the ongoing criterion is kept true by the partition
processes the server runs, and the Monitoring page shows each partition's
offset and lag. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from personatag.engines.local.stream import partitions
from personatag.store import changefeed, open_store
from tests.web.browser import browser, cli, login, shot, start_server

__all__ = ["browser"]

pytestmark = pytest.mark.slow


def _criterion(env: dict[str, str]) -> None:
    cli(
        env,
        "criterion",
        "add",
        "emea-live",
        "--persona",
        "emea-cio",
        "--expr",
        'region = "EMEA"',
        "--mode",
        "ongoing",
        "--exit",
        "remove",
    )


@pytest.fixture(scope="module")
def parted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("parted")
    extra = {"PERSONATAG_STREAM_PARTITIONS": "2", "PERSONATAG_STREAM_SAMPLE_S": "1"}
    with start_server(data, contacts=600, setup=_criterion, env_extra=extra) as url:
        yield url, data


def test_serve_keeps_criteria_true_in_partitions_and_shows_them(
    browser: object, parted: tuple[str, Path]
) -> None:
    url, data = parted
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")}
    env["PERSONATAG_DATA_DIR"] = str(data)
    store = open_store(f"sqlite:///{data / 'store.db'}")
    try:
        c, m = store.tables.contacts, store.tables.memberships
        with store.read() as conn:
            ids = list(conn.scalars(select(c.c.id).order_by(c.c.pk).limit(4)))
        for cid in ids:
            cli(env, "contact", "set", cid, "region=EMEA")
        deadline = time.monotonic() + 120
        while True:
            with store.read() as conn:
                offsets = partitions.family(conn, store, "stream")
                head = changefeed.head(conn, store)
            if sorted(offsets) == ["stream.p0of2", "stream.p1of2"] and set(offsets.values()) == {
                head
            }:
                break
            assert time.monotonic() < deadline, (offsets, head, (data / "serve.log").read_text())
            time.sleep(0.2)
        with store.read() as conn:
            emea = set(conn.scalars(select(c.c.pk).where(c.c.region == "EMEA")))
            held = set(conn.scalars(select(m.c.contact_pk)))
        assert emea and held == emea
    finally:
        store.dispose()
    page = login(browser, url, "vic")
    page.goto(f"{url}/monitoring")  # type: ignore[attr-defined]
    table = page.locator("#stream-partitions")  # type: ignore[attr-defined]
    assert table.locator("tbody tr").count() == 2
    text = table.inner_text()
    assert "stream.p0of2" in text and "stream.p1of2" in text
    assert table.locator("meter").count() == 2
    shot(page, "ui-stream-partitions-1280")
    page.set_viewport_size({"width": 390, "height": 844})  # type: ignore[attr-defined]
    shot(page, "ui-stream-partitions-390")
    page.context.close()  # type: ignore[attr-defined]
