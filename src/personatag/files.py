"""Atomic file writes: a reader sees the old file or the whole new one, never a part.
And a folder's lock, for the processes that write what it holds.

The data goes to a hidden temp file beside the target (``.NAME.<hex>.part``:
same folder, so the rename stays on one file system; bucket listings and
Flink's file sources skip names starting with a dot), is flushed and fsynced,
then renamed over the target. Without the fsync a crash just after the rename
can leave an empty file under the new name. A failed write removes the temp
file and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".part"


def temp_name(name: str) -> str:
    """A fresh hidden temp file name for a file to be called `name`."""
    return f".{name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}"


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write; on a clean exit it replaces `path`, durably.

    The folder must exist. On an exception the temp file is removed and
    `path` is left untouched.
    """
    temp = path.parent / temp_name(path.name)
    try:
        with open(temp, "xb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace `path` with `data` (text is written as UTF-8) atomically and durably."""
    with atomic_file(path) as out:
        out.write(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def folder_lock(folder: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the exclusive lock of `folder` (its file `lock`, created with the
    folder if need be) across processes; yields False, holding nothing, when
    `wait` is False and another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
