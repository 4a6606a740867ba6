"""The embedded engine: the criterion becomes SQL that runs inside the store."""

from __future__ import annotations

from sqlalchemy import ColumnElement, Connection

from personatag.engines.base import BatchEngine, Match, MatchSpec
from personatag.store import Store


class _SqlMatch(Match):
    portable = True

    def __init__(self, spec: MatchSpec) -> None:
        self.spec = spec

    def condition(self, conn: Connection, store: Store) -> ColumnElement[bool]:
        return self.spec.sql_condition(store)


class LocalEngine(BatchEngine):
    name = "local"

    def compute(self, spec: MatchSpec) -> Match:
        # Nothing to do ahead: the store evaluates the criterion set-based when
        # the applier runs, inside its transaction.
        return _SqlMatch(spec)
