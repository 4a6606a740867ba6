"""Persona sets: the contacts holding each persona as a compressed bitmap
(pyroaring), kept on disk and brought up to date from the membership log.

A contact holds persona P while it has any membership row for P (pins win is
already applied in the rows: a pinned-out contact has none). The log says
`enter` or `exit` exactly when that changes (memberships/rules.py), so the
sets are the memberships read once, then every later log entry applied in seq
order: an enter adds the contact (a bulk entry its packed id block), an exit
removes it. Per persona the log's order is the commit order (its writers hold
the persona's lock until they commit), so entries of different personas may be
applied in any order.

Exact reading of a log whose seqs become visible out of order (PostgreSQL):
`settled` is a seq at or below which every entry is visible (the sequence's
last value once the transactions writing at the time have ended; on SQLite the
largest seq shown), and `applied` the seqs above it already applied. A
catch-up reads every entry above `settled` it has not applied.

Rebuilding (no copy on disk, another store, a log that no longer holds the
last entry applied: truncated, restored from an older backup, or the copy is
ahead): wait for a settled seq S, read the memberships (each persona's rows
after S settled), then apply every entry above S. An entry applied over rows
that already reflect it changes nothing, and per contact the last entry wins.

On disk (`<data_dir>/columnar/sets/`): one file per persona (the serialized
bitmap, then its enters and exits per UTC day) and `manifest.json` naming
them with the log position, each written atomically; writers take a file
lock, readers a shared one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroaring import BitMap, FrozenBitMap
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Text,
    case,
    cast,
    func,
    literal,
    select,
    type_coerce,
)

from personatag.domain import Change
from personatag.engines.columnar import sets_disk as disk
from personatag.engines.columnar.folders import store_folder
from personatag.engines.columnar.sets_disk import DAY_US, Held
from personatag.engines.columnar.sets_log import Horizon, fingerprint
from personatag.errors import NotFoundError
from personatag.files import atomic_write
from personatag.store import Store
from personatag.store.rowwise import chunks

log = logging.getLogger(__name__)

ENTRY_CHUNK = 200_000  # log entries read per statement while catching up

EMPTY = FrozenBitMap()

# (settled, the seqs above it applied): see PersonaSets.position.
Position = tuple[int, frozenset[int]]


def sets_folder(data_dir: Path, store: Store) -> Path:
    """Where the persona sets of `store` live under a data directory."""
    return store_folder(data_dir, store) / "sets"


# -- what the state is made of ------------------------------------------------------


@dataclass(frozen=True)
class PersonaInfo:
    pk: int
    key: str
    name: str
    archived: bool


def _at(lg: Any) -> Any:
    """The log's time as stored: microseconds since the epoch, an int."""
    return type_coerce(lg.c.at, BigInteger()).label("at")


class PersonaSets:
    """The holders of every persona as bitmaps, exact as of the last refresh().

    Thread-safe. `refresh()` catches up with the log (read-your-writes: every
    committed change is in the answer of a refresh that starts after it);
    `get(key)` / `sets(key)` give a persona's holders as a FrozenBitMap of
    contact pks (NotFoundError for an unknown key), suitable for `Frame.personas`.
    """

    def __init__(
        self,
        store: Store,
        folder: Path | None,
        *,
        save_every_s: float = 5.0,
        settle_wait_s: float = 10.0,
    ) -> None:
        self.store = store
        self.folder = folder
        self.save_every_s = save_every_s
        self.settle_wait_s = settle_wait_s
        self._lock = threading.RLock()
        self._horizon = Horizon(store)
        self._loaded = False
        self._personas: dict[int, Held] = {}
        self._info: dict[str, PersonaInfo] = {}
        self.settled = 0
        self._applied: set[int] = set()
        self.last_seq = 0  # the highest seq applied (0: none)
        self._last_print: str | None = None
        self._dirty: set[int] = set()
        self._disk_gen: str | None = None
        self._saved_at: float | None = None
        self.rebuilds = 0  # how many times this object rebuilt from the memberships

    # -- public -----------------------------------------------------------------

    def refresh(self) -> PersonaSets:
        """Catch up with the membership log (rebuild first when needed); save
        to disk when due. Returns self."""
        with self._lock:
            self._read_personas()
            if not self._loaded:
                if not self._load():
                    self._rebuild()
            elif not self._still_valid():
                log.info("persona sets: the log no longer holds seq %s; rebuilding", self.last_seq)
                self._rebuild()
            self._catch_up()
            self._maybe_save()
        return self

    def info(self, key: str) -> PersonaInfo:
        """The persona `key` (NotFoundError naming it when there is none)."""
        with self._lock:
            found = self._info.get(key)
            if found is None:
                self._read_personas()
                found = self._info.get(key)
        if found is None:
            raise NotFoundError(f"unknown persona {key!r}: see `personatag persona list`")
        return found

    def get(self, key: str) -> FrozenBitMap:
        """The pks of the contacts holding `key` as of the last refresh()."""
        pk = self.info(key).pk
        with self._lock:
            p = self._personas.get(pk)
            if p is None:
                return EMPTY
            if p.frozen is None:
                p.frozen = FrozenBitMap(p.bitmap)
            return p.frozen

    __call__ = get

    def position(self) -> Position:
        """Where the sets are in the log: every seq at or below the first is
        applied, and above it exactly the seqs of the second."""
        with self._lock:
            return (self.settled, frozenset(self._applied))

    def get_at(self, key: str) -> tuple[FrozenBitMap, Position]:
        """get(key) and the position it reflects, read together."""
        with self._lock:
            return self.get(key), self.position()

    def covers(self, conn: Connection, position: Position) -> bool:
        """Whether the sets at `position` hold the membership log exactly as
        `conn`'s transaction sees it (no entry there they have not applied)."""
        settled, applied = position
        lg = self.store.tables.membership_log
        return set(conn.scalars(select(lg.c.seq).where(lg.c.seq > settled))) == applied

    def by_pk(self, persona_pk: int) -> FrozenBitMap:
        with self._lock:
            key = next((k for k, i in self._info.items() if i.pk == persona_pk), None)
        if key is None:
            raise NotFoundError(f"unknown persona pk {persona_pk}")
        return self.get(key)

    def daily(self, key: str) -> dict[int, tuple[int, int]]:
        """The persona's (entered, exited) per UTC day number (days since the
        epoch), counted from the log: a copy, days with moves only."""
        pk = self.info(key).pk
        with self._lock:
            p = self._personas.get(pk)
            return {} if p is None else {d: (e, x) for d, (e, x) in p.days.items()}

    def save(self) -> None:
        """Write what changed since the last save to disk (no-op without a folder)."""
        with self._lock:
            if self.folder is not None and self._loaded:
                self._save()

    # -- the personas table ------------------------------------------------------

    def _read_personas(self) -> None:
        p = self.store.tables.personas
        with self.store.read() as conn:
            rows = conn.execute(select(p.c.pk, p.c.key, p.c.name, p.c.archived_at)).all()
        self._info = {
            r.key: PersonaInfo(int(r.pk), r.key, r.name, r.archived_at is not None) for r in rows
        }

    # -- rebuild and validity ------------------------------------------------------

    def _store_name(self) -> str:
        return self.store.engine.url.render_as_string(hide_password=True)

    def _print_of(self, conn: Connection, seq: int) -> str | None:
        lg = self.store.tables.membership_log
        row = conn.execute(
            select(_at(lg), lg.c.persona_pk, lg.c.change, lg.c.contact_pk, lg.c.bulk_count).where(
                lg.c.seq == seq
            )
        ).first()
        if row is None:
            return None
        return fingerprint(row.at, row.persona_pk, row.change, row.contact_pk, row.bulk_count)

    def _still_valid(self) -> bool:
        if self.last_seq == 0:
            return True
        with self.store.read() as conn:
            return self._print_of(conn, self.last_seq) == self._last_print

    def _rebuild(self) -> None:
        import numpy as np

        from personatag.engines.columnar.sets_apply import to_bitmap

        started = time.perf_counter()
        settled = self._horizon.wait(0, self.settle_wait_s)
        t = self.store.tables
        m, lg = t.membership_rows, t.membership_log
        personas: dict[int, Held] = {}
        with self.store.read() as conn:
            query = select(m.c.persona_pk, self.store.backend.id_list(m.c.contact_pk)).group_by(
                m.c.persona_pk
            )
            for persona_pk, text in conn.execute(query):
                ids = np.fromstring(text or "", dtype=np.int64, sep=",")
                personas[int(persona_pk)] = Held(to_bitmap(ids), {})
        with self.store.read() as conn:
            day = type_coerce(lg.c.at, BigInteger()) // DAY_US
            weight = func.coalesce(lg.c.bulk_count, 1)
            counts = (
                select(
                    lg.c.persona_pk,
                    day.label("day"),
                    func.sum(case((lg.c.change == Change.ENTER.value, weight), else_=0)),
                    func.sum(case((lg.c.change == Change.EXIT.value, weight), else_=0)),
                )
                .where(lg.c.seq <= settled)
                .group_by(lg.c.persona_pk, day)
            )
            for persona_pk, d, entered, exited in conn.execute(counts):
                p = personas.setdefault(int(persona_pk), Held(BitMap(), {}))
                p.days[int(d)] = [int(entered or 0), int(exited or 0)]
            last = conn.scalar(select(func.max(lg.c.seq)).where(lg.c.seq <= settled))
            self.last_seq = int(last or 0)
            self._last_print = self._print_of(conn, self.last_seq) if self.last_seq else None
        self._personas = personas
        self.settled = settled
        self._applied = set()
        self._dirty = set(personas)
        self._disk_gen = None
        self._loaded = True
        self.rebuilds += 1
        log.info(
            "persona sets rebuilt: %d personas at seq %d in %.3f s",
            len(personas),
            settled,
            time.perf_counter() - started,
        )

    # -- catching up -----------------------------------------------------------------

    def _catch_up(self) -> None:
        # The horizon first: entries read after it was checked include every
        # entry at or below the seq it gives.
        settled = self._horizon.advance(self.settled)
        lg = self.store.tables.membership_log
        after = self.settled
        touched: set[int] = set()
        # Six integers per entry, as one comma-separated string per chunk: far
        # cheaper than a row per entry through the driver (as fetch_ids does).
        parts = [
            lg.c.seq,
            type_coerce(lg.c.at, BigInteger()),
            lg.c.persona_pk,
            func.coalesce(lg.c.contact_pk, -1),
            case((lg.c.change == Change.ENTER.value, 1), else_=0),
            func.coalesce(lg.c.bulk_count, 0),
        ]
        joined: ColumnElement[str] = cast(parts[0], Text)
        for part in parts[1:]:
            joined = joined + literal(",") + cast(part, Text)
        # Entries applied by earlier catch-ups above what had settled then;
        # this one reads each seq once.
        seen: Any = None
        while True:
            with self.store.read() as conn:
                chunk = (
                    select(lg.c.seq.label("seq"), joined.label("entry"))
                    .where(lg.c.seq > after)
                    .order_by(lg.c.seq)
                    .limit(ENTRY_CHUNK)
                    .subquery()
                )
                text = conn.scalar(select(self.store.backend.id_list(chunk.c.entry)))
                if not text:
                    break  # nothing new: numpy is not even imported
                import numpy as np

                from personatag.engines.columnar.sets_apply import apply_entries

                if seen is None:
                    seen = np.fromiter(self._applied, np.int64, len(self._applied))
                rows = np.fromstring(text, dtype=np.int64, sep=",").reshape(-1, 6)
                rows = rows[np.argsort(rows[:, 0], kind="stable")]
                got = len(rows)
                if got:
                    after = int(rows[-1, 0])
                if len(seen) and len(rows):
                    rows = rows[~np.isin(rows[:, 0], seen)]
                bulk_seqs = rows[rows[:, 5] > 0, 0].tolist()
                blobs: dict[int, bytes] = {}
                # In parts: the stream writes a compact entry most steps, so a
                # long gap holds more than one IN list may (PostgreSQL: 65,535).
                for some in chunks(bulk_seqs):
                    for seq, blob in conn.execute(
                        select(lg.c.seq, lg.c.bulk_ids).where(lg.c.seq.in_(some))
                    ):
                        blobs[int(seq)] = bytes(blob or b"")
            touched |= apply_entries(self._personas, rows, blobs)
            self._applied.update(rows[rows[:, 0] > settled, 0].tolist())
            if len(rows) and int(rows[-1, 0]) > self.last_seq:
                seq, at, persona, contact, enter, bulk = (int(v) for v in rows[-1])
                self.last_seq = seq
                self._last_print = fingerprint(
                    at,
                    persona,
                    Change.ENTER.value if enter else Change.EXIT.value,
                    None if bulk else contact,
                    bulk or None,
                )
            if got < ENTRY_CHUNK:
                break
        self._applied = {s for s in self._applied if s > settled}
        self.settled = max(self.settled, settled)
        for pk in touched:
            self._personas[pk].frozen = None
            self._personas[pk].file = None
        self._dirty |= touched

    # -- on disk -------------------------------------------------------------------

    def _load(self) -> bool:
        """Load the copy on disk if it is of this store; False: rebuild."""
        if self.folder is None:
            return False
        try:
            with disk.locked(self.folder, shared=True):
                manifest = disk.read_manifest(self.folder)
                if manifest is None or manifest.get("store") != self._store_name():
                    return False
                personas = {}
                for pk, name in manifest["personas"].items():
                    bitmap, days = disk.read_persona(self.folder / name)
                    personas[int(pk)] = Held(bitmap, days, file=name)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("persona sets: unreadable copy on disk (%s); rebuilding", exc)
            return False
        self._personas = personas
        self.settled = int(manifest["settled"])
        self._applied = {int(s) for s in manifest["applied"]}
        self.last_seq = int(manifest["last_seq"])
        self._last_print = manifest["last_print"]
        self._disk_gen = manifest["gen"]
        self._dirty = set()
        self._loaded = True
        if not self._still_valid():
            log.info("persona sets on disk are not of this log (seq %s); rebuilding", self.last_seq)
            return False
        return True

    def _maybe_save(self) -> None:
        if self.folder is None or (not self._dirty and self._disk_gen is not None):
            return
        now = time.monotonic()
        if self._saved_at is None or now - self._saved_at >= self.save_every_s:
            try:
                self._save()
            except OSError as exc:  # exact in memory: a later refresh saves again
                self._saved_at = now
                log.warning("persona sets: cannot save to %s (%s)", self.folder, exc)

    def _save(self) -> None:
        if self.folder is None:
            return
        with disk.locked(self.folder, shared=False):
            current = disk.read_manifest(self.folder)
            if (
                current is not None
                and current.get("store") == self._store_name()
                and int(current.get("last_seq", 0)) > self.last_seq
            ):
                return  # another process saved a newer copy
            rewrite_all = current is None or current.get("gen") != self._disk_gen
            gen = uuid.uuid4().hex[:12]
            names: dict[str, str] = {}
            for pk, p in self._personas.items():
                if rewrite_all or pk in self._dirty or p.file is None:
                    p.file = f"p{pk}.{gen}.set"
                    atomic_write(self.folder / p.file, disk.persona_bytes(p.bitmap, p.days))
                names[str(pk)] = p.file
            manifest = {
                "format": disk.FORMAT,
                "gen": gen,
                "store": self._store_name(),
                "settled": self.settled,
                "applied": sorted(self._applied),
                "last_seq": self.last_seq,
                "last_print": self._last_print,
                "personas": names,
            }
            atomic_write(self.folder / disk.MANIFEST, json.dumps(manifest))
            keep = set(names.values()) | {disk.MANIFEST, disk.LOCK}
            for f in self.folder.iterdir():
                if f.name not in keep and not f.name.startswith("."):
                    with contextlib.suppress(OSError):
                        f.unlink()
        self._disk_gen = gen
        self._dirty = set()
        self._saved_at = time.monotonic()


# -- one per store and folder in a process -----------------------------------------

_OPEN: dict[tuple[str, str], PersonaSets] = {}
_OPEN_LOCK = threading.Lock()


def persona_sets(store: Store, data_dir: Path | None) -> PersonaSets:
    """This process's PersonaSets of `store`, kept under `data_dir` (None: in
    memory only), not yet refreshed."""
    folder = None if data_dir is None else sets_folder(data_dir, store)
    key = (store.engine.url.render_as_string(hide_password=False), str(folder))
    with _OPEN_LOCK:
        found = _OPEN.get(key)
        if found is None or found.store is not store:
            found = _OPEN[key] = PersonaSets(store, folder)
        return found


def current_sets(store: Store, data_dir: Path | None) -> PersonaSets:
    """persona_sets(), brought up to date with every committed change."""
    return persona_sets(store, data_dir).refresh()


__all__: Sequence[str] = (
    "EMPTY",
    "PersonaInfo",
    "PersonaSets",
    "Position",
    "current_sets",
    "persona_sets",
    "sets_folder",
)
