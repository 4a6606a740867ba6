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


def test_the_root_names_each_command_with_the_module_that_defines_it() -> None:
    """root.build_app(command) imports only the module root.TOP_LEVEL / GROUPS
    name for `command`: those names must be what the modules define."""
    import importlib

    from typer.main import get_command

    from personatag.cli import root

    for module, names in root.TOP_LEVEL.items():
        app = importlib.import_module(f"personatag.cli.{module}").app
        defined = tuple(sorted(get_command(app).commands)) if len(names) > 1 else names
        assert tuple(sorted(names)) == tuple(sorted(defined)), module
    whole = get_command(root.app).commands  # type: ignore[attr-defined]
    for command, full in whole.items():
        one = get_command(root.build_app(command)).commands  # type: ignore[attr-defined]
        assert command in one
        assert one[command].help == full.help
        assert [p.name for p in one[command].params] == [p.name for p in full.params]


def test_running_a_command_imports_only_its_module() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from personatag.cli import root\n"
        "root.build_app('preview')\n"
        "print(sorted(m for m in sys.modules if m.startswith('personatag.cli.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = eval(out.stdout)  # noqa: S307 - a list of module names printed just above
    # tagging and the helpers it shares (common, client): no other command module.
    assert set(loaded) - {"personatag.cli.client"} == {
        "personatag.cli.common", "personatag.cli.root", "personatag.cli.tagging"
    }  # fmt: skip
