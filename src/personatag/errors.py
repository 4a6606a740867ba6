"""Errors meant for people: each names what was wrong, where, and what to do."""

from __future__ import annotations


class PersonatagError(Exception):
    """A failure the user can act on; the CLI prints it as one line, no traceback."""


class ConfigError(PersonatagError):
    """A setting is unknown or invalid."""


class NotFoundError(PersonatagError):
    """A named thing (persona, criterion, contact, ...) does not exist."""


class ConflictError(PersonatagError):
    """The request contradicts what is stored (duplicate key, archived persona, ...)."""


class InputError(PersonatagError):
    """User input (a file, an option, an expression) is malformed."""


class RemoteError(PersonatagError):
    """The personatag server could not be reached, refused the token, or failed."""
