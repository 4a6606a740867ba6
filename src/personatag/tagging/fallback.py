"""The one place an engine that cannot answer now hands the work to another.

An engine raises EngineUnavailable when its own data cannot be used (the
columnar copy in a folder that is not writable, on a full disk) although the
store is fine; its `fallback` engine (local: SQL in the store) gives the same
answer. The caller learns which engine ran and why, to record it with the job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from personatag.engines.base import EngineUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Ran(Generic[T]):
    """What `on(engine)` gave, the engine that gave it, and (when that is not
    the engine asked for) the warning saying why."""

    answer: T
    engine: str
    warning: str | None = None


def run_on(engine: str, on: Callable[[str], T], *, what: str) -> Ran[T]:
    """on(engine); when that engine is unavailable, on(its fallback), logged as
    a warning that names `what` ran elsewhere and why."""
    try:
        return Ran(on(engine), engine)
    except EngineUnavailable as exc:
        warning = f"{what} ran on the {exc.fallback} engine: {exc}"
        log.warning(warning)
        return Ran(on(exc.fallback), exc.fallback, warning)
