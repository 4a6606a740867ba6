"""The command line as a user runs it: a real process, real stores, exact JSON contracts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from personatag.store import open_store
from tests.helpers import add_contacts, population


class CLI:
    def __init__(self, url: str, data_dir: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")} | {
            "PERSONATAG_STORE_URL": url,
            "PERSONATAG_DATA_DIR": str(data_dir),
            "PERSONATAG_ACTOR": "tester",
        }

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "personatag.cli", *args],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
            timeout=120,
        )
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc

    def json(self, *args: str) -> dict:  # type: ignore[type-arg]
        return json.loads(self(*args).stdout)


@pytest.fixture
def cli(store_url: str, tmp_path: Path) -> CLI:
    store = open_store(store_url)
    add_contacts(store, population(40))
    store.dispose()
    return CLI(store_url, tmp_path)


def test_contracts(cli: CLI, tmp_path: Path) -> None:
    cli("init")
    cli("persona", "add", "emea", "--name", "EMEA readers", "--category", "region")
    p = cli.json("preview", "--expr", 'region = "EMEA"', "--persona", "emea", "--json")
    assert set(p) == {
        "count",
        "sample",
        "would_enter",
        "would_exit",
        "count_ignoring_case",
        "hint",
        "suggestion",
    }
    # a tag removes nobody: no would_exit at all
    assert (p["count"], p["would_enter"], p["would_exit"]) == (10, 10, None)
    assert p["sample"][:2] == ["c0000", "c0004"]
    # the text form shows only what the action can do, and a case hint
    text = cli("preview", "--expr", 'region = "emea"', "--persona", "emea").stdout
    assert text.splitlines()[0] == "matches: 0  would enter: 0"
    assert "hint: 0 match; 10 would match ignoring case — use ilike" in text
    text = cli("preview", "--expr", 'region = "EMEA"', "--persona", "emea", "--action", "untag")
    assert text.stdout.splitlines()[0] == "matches: 10  would exit: 0"
    out = cli.json("tag", "--persona", "emea", "--expr", 'region = "EMEA"', "--json")
    for key in ("request_id", "status", "matched", "tagged", "untagged", "already", "failed"):
        assert key in out
    assert (out["status"], out["matched"], out["tagged"], out["already"]) == (
        "succeeded",
        10,
        10,
        0,
    )
    again = cli.json("tag", "--persona", "emea", "--expr", 'region = "EMEA"', "--json")
    assert (again["tagged"], again["already"]) == (0, 10)
    members = cli.json("persona", "members", "emea", "--json")
    assert members["members"][0] == {"id": "c0000"}
    assert len(members["members"]) == 10
    shown = cli.json("contact", "show", "c0004", "--json")
    assert shown["personas"][0]["persona"] == "emea"
    assert shown["personas"][0]["sources"][0]["request_id"] == out["request_id"]
    assert shown["log"][0]["by"] == "tester"
    assert " enter emea by tester: " in cli("contact", "show", "c0004").stdout
    found = cli.json("contact", "search", " C0004 ", "--json")
    assert [(h["id"], h["matched"], h["personas"]) for h in found["items"]] == [
        ("c0004", "id", ["emea"])
    ]
    assert cli("contact", "search", "c0004").stdout.startswith("c0004 ")
    assert "no contact matches 'nobody'" in cli("contact", "search", "nobody").stdout
    # An ongoing criterion's entry has no actor: the text says what did it, not "by None".
    cli("persona", "add", "senior", "--name", "Senior", "--category", "seniority")
    cli("criterion", "add", "senior", "--persona", "senior", "--expr", "seniority >= 4")
    cli(
        "criterion",
        "add",
        "senior-live",
        "--persona",
        "senior",
        "--expr",
        "seniority >= 4",
        "--mode",
        "ongoing",
    )
    cli("stream", "--once")
    text = cli("contact", "show", "c0004").stdout
    assert " enter senior: criterion senior-live@1 swapped in" in text
    assert "None" not in text
    ids = tmp_path / "ids.txt"
    ids.write_text("c0001\nmissing\n")
    res = cli("untag", "--persona", "emea", "--contacts", str(ids), "--json")
    assert json.loads(res.stdout)["failed"] == 1
    assert f"{ids}:2: unknown contact id 'missing'" in res.stderr


def test_criteria_versions_and_attributes(cli: CLI) -> None:
    cli("persona", "add", "cio", "--name", "CIO", "--category", "job title")
    cli("attribute", "add", "aum_musd", "--type", "float")
    cli("criterion", "add", "big-cio", "--persona", "cio", "--expr", 'job_title = "CIO"')
    cli("criterion", "edit", "big-cio", "--expr", 'job_title = "CIO" and aum_musd > 100')
    shown = cli.json("criterion", "show", "big-cio", "--json")
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    assert shown["versions"][1]["expr"] == 'job_title = "CIO" and aum_musd > 100'
    listed = cli.json("criterion", "list", "--json")
    assert listed["criteria"][0]["version"] == 2
    out = cli.json("tag", "--criterion", "big-cio", "--json")
    assert out["matched"] == 0  # nobody has aum_musd yet: NULL never matches


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tag", "--persona", "nope", "--expr", "seniority > 1"), "unknown persona 'nope'"),
        (("preview", "--expr", 'regoin = "EMEA"'), "did you mean 'region'"),
        (("preview", "--expr", "seniority > 1", "--as-of", "yesterday"), "invalid --as-of"),
        (("contact", "show", "zzz"), "unknown contact 'zzz'"),
        (("contact", "search", "x", "--limit", "0"), "limit: between 1 and 100"),
        (("pin", "x", "c0001"), "exactly one of --in or --out"),
        (("preview", "--expr", "last_login_at within 9d", "--as-of", "0001-01-01"), "out of range"),
        (("preview", "--expr", "seniority > 1", "--sample", "-1"), "'--sample'"),
        (("tag", "--persona"), "--persona"),
    ],
)
def test_errors_are_one_line(cli: CLI, args: tuple[str, ...], message: str) -> None:
    proc = cli(*args, ok=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_setting_fails_fast(cli: CLI) -> None:
    cli.env["PERSONATAG_STOER_URL"] = "x"
    proc = cli("persona", "list", ok=False)
    assert proc.returncode == 1
    assert "unknown setting PERSONATAG_STOER_URL" in proc.stderr


def test_failed_request_still_prints_json(cli: CLI, store_url: str) -> None:
    from sqlalchemy import text

    cli("persona", "add", "emea", "--name", "EMEA", "--category", "region")
    store = open_store(store_url)
    with store.write() as conn:
        conn.execute(text("ALTER TABLE membership_log RENAME TO membership_log_gone"))
    store.dispose()
    proc = cli("tag", "--persona", "emea", "--expr", 'region = "EMEA"', "--json", ok=False)
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["status"] == "failed" and out["request_id"].startswith("req-")
    assert out["request_id"] in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("preview", "--expr", "(" * 3000 + 'region = "x"' + ")" * 3000), "line 1, col 21: "),
        (("preview", "--expr", "seniority > " + "9" * 4301), "line 1, col 13: number 99"),
        (
            ("preview", "--expr", 'created_at > date("0001-01-01T00:00:00+14:00")'),
            "line 1, col 19: invalid date",
        ),
        # bytes that are not UTF-8 reach Python's argv as lone surrogates
        (("preview", "--expr", 'region = "\udced\udca0\udc80"'), "line 1, col 11: invalid char"),
        (
            ("preview", "--expr", " or ".join(f'id = "{i % 10}"' for i in range(1600))),
            "line 1, col 6001: the criterion has more than 500 conditions",
        ),
        (("contact", "set", "c0001", "region=\udced"), "field 'region': invalid character"),
        (("contact", "set", "c\udced", "region=x", "--create"), "contact id: invalid character"),
    ],
)
def test_bad_input_is_one_line_with_its_position(
    cli: CLI, args: tuple[str, ...], says: str
) -> None:
    """Issue 17 item 11: the CLI printed `unexpected RecursionError`, `OverflowError`,
    `ValueError ... set_int_max_str_digits` and `UnicodeEncodeError` without a
    position; each is now one line saying what and where."""
    proc = cli(*args, ok=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: {says}"), proc.stderr
    assert proc.stderr.count("\n") == 1 and "unexpected" not in proc.stderr


def test_requests_list_filters_and_says_where_each_came_from(cli: CLI) -> None:
    cli("init")
    cli("persona", "add", "emea", "--name", "EMEA readers", "--category", "region")
    cli("tag", "--persona", "emea", "--expr", 'region = "EMEA"', "--request-id", "r-1")
    cli(
        "untag",
        "--persona",
        "emea",
        "--expr",
        'region = "EMEA"',
        "--request-id",
        "r-2",
        "--dry-run",
    )
    listed = cli.json("requests", "list", "--json")
    assert listed["total"] == 2
    assert [
        (x["request_id"], x["request"]["source"], x["request"]["submitted_by"])
        for x in listed["requests"]
    ] == [
        ("r-2", "cli", "tester"),
        ("r-1", "cli", "tester"),
    ]
    assert [
        x["request_id"] for x in cli.json("requests", "list", "--dry-run", "--json")["requests"]
    ] == ["r-2"]
    only = cli.json("requests", "list", "--action", "tag", "--who", "tester", "--json")
    assert [x["request_id"] for x in only["requests"]] == ["r-1"]
    assert cli.json("requests", "list", "--source", "workbench", "--json")["requests"] == []
    text = cli("requests", "list", "--limit", "1").stdout
    assert "r-2" in text and "by tester via cli" in text and "1-1 of 2 requests" in text
    bad = cli("requests", "list", "--source", "fax", ok=False)
    assert bad.returncode == 1 and "unknown source 'fax'" in bad.stderr
