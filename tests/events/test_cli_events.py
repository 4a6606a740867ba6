"""`personatag webhook ...` and `personatag export-log` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personatag.store import open_store
from tests.events.receiver import Receiver
from tests.helpers import add_contacts, population
from tests.test_cli import CLI


@pytest.fixture
def cli(store_url: str, tmp_path: Path) -> CLI:
    store = open_store(store_url)
    add_contacts(store, population(40))
    store.dispose()
    c = CLI(store_url, tmp_path)
    c.env |= {"PERSONATAG_WEBHOOK_MAX_ATTEMPTS": "1", "PERSONATAG_WEBHOOK_BATCH": "100"}
    c("persona", "add", "emea", "--name", "EMEA", "--category", "region")
    c("persona", "add", "cio", "--name", "CIO", "--category", "job title")
    return c


def test_webhook_lifecycle(cli: CLI, rx: Receiver) -> None:
    added = cli.json("webhook", "add", rx.url, "--persona", "emea", "--json")
    rx.secret = added["secret"]
    assert added["personas"] == ["emea"] and added["enabled"] and added["cursor_seq"] == 0
    text = cli("webhook", "add", rx.url + "/2", "--from-start")
    assert "secret (shown once): " in text.stdout
    listed = cli.json("webhook", "list", "--json")["webhooks"]
    assert [h["id"] for h in listed] == [added["id"], added["id"] + 1]
    assert all("secret" not in h for h in listed)
    cli("webhook", "remove", str(added["id"] + 1))
    cli("tag", "--persona", "emea", "--expr", 'region = "EMEA"')
    cli("tag", "--persona", "cio", "--expr", 'job_title = "CIO"')
    # A refusing receiver: with one attempt allowed the batch is dead-lettered.
    rx.always_fail = True
    counts = cli.json("webhook", "deliver", "--json")
    assert counts == {"delivered": 0, "failed": 0, "dead_lettered": 1, "events": 0}
    [letter] = cli.json("webhook", "dead-letters", str(added["id"]), "--json")["dead_letters"]
    assert letter["events"] == 10 and letter["redelivered_at"] is None
    failed = cli("webhook", "redeliver", str(letter["id"]), ok=False)
    assert failed.returncode == 1
    assert (
        failed.stderr.startswith("error: redelivery of dead letter") and "HTTP 500" in failed.stderr
    )
    rx.always_fail = False
    cli("webhook", "redeliver", str(letter["id"]))
    assert [e["contact_id"] for e in rx.events()] == [f"c{i:04d}" for i in range(0, 40, 4)]
    assert "redelivered" in cli("webhook", "dead-letters").stdout
    cli("webhook", "disable", str(added["id"]))
    assert cli.json("webhook", "list", "--json")["webhooks"][0]["enabled"] is False
    cli("webhook", "enable", str(added["id"]))
    assert "0 batches delivered" in cli("webhook", "deliver").stdout
    audit = cli.json("audit", "--action", "webhook.*", "--json")["events"]
    assert [e["action"] for e in reversed(audit)] == [
        "webhook.create",
        "webhook.create",
        "webhook.remove",
        "webhook.redeliver",
        "webhook.redeliver",
        "webhook.disable",
        "webhook.enable",
    ]
    assert {e["actor"] for e in audit} == {"tester"}


def test_export_log(cli: CLI, tmp_path: Path) -> None:
    cli("tag", "--persona", "emea", "--expr", 'region = "EMEA"')
    cli("tag", "--persona", "cio", "--expr", 'job_title = "CIO"')
    out = cli("export-log")
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 18 and out.stdout.endswith("}\n")
    assert (
        out.stderr.strip()
        == f"18 events from 18 log entries; resume with --since {lines[-1]['seq']}"
    )
    first = cli("export-log", "--limit", "5")
    assert first.stdout.splitlines() == out.stdout.splitlines()[:5]
    assert "resume with --since 5" in first.stderr
    rest = cli("export-log", "--since", "5", "--until", "12", "--persona", "emea")
    assert [json.loads(x)["seq"] for x in rest.stdout.splitlines()] == [6, 7, 8, 9, 10]
    target = tmp_path / "log.jsonl"
    cli("export-log", "--persona", "cio", "--out", str(target))
    assert [json.loads(x) for x in target.read_text().splitlines()] == lines[10:]


def test_errors_are_one_line(cli: CLI) -> None:
    for args, message in [
        (("webhook", "add", "ftp://x.example/h"), "error: invalid webhook URL"),
        (("webhook", "add", "https://x.example/h", "--persona", "ghost"), "unknown persona"),
        (("webhook", "remove", "42"), "error: unknown webhook 42"),
        (("webhook", "redeliver", "42"), "error: unknown dead letter 42"),
        (("export-log", "--persona", "ghost"), "error: unknown persona 'ghost'"),
    ]:
        proc = cli(*args, ok=False)
        assert proc.returncode == 1, args
        assert message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
