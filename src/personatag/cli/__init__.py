"""The personatag command line: one module per command group, joined in root.py.

`personatag.cli.app` and `personatag.cli.main` are looked up lazily so that
importing a command module (which runs this file first) does not import the
root app and, through it, every other command module."""

from __future__ import annotations

from typing import Any

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from personatag.cli import root

        return getattr(root, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
