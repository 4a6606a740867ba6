"""The engine interface: given a request, say which contacts match.

An engine computes outside any store transaction (a remote engine may take
minutes; holding SQLite's write lock meanwhile would stall everyone), then
hands the applier a condition over the contacts table that is valid inside the
applier's transaction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import ColumnElement, Connection

from personatag.domain import Catalog
from personatag.store import Store


@dataclass(frozen=True)
class MatchSpec:
    """What to match: a checked criterion AST, evaluated at `as_of`."""

    ast: Any
    as_of: datetime
    catalog: Catalog
    persona_pks: Mapping[str, int]


class Match(ABC):
    """An engine's answer, turned into SQL inside the applier's transaction."""

    #: True when condition() means the same on any connection (no temp tables).
    portable: ClassVar[bool] = False

    @abstractmethod
    def condition(self, conn: Connection, store: Store) -> ColumnElement[bool]:
        """A boolean over store.tables.contacts, TRUE exactly for matched contacts."""

    def close(self, conn: Connection) -> None:  # noqa: B027 - optional hook
        """Release anything condition() created (temp tables, staged files)."""


class Engine(ABC):
    name: ClassVar[str]

    def __init__(self, store: Store) -> None:
        self.store = store

    @abstractmethod
    def compute(self, spec: MatchSpec) -> Match:
        """Do the engine's work for `spec` (outside store transactions)."""
