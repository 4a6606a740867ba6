"""The CLI's imports go one way: root.py joins the command modules, which share
cli/common.py (and cli/client.py) but never import the root or each other."""

from __future__ import annotations

import ast
from pathlib import Path

import personatag.cli

CLI = Path(personatag.cli.__file__).parent
ROOT_ONLY = {"__init__.py", "__main__.py", "root.py"}
# What each module of the package may import from the package itself.
SHARED = {"personatag.cli.common", "personatag.cli.client"}


def _cli_imports(path: Path) -> set[str]:
    """Modules of personatag.cli that `path` imports, at the top or in functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "personatag.cli":
                found |= {f"personatag.cli.{a.name}" for a in node.names}
            else:
                found.add(node.module)
    return {m for m in found if m == "personatag.cli" or m.startswith("personatag.cli.")}


def test_command_modules_import_only_the_shared_helpers() -> None:
    modules = sorted(p for p in CLI.glob("*.py") if p.name not in ROOT_ONLY)
    assert len(modules) > 10
    wrong = {
        p.name: sorted(bad)
        for p in modules
        if (bad := _cli_imports(p) - SHARED - {f"personatag.cli.{p.stem}"})
    }
    assert not wrong, f"command modules importing beyond common/client: {wrong}"
    assert _cli_imports(CLI / "common.py") == set()
    assert _cli_imports(CLI / "client.py") == {"personatag.cli.common"}


def test_no_imports_after_the_app_is_built() -> None:
    late = [p.name for p in CLI.glob("*.py") if "noqa: E402" in p.read_text()]
    assert not late
