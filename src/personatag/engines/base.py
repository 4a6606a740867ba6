"""The engine interfaces: a batch engine says which contacts a request matches;
a stream engine keeps ongoing criteria true as the change feed moves.

A batch engine computes outside any store transaction (a remote engine may take
minutes; holding SQLite's write lock meanwhile would stall everyone), then
hands the applier a condition over the contacts table that is valid inside the
applier's transaction.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import ColumnElement, Connection

from personatag.config import Settings, load_settings
from personatag.criteria import compile_sql
from personatag.domain import Catalog
from personatag.engines.control import JobControl
from personatag.errors import PersonatagError
from personatag.service import Service
from personatag.store import Store

if TYPE_CHECKING:  # prometheus_client costs a CLI command ~0.1 s that records nothing
    from personatag.metrics import Metrics


@dataclass(frozen=True)
class MatchSpec:
    """What to match: a checked criterion AST, evaluated at `as_of`.

    `job_pk` is the job the match is for (engines that run work elsewhere
    record their reference on it); `control` its JobControl (deadline,
    cancel), for engines that must stop remote work themselves; `progress`
    a callable(done, total, unit) for counts the engine can tell while it
    works (how many of a remote job's tasks finished), to call as often as
    it likes.
    """

    ast: Any
    as_of: datetime
    catalog: Catalog
    persona_pks: Mapping[str, int]
    job_pk: int | None = None
    control: JobControl | None = None
    progress: Callable[[int | None, int | None, str | None], None] | None = None

    def sql_condition(self, store: Store) -> ColumnElement[bool]:
        """The criterion as `store`'s own SQL (criteria.compile_sql) at `as_of`:
        what the local engine evaluates."""
        return compile_sql(
            self.ast,
            tables=store.tables,
            catalog=self.catalog,
            persona_pks=self.persona_pks,
            as_of=self.as_of,
            dialect=store.dialect,
        )


class EngineUnavailable(PersonatagError):
    """The engine cannot answer now (its own data cannot be read or written),
    but `fallback` can give the same answer: callers run that engine instead
    and say why (tagging.fallback). The message says what is wrong and what to
    do about it."""

    fallback: ClassVar[str] = "local"


class Match(ABC):
    """An engine's answer, turned into SQL inside the applier's transaction."""

    #: True when condition() means the same on any connection (no temp tables).
    portable: ClassVar[bool] = False
    #: True when condition() already reads a computed set of pks (no need to
    #: evaluate it once into a temp table before applying).
    materialized: ClassVar[bool] = False

    @abstractmethod
    def condition(self, conn: Connection, store: Store) -> ColumnElement[bool]:
        """A boolean over store.tables.contacts, TRUE exactly for matched contacts."""

    def known_pks(self) -> Any:
        """The sorted pks condition() selects, when the engine has them (else None)."""
        return None

    def close(self, conn: Connection) -> None:  # noqa: B027 - optional hook
        """Release anything condition() created (temp tables, staged files)."""


class BatchEngine(ABC):
    """Computes the match of one ad hoc request (see the module doc)."""

    name: ClassVar[str]

    def __init__(self, store: Store, settings: Settings | None = None) -> None:
        self.store = store
        self.settings = settings if settings is not None else load_settings()

    @abstractmethod
    def compute(self, spec: MatchSpec) -> Match:
        """Do the engine's work for `spec` (outside store transactions)."""

    def warm(self) -> None:
        """Prepare what the first answer needs (a server calls it at start-up,
        on a thread of its own); answers given meanwhile stay exact. Nothing to
        do by default."""
        return None


# The batch engine's name before stream engines had a base of their own.
Engine = BatchEngine


class StreamEngine(Service, ABC):
    """Keeps ongoing criteria true as the change feed moves: a service whose
    round (`cycle`) steps the feed.

    The registry builds one as `cls(store, settings, metrics)` (settings None:
    from the environment; metrics None: the process's); the process starts it
    as a service (`start`/`stop`), or calls `run` on a thread of its own.
    """

    @abstractmethod
    def __init__(
        self, store: Store, settings: Settings | None = None, metrics: Metrics | None = None
    ) -> None:
        """Take the store and what the engine works with (the constructor the
        registry calls)."""

    @abstractmethod
    def cycle(self) -> float:
        """One step of the change feed; returns the seconds to wait before the
        next (failures are retried by the service loop with its backoff)."""

    def run(self, stop: threading.Event) -> None:
        """Follow the change feed until `stop` is set."""
        self.loop(stop)

    def close(self) -> None:
        """Release what the engine started outside this process (a Flink job)."""
