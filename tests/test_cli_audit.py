"""Every CLI command that changes a definition leaves an audit event naming its actor.

Personas, criteria (each version, pause, resume, retire), attributes, pins, feed
rules, users and roles, tokens and webhooks: run as a person would (a real
process, a real store), then read the audit log back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from personatag.audit_log import list_events
from personatag.store import open_store
from tests.helpers import add_contacts, population

# (command, the audit action it must leave)
DEFINITION_COMMANDS: list[tuple[tuple[str, ...], str]] = [
    (("attribute", "add", "tier", "--type", "string"), "attribute.add"),
    (("persona", "add", "emea", "--name", "EMEA readers", "--category", "region"), "persona.add"),
    (
        ("criterion", "add", "adhoc-emea", "--persona", "emea", "--expr", 'region = "EMEA"'),
        "criterion.add",
    ),
    (
        (
            "criterion",
            "add",
            "live-emea",
            "--persona",
            "emea",
            "--mode",
            "ongoing",
            "--expr",
            'region = "EMEA"',
        ),
        "criterion.add",
    ),
    (("criterion", "edit", "live-emea", "--expr", 'region = "APAC"'), "criterion.edit"),
    (("criterion", "pause", "live-emea"), "criterion.pause"),
    (("criterion", "resume", "live-emea"), "criterion.resume"),
    (("criterion", "retire", "live-emea"), "criterion.retire"),
    (("pin", "emea", "c0001", "--in", "--reason", "asked"), "pin"),
    (("unpin", "emea", "c0001"), "unpin"),
    (("feed-rule", "add", "emea", "--cap-per-series", "2"), "feed_rule.add"),
    (("feed-rule", "remove", "1"), "feed_rule.remove"),
    (("user", "add", "erin", "--role", "editor"), "user.create"),
    (("user", "role", "erin", "viewer"), "user.role"),
    (("user", "password", "erin"), "user.password"),
    (("user", "disable", "erin"), "user.disable"),
    (("user", "enable", "erin"), "user.enable"),
    (("token", "create", "erin", "--name", "ci"), "token.create"),
    (("token", "revoke", "1"), "token.revoke"),
    (("webhook", "add", "http://127.0.0.1:9/hook"), "webhook.create"),
    (("webhook", "disable", "1"), "webhook.disable"),
    (("webhook", "enable", "1"), "webhook.enable"),
    (("webhook", "remove", "1"), "webhook.remove"),
]


def _run(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "personatag.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, f"{args}: {proc.stderr}"


def _env(store_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")}
    return base | {"PERSONATAG_STORE_URL": store_url, "PERSONATAG_DATA_DIR": str(data_dir)} | extra


def test_every_definition_change_names_its_actor(store_url: str, tmp_path: Path) -> None:
    store = open_store(store_url)
    add_contacts(store, population(40))
    env = _env(store_url, tmp_path, PERSONATAG_ACTOR="carol")
    _run(env, "init")
    for args, _ in DEFINITION_COMMANDS:
        _run(env, *args)
    events = list(reversed(list_events(store, limit=1000)))
    store.dispose()
    ours = [e for e in events if e["source"] == "cli"]
    assert [e["action"] for e in ours] == [action for _, action in DEFINITION_COMMANDS]
    assert {e["actor"] for e in ours} == {"carol"}
    # The stream's swap (if any ran) is named too: nothing in the log is anonymous
    # except refused logins.
    assert all(e["actor"] for e in events), json.dumps(events, default=str)


def test_without_a_configured_actor_the_os_user_is_recorded(store_url: str, tmp_path: Path) -> None:
    env = _env(store_url, tmp_path, USER="osuser")
    _run(env, "init")
    _run(env, "persona", "add", "emea", "--name", "EMEA", "--category", "region")
    store = open_store(store_url)
    (event,) = list_events(store, action="persona.add")
    store.dispose()
    assert (event["actor"], event["source"], event["target"]) == ("osuser", "cli", "emea")
