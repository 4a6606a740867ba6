"""The columnar engine: a criterion evaluated by numpy over the columnar copy.

compute() brings the copy up to date with every committed change (copy.py),
evaluates the compiled criterion into a mask over its contact rows and hands
the applier the matched pks, sorted (`PksMatch`). Persona sets come from the
membership log as bitmaps (sets.py), caught up only when the criterion reads
`persona(...)`.

When the copy can be neither read nor rebuilt (its folder is not writable,
the disk is full) `with_frame` raises CopyUnavailable, saying why: the caller
runs the local engine instead (tagging.fallback). Damaged files are rebuilt
first, without asking anyone.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection

from personatag.config import Settings
from personatag.domain import Catalog
from personatag.engines.base import BatchEngine, EngineUnavailable, Match, MatchSpec
from personatag.engines.columnar.compile import compile_columnar
from personatag.engines.columnar.compile_events import pks_to_mask
from personatag.engines.columnar.copy import DAMAGED, CopyOutdated, folder_of, open_frame, rebuild
from personatag.engines.columnar.folders import tidy_old_layout
from personatag.engines.columnar.frame import Array, Frame
from personatag.engines.columnar.segment import DamagedFile
from personatag.engines.columnar.sets import EMPTY, PersonaSets, Position, current_sets
from personatag.engines.pks import PksMatch
from personatag.errors import NotFoundError
from personatag.store import Store, changefeed

log = logging.getLogger(__name__)

T = TypeVar("T")

# One catch-up of a copy at a time in a process (the API previews on threads):
# a second caller then finds it caught up.
_CATCH_UP = threading.Lock()


class _Personas:
    """Frame.personas over the persona sets, refreshed on first use: a key no
    persona has is held by nobody (the criterion's check already named it).

    Every set handed out must come from one position in the log (another
    thread may refresh the shared sets meanwhile): `exact_in` says whether
    they did, and whether that position is what a transaction sees."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._sets: PersonaSets | None = None
        self._position: Position | None = None
        self._moved = False

    def __call__(self, key: str) -> Any:
        if self._sets is None:
            self._sets = current_sets(self.store, self.settings.data_dir)
        try:
            found, position = self._sets.get_at(key)
        except NotFoundError:
            return EMPTY
        if self._position is None:
            self._position = position
        elif position != self._position:
            self._moved = True
        return found

    def exact_in(self, conn: Connection) -> bool:
        """Whether every set handed out reflects the log as `conn` sees it."""
        if self._sets is None or self._position is None:
            return True
        return not self._moved and self._sets.covers(conn, self._position)


def exact_in(frame: Frame, store: Store, conn: Connection) -> bool:
    """Whether `frame` (its contacts, events and the persona sets it handed
    out) is the store as `conn`'s transaction sees it: read what else an
    answer needs in that transaction, and the answer is of one moment."""
    if changefeed.head(conn, store) != frame.offset:
        return False
    return not isinstance(frame.personas, _Personas) or frame.personas.exact_in(conn)


class CopyUnavailable(EngineUnavailable):
    """The columnar copy can be neither read nor rebuilt; the message says why
    and what to do. The local engine gives the same answer from the store."""


def _unavailable(folder: Path, exc: BaseException) -> CopyUnavailable:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        why = f"{folder} cannot be written: no space ({exc.strerror or exc})"
        fix = "free disk space there (the copy needs about the store's size)"
    elif isinstance(exc, OSError):
        why = f"{folder} cannot be written ({exc.strerror or exc})"
        fix = f"make {folder} a folder this user may write, or set PERSONATAG_DATA_DIR elsewhere"
    else:
        why = f"{folder} cannot be read after a rebuild ({type(exc).__name__}: {exc})"
        fix = f"delete {folder} (it is rebuilt on the next preview)"
    return CopyUnavailable(f"the columnar copy cannot be used: {why} — {fix}")


def current_frame(store: Store, settings: Settings) -> Frame:
    """The columnar copy of `store`, up to date with every committed change,
    with its persona sets (read on first use). CopyUnavailable when it can be
    neither read nor rebuilt."""
    folder = folder_of(settings, store)
    try:
        if not folder.exists():
            tidy_old_layout(settings.data_dir)
            folder.mkdir(parents=True, exist_ok=True)
        with _CATCH_UP:
            frame = open_frame(store, settings)
    except (OSError, CopyOutdated, *DAMAGED) as exc:
        raise _unavailable(folder, exc) from exc
    return replace(frame, personas=_Personas(store, settings))


def with_frame(store: Store, settings: Settings, use: Callable[[Frame], T]) -> T:
    """use(the current frame). Columns are read lazily, as `use` evaluates: a
    column file found damaged then (truncated, missing) rebuilds the copy and
    `use` runs again on it. CopyUnavailable when that cannot be done."""
    frame = current_frame(store, settings)
    try:
        return use(frame)
    except (FileNotFoundError, DamagedFile) as exc:
        folder = folder_of(settings, store).resolve()
        log.warning("columnar copy at %s cannot be read (%r); rebuilding it", folder, exc)
        try:
            with _CATCH_UP:
                fresh = rebuild(store, folder)
            return use(replace(fresh, personas=_Personas(store, settings)))
        except (OSError, CopyOutdated, DamagedFile, *DAMAGED) as again:
            raise _unavailable(folder, again) from again


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
        def match(frame: Frame) -> Array:
            return frame.rows_to_pks(matched_rows(frame, spec.ast, spec.catalog, spec.as_of))

        return PksMatch(with_frame(self.store, self.settings, match), presorted=True)
