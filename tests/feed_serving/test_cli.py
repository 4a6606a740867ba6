"""The feed commands as a user runs them: a real process on each store, exact JSON."""

from __future__ import annotations

import json
from pathlib import Path

from personatag.store import open_store
from tests.feed_serving.conftest import build_world
from tests.test_cli import CLI


def test_feed_and_rules_from_the_command_line(store_url: str, tmp_path: Path) -> None:
    store = open_store(store_url)
    build_world(store)
    store.dispose()
    cli = CLI(store_url, tmp_path)

    feed = cli.json("feed", "c0001", "--k", "3", "--json")
    assert set(feed) == {"contact", "as_of", "items"} and feed["contact"] == "c0001"
    assert len(feed["items"]) == 3
    assert set(feed["items"][0]) == {
        "id", "title", "score", "reason", "series", "sector", "published_at", "rules"
    }  # fmt: skip
    assert all(isinstance(i["rules"], list) for i in feed["items"])
    assert not {"p01", "p05", "pfuture"} & {i["id"] for i in feed["items"]}
    # A baseline for comparison: same eligibility, its own reasons, no rules.
    b3 = cli.json("feed", "c0001", "--k", "3", "--ranker", "b3", "--json")
    assert (b3["ranker"], len(b3["items"])) == ("b3", 3)
    assert not {"p01", "p05", "pfuture"} & {i["id"] for i in b3["items"]}
    assert all(i["reason"].startswith("B3 your coverage: ") for i in b3["items"])
    text = cli("feed", "c0001", "--k", "2", "--ranker", "b0").stdout
    assert "ranked by b0" in text and "B0 editions: " in text
    bad = cli("feed", "c0001", "--ranker", "best", ok=False)
    assert bad.returncode == 1 and "unknown ranker 'best'" in bad.stderr
    assert "Traceback" not in bad.stderr

    bad = cli("feed-rule", "add", "treas", "--boost", 'sectr = "Energy"', "--weight", "2", ok=False)
    assert bad.returncode == 1
    assert "line 1, col 1: unknown field 'sectr' (did you mean 'sector'?)" in bad.stderr
    assert (
        cli(
            "feed-rule", "add", "treas", "--cap-per-series", "1", "--weight", "2", ok=False
        ).returncode
        == 1
    )
    rule = cli.json("feed-rule", "add", "treas", "--filter", 'sector = "Energy"', "--json")
    assert (rule["kind"], rule["expr"], rule["created_by"]) == (
        "filter",
        'sector = "Energy"',
        "tester",
    )
    pin = cli.json("feed-rule", "add", "treas", "--pin", "p10", "--expires", "2999-01-01", "--json")
    assert pin["expires_at"] == "2999-01-01T00:00:00Z"
    listed = cli.json("feed-rule", "list", "treas", "--json")
    assert [r["id"] for r in listed["rules"]] == [rule["id"], pin["id"]]
    assert "pin p10 until 2999-01-01T00:00:00Z" in cli("feed-rule", "list").stdout

    held = cli.json("feed", "c0002", "--k", "10", "--json")  # c0002 holds treas
    assert held["items"][0]["id"] == "p10"
    assert {i["sector"] for i in held["items"]} == {"Energy"}

    assert "removed" in cli("feed-rule", "remove", str(rule["id"])).stdout
    missing = cli("feed-rule", "remove", str(rule["id"]), ok=False)
    assert missing.returncode == 1 and f"no feed rule {rule['id']}" in missing.stderr

    out = tmp_path / "feeds.jsonl"
    done = cli("feed-precompute", "--out", str(out), "--k", "2")
    assert "precomputed 40 feeds" in done.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 40 and set(lines[0]) == {"contact", "as_of", "items"}
    assert lines[2]["contact"] == "c0002" and lines[2]["items"][0]["id"] == "p10"
