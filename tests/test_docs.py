"""Docs that are tested: every command and setting is documented."""

from __future__ import annotations

from pathlib import Path

import typer

from personatag.cli import app
from personatag.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def _commands(group: object, prefix: str) -> list[str]:
    found = []
    for name, cmd in getattr(group, "commands", {}).items():
        path = f"{prefix} {name}"
        sub = _commands(cmd, path)
        found += sub or [path]
    return found


def test_every_cli_command_is_documented() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text()
    commands = _commands(typer.main.get_command(app), "personatag")
    assert len(commands) > 15
    missing = [c for c in commands if f"`{c}" not in doc]
    assert not missing, f"undocumented commands: {missing}"


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = [n for n in Settings.model_fields if f"PERSONATAG_{n.upper()}" not in doc]
    assert not missing, f"undocumented settings: {missing}"


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text()[:1500]
    assert "make demo" in head and "make test" in head
