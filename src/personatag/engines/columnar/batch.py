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
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Connection

from personatag.config import Settings
from personatag.criteria import references
from personatag.domain import Catalog
from personatag.engines.base import BatchEngine, EngineUnavailable, Match, MatchSpec
from personatag.engines.columnar.compile import compile_columnar
from personatag.engines.columnar.compile_events import pks_to_mask
from personatag.engines.columnar.copy import (
    DAMAGED,
    FORMAT,
    CopyOutdated,
    folder_of,
    open_frame,
    read_manifest,
    rebuild,
)
from personatag.engines.columnar.folders import tidy_old_layout
from personatag.engines.columnar.frame import ODD, Array, Frame, Table
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
# Set (to its start, time.monotonic()) while a server builds the copy in the
# background (`warm`): previews and jobs meanwhile run on the local engine
# instead of waiting minutes for the build.
_BUILDING: dict[Path, float] = {}


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
    started = _BUILDING.get(folder.resolve())
    if started is not None:
        raise CopyUnavailable(
            f"the columnar copy is being built ({time.monotonic() - started:.0f} s so far; "
            "started with the server): the local engine answers until it is ready"
        )
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


class OddValues(EngineUnavailable):
    """Contacts hold, in a field the criterion reads, a value that is not of
    the field's type (frame.ODD): the copy holds it converted, the store
    answers exactly."""


def _marks(table: Table) -> dict[str, Array]:
    """Field -> the pks (ascending) of the rows of `table` marked ODD in it."""
    col = table.columns.get(ODD)
    if col is None or col.dictionary is None or not len(col.dictionary):
        return {}
    codes = np.asarray(col.values)
    present = np.flatnonzero(codes >= 0)
    if not len(present):
        return {}
    words = np.asarray(col.dictionary, dtype=object)
    pk = np.asarray(table.pk)
    parts: dict[str, list[Array]] = {}
    for code in np.unique(codes[present]).tolist():
        rows = present[codes[present] == code]
        for name in str(words[code]).split(",")[:-1]:
            parts.setdefault(name, []).append(pk[rows])
    return {name: np.sort(np.concatenate(got)) for name, got in parts.items()}


def odd_fields(frame: Frame) -> dict[str, Array]:
    """Contact field -> the pks (ascending) of the contacts whose stored value
    of it is not of its type; worked out once per frame."""
    return dict(_odd(frame)[0])


def _odd(frame: Frame) -> tuple[dict[str, Array], dict[str, Array]]:
    """(odd_fields, the same of publications), memoised in the frame."""
    memo = frame.extra.get(ODD) if isinstance(frame.extra, dict) else None
    if memo is None:
        memo = (_marks(frame.contacts), _marks(frame.publications))
        if isinstance(frame.extra, dict):
            frame.extra[ODD] = memo
    return memo


def _said(what: str, odd: dict[str, Array], read: list[str], kinds: Any) -> list[str]:
    said = []
    for name in read:
        pks = odd[name]
        kind = kinds.get(name)
        field = f"{name} ({kind.value.upper()})" if kind is not None else name
        shown = ", ".join(str(p) for p in pks[:3].tolist()) + (", ..." if len(pks) > 3 else "")
        said.append(f"{field}: {len(pks)} {what}(s), pk {shown}")
    return said


def check_exact(frame: Frame, node: Any, catalog: Catalog) -> None:
    """OddValues when a field `node` reads holds odd values in the copy."""
    contacts, pubs = _odd(frame)
    if not contacts and not pubs:
        return
    refs = references(node)
    read = sorted(refs.contact_fields & contacts.keys())
    read_pubs = sorted(refs.publication_fields & pubs.keys())
    if not read and not read_pubs:
        return
    said = _said("contact", contacts, read, catalog.contact_fields)
    said += _said("publication", pubs, read_pubs, catalog.publication_fields)
    raise OddValues(
        "stored values that are not of their field's type (or text that is not UTF-8), "
        "written outside personatag, "
        f"are in {'; '.join(said)}; the store answers criteria reading "
        f"{'this field' if len(said) == 1 else 'these fields'} until they are corrected "
        "through personatag (`personatag contact set`, or an import of contacts or publications)"
    )


def matched_rows(frame: Frame, ast: Any, catalog: Catalog, as_of: Any) -> Array:
    """The bool mask of the frame's contact rows where `ast` is TRUE at `as_of`
    (OddValues when the copy cannot answer it exactly)."""
    check_exact(frame, ast, catalog)
    return compile_columnar(ast, catalog)(frame, as_of)


def row_mask(frame: Frame, pks: Any) -> Array:
    """The bool mask of the frame's contact rows whose pks are in `pks` (a
    BitMap, or a sorted array)."""
    return pks_to_mask(frame, pks)


def needs_build(store: Store, settings: Settings) -> bool:
    """Whether the next answer would build the copy from scratch (none yet,
    or one of another format): not a catch-up, which takes a moment."""
    manifest = read_manifest(folder_of(settings, store))
    return not isinstance(manifest, dict) or manifest.get("format") != FORMAT


def _build_child(url: str, settings: Settings) -> None:
    from personatag.store import open_store

    store = open_store(url)
    try:
        current_frame(store, settings)
    finally:
        store.dispose()


def warm(store: Store, settings: Settings) -> None:
    """Build the copy in a process of its own when there is none yet (a
    server's start-up), so the server's memory stays its own and its first
    previews need not wait: they run on the local engine until the copy is
    saved (current_frame's CopyUnavailable). A copy that only needs a catch-up
    is left to the first answer."""
    if not needs_build(store, settings):
        return
    folder = folder_of(settings, store).resolve()
    url = store.engine.url.render_as_string(hide_password=False)
    # Spawned, not forked: the server's threads and connections stay out of it.
    child = mp.get_context("spawn").Process(
        target=_build_child, args=(url, settings), name="columnar-copy-build", daemon=True
    )
    started = time.monotonic()
    log.info("building the columnar copy at %s in the background", folder)
    _BUILDING[folder] = started
    try:
        child.start()
        child.join()
    finally:
        _BUILDING.pop(folder, None)
    took = time.monotonic() - started
    if child.exitcode == 0:
        log.info("columnar copy at %s built in %.1f s", folder, took)
    elif child.exitcode is not None and child.exitcode < 0:  # the server stopping
        log.info("building the columnar copy at %s stopped by signal %d", folder, -child.exitcode)
    else:
        log.warning(
            "building the columnar copy at %s failed (exit code %s after %.1f s): "
            "the first preview builds it again",
            folder,
            child.exitcode,
            took,
        )


class ColumnarEngine(BatchEngine):
    name = "columnar"

    def warm(self) -> None:
        warm(self.store, self.settings)

    def compute(self, spec: MatchSpec) -> Match:
        def match(frame: Frame) -> Array:
            return frame.rows_to_pks(matched_rows(frame, spec.ast, spec.catalog, spec.as_of))

        return PksMatch(with_frame(self.store, self.settings, match), presorted=True)
