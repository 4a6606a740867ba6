"""The persona sets on disk: one file per persona and a manifest naming them
(and what one persona holds in memory, `Held`).

A persona's file is `PTS1`, the sizes of its two parts (little-endian
uint64), the bitmap as pyroaring serializes it (the portable Roaring format),
then its (day, entered, exited) triples as int64. No numpy here: a new
process that finds the sets current loads them without it. Files are written whole and
renamed into place (personatag.files), under an exclusive lock of `.lock`;
readers hold it shared, so a reader never finds a file named by the manifest
already removed.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroaring import BitMap, FrozenBitMap

log = logging.getLogger(__name__)

FORMAT = 1
DAY_US = 86_400_000_000  # log times are microseconds since the epoch
MANIFEST = "manifest.json"
LOCK = ".lock"
_MAGIC = b"PTS1"


@dataclass
class Held:
    """One persona: its holders, its (entered, exited) per UTC day number, a
    frozen copy handed out until it changes, and its file while unchanged."""

    bitmap: BitMap
    days: dict[int, list[int]] = field(default_factory=dict)
    frozen: FrozenBitMap | None = None
    file: str | None = None


@contextlib.contextmanager
def locked(folder: Path, *, shared: bool) -> Iterator[None]:
    """Hold the folder's lock (created with the folder when missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest, or None when there is none or it is of another format."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("persona sets: unreadable manifest (%s); rebuilding", exc)
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    return data


def persona_bytes(bitmap: BitMap, days: dict[int, list[int]]) -> bytes:
    """One persona's file: its bitmap (runs compressed) and its moves per day."""
    compact = bitmap.copy()
    compact.run_optimize()
    data = compact.serialize()
    triples = array.array("q")
    for d, (e, x) in sorted(days.items()):
        triples.extend((d, e, x))
    return _MAGIC + struct.pack("<QQ", len(data), len(days)) + data + triples.tobytes()


def read_persona(path: Path) -> tuple[BitMap, dict[int, list[int]]]:
    """A persona's bitmap and moves per day (ValueError if the file is not whole)."""
    raw = path.read_bytes()
    if raw[:4] != _MAGIC:
        raise ValueError(f"{path.name}: not a persona set file")
    if len(raw) < 20:
        raise ValueError(f"{path.name}: truncated")
    n_bitmap, n_days = struct.unpack("<QQ", raw[4:20])
    if len(raw) < 20 + n_bitmap:
        raise ValueError(f"{path.name}: truncated")
    bitmap = BitMap.deserialize(raw[20 : 20 + n_bitmap])
    triples = array.array("q")
    rest = raw[20 + n_bitmap :]
    if len(rest) != 24 * n_days:
        raise ValueError(f"{path.name}: truncated")
    triples.frombytes(rest)
    return bitmap, {triples[i]: [triples[i + 1], triples[i + 2]] for i in range(0, len(triples), 3)}
