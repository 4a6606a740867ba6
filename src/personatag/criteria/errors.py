"""The one error type of the criteria language."""

from __future__ import annotations

from personatag.errors import InputError


class CriteriaError(InputError):
    """A criterion that cannot be parsed, checked or compiled.

    Errors found in criterion text carry a 1-based `line` and `col`; errors found
    in a JSON document carry a JSON `path` (such as `$.expr.args[1].value`) instead.
    `str(error)` is `line L, col C: message` (or `PATH: message`).
    """

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        col: int | None = None,
        path: str | None = None,
    ) -> None:
        self.message = message
        self.line = line
        self.col = col
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line is not None and self.col is not None:
            return f"line {self.line}, col {self.col}: {self.message}"
        if self.path is not None:
            return f"{self.path}: {self.message}"
        return self.message

    def excerpt(self, text: str) -> str:
        """The message plus the offending line of `text` with a caret under the column."""
        if self.line is None or self.col is None:
            return str(self)
        lines = text.split("\n")
        source = lines[self.line - 1] if self.line <= len(lines) else ""
        return f"{self}\n  {source}\n  {' ' * (self.col - 1)}^"
