"""`personatag persona edit` and `persona restore` on both stores: the same
domain calls and audit events as the API's."""

from __future__ import annotations

from personatag.audit_log import list_events
from personatag.store import open_store
from tests.test_cli import CLI, cli

__all__ = ["cli"]


def test_edit_and_restore(cli: CLI, store_url: str) -> None:
    cli("persona", "add", "emea", "--name", "EMEA", "--category", "region", "--description", "x")
    edited = cli("persona", "edit", "emea", "--name", "EMEA readers")
    assert edited.stdout == "persona emea edited\n"
    cli("persona", "edit", "emea", "--description", "")
    shown = cli.json("persona", "show", "emea", "--json")
    assert (shown["name"], shown["category"], shown["description"]) == (
        "EMEA readers",
        "region",
        None,
    )
    proc = cli("persona", "edit", "emea", ok=False)
    assert proc.returncode != 0 and "--name, --category, --description" in proc.stderr
    proc = cli("persona", "edit", "nope", "--name", "X", ok=False)
    assert "unknown persona 'nope'" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("persona", "restore", "emea", ok=False)
    assert "not archived" in proc.stderr and "Traceback" not in proc.stderr
    cli("persona", "archive", "emea")
    assert cli("persona", "restore", "emea").stdout == "persona emea restored\n"
    assert cli.json("persona", "show", "emea", "--json")["archived_at"] is None
    store = open_store(store_url)
    try:
        events = list_events(store, target="emea")
    finally:
        store.dispose()
    assert [e["action"] for e in events] == [
        "persona.restore", "persona.edit", "persona.edit", "persona.add"
    ]  # fmt: skip
    assert all(e["actor"] == "tester" and e["source"] == "cli" for e in events)
