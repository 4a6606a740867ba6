"""The columnar engine: a criterion evaluated by numpy over the columnar copy.

compute() brings the copy up to date with every committed change (copy.py),
evaluates the compiled criterion into a mask over its contact rows and hands
the applier the matched pks, sorted (`PksMatch`). Persona sets come from the
membership log as bitmaps (sets.py), caught up only when the criterion reads
`persona(...)`.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from personatag.config import Settings
from personatag.domain import Catalog
from personatag.engines.base import BatchEngine, Match, MatchSpec
from personatag.engines.columnar.compile import compile_columnar
from personatag.engines.columnar.compile_events import pks_to_mask
from personatag.engines.columnar.copy import folder_of, open_frame
from personatag.engines.columnar.folders import tidy_old_layout
from personatag.engines.columnar.frame import Array, Frame
from personatag.engines.columnar.sets import EMPTY, PersonaSets, current_sets
from personatag.engines.pks import PksMatch
from personatag.errors import NotFoundError
from personatag.store import Store

# One catch-up of a copy at a time in a process (the API previews on threads):
# a second caller then finds it caught up.
_CATCH_UP = threading.Lock()


class _Personas:
    """Frame.personas over the persona sets, refreshed on first use: a key no
    persona has is held by nobody (the criterion's check already named it)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._sets: PersonaSets | None = None

    def __call__(self, key: str) -> Any:
        if self._sets is None:
            self._sets = current_sets(self.store, self.settings.data_dir)
        try:
            return self._sets.get(key)
        except NotFoundError:
            return EMPTY


def current_frame(store: Store, settings: Settings) -> Frame:
    """The columnar copy of `store`, up to date with every committed change,
    with its persona sets (read on first use)."""
    folder = folder_of(settings, store)
    if not folder.exists():
        tidy_old_layout(settings.data_dir)
        folder.mkdir(parents=True, exist_ok=True)
    with _CATCH_UP:
        frame = open_frame(store, settings)
    return replace(frame, personas=_Personas(store, settings))


def matched_rows(frame: Frame, ast: Any, catalog: Catalog, as_of: Any) -> Array:
    """The bool mask of the frame's contact rows where `ast` is TRUE at `as_of`."""
    return compile_columnar(ast, catalog)(frame, as_of)


def row_mask(frame: Frame, pks: Any) -> Array:
    """The bool mask of the frame's contact rows whose pks are in `pks` (a
    BitMap, or a sorted array)."""
    return pks_to_mask(frame, pks)


class ColumnarEngine(BatchEngine):
    name = "columnar"

    def compute(self, spec: MatchSpec) -> Match:
        frame = current_frame(self.store, self.settings)
        mask = matched_rows(frame, spec.ast, spec.catalog, spec.as_of)
        return PksMatch(frame.rows_to_pks(mask), presorted=True)
