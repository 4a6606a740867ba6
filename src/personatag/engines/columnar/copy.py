"""The columnar copy: contacts, publications, reads and logins as arrays under
`<data_dir>/columnar/`, brought up to date from the change feed before each
evaluation (`open_frame`).

On disk: immutable folders of memory-mapped .npy files (segment.py), a base
(written by a build or a compaction; events sorted by time) and at most one
delta (the rows of contacts changed since, re-read from the store), named by
`MANIFEST.json`, which is replaced atomically. Writers (build, persist,
compaction) hold an flock on `lock`; readers take none. The manifest records
the store's identity, the feed seq the files reflect and that feed row's
time, the contact fields and the publications' data version: any mismatch
with the store (another store, a restored backup, a pruned feed, a new
attribute) rebuilds the copy. See docs/architecture.md, "Columnar copy".
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, func, select

from personatag.config import Settings
from personatag.engines.columnar import load
from personatag.engines.columnar.delta import (
    Delta,
    catch_up,
    frame_of,
    marked,
    read_delta,
    write_delta,
)
from personatag.engines.columnar.folders import store_folder
from personatag.engines.columnar.frame import Frame
from personatag.engines.columnar.patch import NotAppendable
from personatag.engines.columnar.segment import read_meta, read_table, write_meta, write_table
from personatag.files import atomic_write, folder_lock
from personatag.store import Store, changefeed, versions
from personatag.store.db import STORE_IDENTITY

log = logging.getLogger(__name__)

# 2: a delta holds per-field patches; reads and logins are written per kind.
# 3: every string dictionary is sorted (a compaction of format 2 could write a
#    dictionary with strings appended out of order, which lookups then missed).
# 4: the contacts carry the ODD column (frame.py).
# 5: so do the publications.
FORMAT = 5
MANIFEST = "MANIFEST.json"
# What a manifest must name; one without them is damaged (rebuilt).
_MANIFEST_KEYS = frozenset(
    {"format", "store", "base", "offset", "offset_at", "fields", "publications_version"}
)
# What reading damaged files raises: a truncated or foreign .npy (ValueError),
# a meta.json that is not JSON or lacks a key.
DAMAGED = (ValueError, KeyError, TypeError, IndexError)
IDENTITY = STORE_IDENTITY  # a data_versions row: a random id per store
# Persist the delta once this many feed rows (or contacts) were caught up
# since the manifest; compact into a new base when the delta holds this share
# of the contacts or of the events.
PERSIST_CHANGES = 2_000
COMPACT_SHARE = 0.05


class CopyOutdated(Exception):
    """The files do not belong to (this state of) the store: rebuild."""


@dataclass(frozen=True)
class Probe:
    identity: int | None
    head: int
    oldest: int  # smallest seq kept (0: feed empty)
    offset_at: int | None  # time (µs) of the feed row at the manifest's offset
    fields: list[list[str]]
    publications_version: int


def folder_of(settings: Settings, store: Store) -> Path:
    """The copy of `store` under the settings' data directory."""
    return store_folder(settings.data_dir, store)


def _fields(store: Store, conn: Connection) -> list[list[str]]:
    return [[name, kind.value] for name, kind in store.catalog(conn).contact_fields.items()]


def _seq_at(conn: Connection, store: Store, seq: int) -> int | None:
    ch = store.tables.changes
    from personatag.store.types import to_micros

    at = conn.scalar(select(ch.c.at).where(ch.c.seq == seq))
    return None if at is None else to_micros(at)


def _probe(conn: Connection, store: Store, offset: int) -> Probe:
    ch = store.tables.changes
    found = versions.current(conn, store.tables, [IDENTITY, "publications"])
    return Probe(
        identity=found[IDENTITY] or None,
        head=changefeed.head(conn, store),
        oldest=int(conn.scalar(select(func.min(ch.c.seq))) or 0),
        offset_at=_seq_at(conn, store, offset) if offset else None,
        fields=_fields(store, conn),
        publications_version=found["publications"],
    )


def store_identity(store: Store) -> int:
    """The store's random identity (kept in data_versions; `migrate` writes it,
    a store migrated before it did gets it here, on first use)."""
    dv = store.tables.data_versions
    with store.read() as conn:
        found = versions.current(conn, store.tables, [IDENTITY])[IDENTITY]
    if found:
        return found
    with store.write() as conn:
        found = versions.current(conn, store.tables, [IDENTITY])[IDENTITY]
        if not found:
            found = secrets.randbelow(2**62) + 1
            conn.execute(dv.insert().values(name=IDENTITY, version=found))
    return found


def check(manifest: Any, probe: Probe) -> None:
    """Raise CopyOutdated when the files cannot be brought up to date from the feed."""
    offset = int(manifest["offset"])
    if manifest.get("format") != FORMAT:
        raise CopyOutdated("the copy's format changed")
    if probe.identity is None or manifest["store"] != probe.identity:
        raise CopyOutdated("the copy belongs to another store")
    if offset > probe.head:
        raise CopyOutdated("the copy is ahead of the store's change feed (a restored store?)")
    if offset and probe.offset_at != manifest["offset_at"]:
        raise CopyOutdated("the feed row the copy reflects differs (a restored store?)")
    if probe.oldest and probe.oldest > offset + 1 and probe.head > offset:
        raise CopyOutdated("the feed was pruned past the copy's offset")
    if manifest["fields"] != probe.fields:
        raise CopyOutdated("the contact fields changed")


@contextlib.contextmanager
def writing(folder: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the copy's write lock (False when `wait` is False and it is taken)."""
    with folder_lock(folder, wait) as mine:
        yield mine


def read_manifest(folder: Path) -> Any | None:
    """The manifest; None when there is none or it is damaged (then rebuilt)."""
    try:
        return parse_manifest((folder / MANIFEST).read_text(), folder)
    except FileNotFoundError:
        return None


def parse_manifest(text: str, folder: Path) -> Any | None:
    """The manifest in `text`; None (logged) when it is not JSON or lacks a key."""
    try:
        manifest = json.loads(text)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or not manifest.keys() >= _MANIFEST_KEYS:
        log.warning("columnar copy: %s is damaged; rebuilding the copy", folder / MANIFEST)
        return None
    return manifest


def _publish(folder: Path, manifest: Any) -> None:
    """Replace the manifest; drop folders neither it nor the previous one names
    (a reader may still be opening those)."""
    previous = read_manifest(folder)
    atomic_write(folder / MANIFEST, json.dumps(manifest))
    keep = {manifest["base"], manifest.get("delta")}
    if previous is not None:
        keep |= {previous["base"], previous.get("delta")}
    for path in folder.iterdir():
        if path.is_dir() and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def _new_folder(folder: Path, prefix: str) -> Path:
    path = folder / f"{prefix}-{secrets.token_hex(6)}"
    path.mkdir()
    return path


@dataclass(frozen=True)
class Reuse:
    """What a compaction can hard-link from the old base instead of writing."""

    path: Path
    meta: Any
    fields: frozenset[str]  # contact fields whose rows are all as in the old base
    pk: bool  # no contact was added
    publications: bool
    events: frozenset[str]  # event kinds with no change


def unchanged(base: Path, delta: Delta) -> Reuse:
    """What of the base at `base` `delta` leaves as it is."""
    meta = read_meta(base)
    names = frozenset(entry[0] for entry in meta["contacts"]["fields"])
    return Reuse(
        path=base,
        meta=meta,
        fields=frozenset() if delta.contacts.n else names - set(delta.patches),
        pk=delta.contacts.n == 0,
        publications=delta.publications is None,
        events=frozenset(k for k in ("reads", "logins") if not len(delta.pks[k])),
    )


def write_base(
    folder: Path, frame: Frame, fields: list[list[str]], reuse: Reuse | None = None
) -> str:
    """Write `frame` (its live events, sorted by time) as a new base folder,
    hard-linking from `reuse` the files a compaction leaves unchanged (the
    folder is removed again when writing fails: a full disk keeps no half
    copy)."""
    path = _new_folder(folder, "base")
    with _removed_on_failure(path):
        _write_base(path, frame, fields, reuse)
    return path.name


@contextlib.contextmanager
def _removed_on_failure(path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def _write_base(path: Path, frame: Frame, fields: list[list[str]], reuse: Reuse | None) -> None:
    from personatag.domain import PUBLICATION_FIELDS, FieldType
    from personatag.engines.columnar.segment import link_files
    from personatag.engines.columnar.spill import write_merged

    kinds = load.with_odd({name: FieldType(kind) for name, kind in fields})
    meta: dict[str, Any] = {}
    if reuse is not None and reuse.pk:
        same = {
            name: entry
            for entry in reuse.meta["contacts"]["fields"]
            if (name := entry[0]) in reuse.fields
        }
        meta["contacts"] = write_table(
            path, "contacts", frame.contacts, kinds, reuse=(reuse.path, same)
        )
    else:
        meta["contacts"] = write_table(path, "contacts", frame.contacts, kinds)
    if reuse is not None and reuse.publications:
        link_files(reuse.path, path, "publications.")
        meta["publications"] = reuse.meta["publications"]
    else:
        meta["publications"] = write_table(
            path, "publications", frame.publications, load.with_odd(PUBLICATION_FIELDS)
        )
    for name, segments in (("reads", frame.reads), ("logins", frame.logins)):
        if reuse is not None and name in reuse.events:
            link_files(reuse.path, path, f"{name}.")
            meta[name] = reuse.meta[name]
            continue
        keys = list(load.EVENT_DTYPES[name])
        views = [_segment_arrays(seg, keys) for seg in segments]
        meta[name] = write_merged(path, name, views, load.EVENT_DTYPES[name])
    write_meta(path, meta)


def _segment_arrays(seg: Any, keys: list[str]) -> tuple[dict[str, Any], Any, bool]:
    """(arrays by key, live mask or None, sorted) of one Events segment."""
    arrays = {"row": seg.row, "at": seg.at, "publication": seg.publication}
    return {k: arrays[k] for k in keys}, seg.live, bool(seg.sorted)


def build(store: Store, folder: Path) -> tuple[Any, Frame]:
    """Build the copy from the store (caller holds the lock); (manifest, frame).

    Table by table: each is read, written and let go before the next, so
    the peak is the contacts or one kind of events, not all of them; events
    are sorted by time through spill files (spill.py), a bucket at a time."""
    from personatag.domain import PUBLICATION_FIELDS, FieldType
    from personatag.engines.columnar.spill import write_sorted

    identity = store_identity(store)
    path = _new_folder(folder, "base")
    meta: dict[str, Any] = {}
    with _removed_on_failure(path), store.read() as conn:
        head = changefeed.head(conn, store)
        fields = _fields(store, conn)
        pubs_version = versions.current(conn, store.tables, ["publications"])["publications"]
        offset_at = _seq_at(conn, store, head) if head else None
        kinds = {name: FieldType(kind) for name, kind in fields}
        meta["contacts"], contact_pk = load.write_contacts(conn, store, load.with_odd(kinds), path)
        pubs = load.publications(conn, store)
        pub_kinds = load.with_odd(PUBLICATION_FIELDS)
        meta["publications"] = write_table(path, "publications", pubs, pub_kinds)
        for kind in ("reads", "logins"):
            chunks = load.event_chunks(conn, store, kind, contact_pk, np.asarray(pubs.pk))
            meta[kind] = write_sorted(path, kind, chunks, load.EVENT_DTYPES[kind])
        write_meta(path, meta)
    manifest = {
        "format": FORMAT,
        "store": identity,
        "base": path.name,
        "delta": None,
        "offset": head,
        "offset_at": offset_at,
        "fields": fields,
        "publications_version": pubs_version,
    }
    _publish(folder, manifest)
    return manifest, replace(open_base(folder, manifest), offset=head)


def open_base(folder: Path, manifest: Any) -> Frame:
    """The manifest's base and delta as a Frame (no catch-up)."""
    path = folder / manifest["base"]
    meta = read_meta(path)
    delta = read_delta(folder / manifest["delta"]) if manifest.get("delta") else Delta.empty()
    contacts = read_table(path, "contacts", meta["contacts"])
    pubs = read_table(path, "publications", meta["publications"])
    return frame_of(path, meta, contacts, pubs, delta, int(manifest["offset"]))


# In-process state: the manifest text a process last opened, with the delta it
# has caught up since (so a long-running process reads only new feed rows).
_CACHE: dict[Path, tuple[str, Delta, int, int | None, int]] = {}
# The frame last opened from that state, kept while nothing changes: the next
# answer finds its columns made and mapped (and their masks cached) instead of
# mapping every file again.
_FRAMES: dict[Path, tuple[tuple[str, int, int], Delta, Frame]] = {}


def open_frame(store: Store, settings: Settings) -> Frame:
    """The columnar copy, up to date with every committed change (`personas` None).
    Files that cannot be read (truncated, missing, damaged) are rebuilt; an
    OSError from rebuilding (unwritable folder, full disk) is the caller's."""
    folder = folder_of(settings, store).resolve()
    why: BaseException | None = None
    for _attempt in range(5):
        try:
            return _open(store, folder)
        except FileNotFoundError as exc:  # a compaction removed files under us: read again
            _CACHE.pop(folder, None)
            why = exc
        except DAMAGED as exc:
            why = exc
            break
    log.warning("columnar copy at %s cannot be read (%s); rebuilding it", folder, why)
    return rebuild(store, folder)


def rebuild(store: Store, folder: Path) -> Frame:
    """Build the copy again from the store, whatever the files hold."""
    _CACHE.pop(folder, None)
    with writing(folder):
        return build(store, folder)[1]


def _rebuild(store: Store, folder: Path) -> Frame:
    with writing(folder):
        manifest = read_manifest(folder)
        if manifest is not None:  # another process may have rebuilt meanwhile
            with store.read() as conn:
                probe = _probe(conn, store, int(manifest["offset"]))
            with contextlib.suppress(CopyOutdated):
                check(manifest, probe)
                return _open(store, folder, rebuilt=True)
        _CACHE.pop(folder, None)
        return build(store, folder)[1]


def _open(store: Store, folder: Path, rebuilt: bool = False) -> Frame:
    text = None
    with contextlib.suppress(FileNotFoundError):
        text = (folder / MANIFEST).read_text()
    manifest = None if text is None else parse_manifest(text, folder)
    if manifest is None or text is None:
        if rebuilt:
            raise CopyOutdated(f"{folder / MANIFEST} is missing or damaged")
        return _rebuild(store, folder)
    cached = _CACHE.get(folder)
    if cached is not None and cached[0] == text:
        _, delta, offset, offset_at, pubs_version = cached
    else:
        delta = read_delta(folder / manifest["delta"]) if manifest.get("delta") else Delta.empty()
        offset, offset_at = int(manifest["offset"]), manifest["offset_at"]
        pubs_version = int(manifest["publications_version"])
    with store.read() as conn:
        probe = _probe(conn, store, offset)
        try:
            check({**manifest, "offset": offset, "offset_at": offset_at}, probe)
        except CopyOutdated:
            if rebuilt:
                raise
            _CACHE.pop(folder, None)
            return _rebuild(store, folder)
        fields = manifest["fields"]
        if probe.head > offset or probe.publications_version != pubs_version:
            base = folder / manifest["base"]
            base_contacts = read_table(base, "contacts", read_meta(base)["contacts"])
            odd = marked(base_contacts, delta)
            delta, offset = catch_up(
                conn, store, fields, delta, offset, probe.head, base_contacts.pk, odd
            )
            offset_at = _seq_at(conn, store, offset) if offset else None
            if probe.publications_version != pubs_version:
                delta = replace(delta, publications=load.publications(conn, store))
                pubs_version = probe.publications_version
    _CACHE[folder] = (text, delta, offset, offset_at, pubs_version)
    opened = _FRAMES.get(folder)
    if opened is not None and opened[0] == (text, offset, pubs_version) and opened[1] is delta:
        return opened[2]  # nothing changed since: its columns stay made
    path = folder / manifest["base"]
    meta = read_meta(path)
    contacts = read_table(path, "contacts", meta["contacts"])
    pubs = read_table(path, "publications", meta["publications"])
    try:
        frame = frame_of(path, meta, contacts, pubs, delta, offset)
    except NotAppendable:
        if rebuilt:
            raise
        _CACHE.pop(folder, None)
        with writing(folder):
            return build(store, folder)[1]
    _FRAMES[folder] = ((text, offset, pubs_version), delta, frame)
    state = {**manifest, "offset": offset, "offset_at": offset_at}
    state["publications_version"] = pubs_version
    if offset - int(manifest["offset"]) >= PERSIST_CHANGES or delta.size >= PERSIST_CHANGES:
        try:
            _persist(folder, text, state, frame, delta)
        except OSError as exc:  # the frame is exact in memory: saving it can wait
            log.warning("columnar copy: cannot save the caught-up copy in %s (%s)", folder, exc)
    return frame


def _persist(folder: Path, text: str, state: Any, frame: Frame, delta: Delta) -> None:
    """Write the delta (or, when large, a new base) and publish it; skipped when
    another process holds the lock or moved the manifest on."""
    with writing(folder, wait=False) as mine:
        if not mine or (folder / MANIFEST).read_text() != text:
            return
        n = max(frame.contacts.n, 1)
        events = sum(len(s.at) for s in frame.reads) + sum(len(s.at) for s in frame.logins)
        changed = delta.contacts.n + delta.patched
        if changed > COMPACT_SHARE * n or delta.events > COMPACT_SHARE * max(events, 1):
            reuse = unchanged(folder / state["base"], delta)
            base = write_base(folder, frame, state["fields"], reuse)
            manifest = {**state, "base": base, "delta": None}
            new_delta = Delta.empty()
        else:
            path = _new_folder(folder, "delta")
            write_delta(path, delta)
            manifest = {**state, "delta": path.name}
            new_delta = delta
        _publish(folder, manifest)
        _CACHE[folder] = (
            json.dumps(manifest),
            new_delta,
            int(state["offset"]),
            state["offset_at"],
            int(state["publications_version"]),
        )
