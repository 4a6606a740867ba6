"""Where the columnar copy and the persona sets of a store live: one folder
per store under `<data_dir>/columnar/`, so a data directory that serves more
than one store (a test run, a person pointing at staging and production) keeps
a copy of each instead of rebuilding one copy back and forth."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from sqlalchemy.engine import URL

from personatag.store import Store

FOLDER = "columnar"


def store_key(store: Store) -> str:
    """A short name for `store`: its database kind and a hash of its URL."""
    return url_key(store.engine.url)


def url_key(url: URL) -> str:
    """store_key() of the store at `url`."""
    if url.get_backend_name() == "sqlite" and url.database:
        where = str(Path(url.database).resolve())
    else:
        where = url.set(password=None).render_as_string(hide_password=False)
    return f"{url.get_backend_name()}-{hashlib.sha256(where.encode()).hexdigest()[:12]}"


def store_folder(data_dir: Path, store: Store) -> Path:
    """`<data_dir>/columnar/<store key>`."""
    return Path(data_dir) / FOLDER / store_key(store)


def url_folder(data_dir: Path, url: URL) -> Path:
    """store_folder() of the store at `url`."""
    return Path(data_dir) / FOLDER / url_key(url)


def folder_size(folder: Path) -> int:
    """Bytes in the files under `folder` (0 when there is none)."""
    if not folder.exists():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def tidy_old_layout(data_dir: Path) -> None:
    """Remove a copy left by the first layout, which kept one store's copy
    straight under `<data_dir>/columnar/` (MANIFEST.json, lock, base-*,
    delta-*, sets/); the store folders beside it are not touched."""
    root = Path(data_dir) / FOLDER
    if not (root / "MANIFEST.json").exists():
        return
    for entry in root.iterdir():
        if entry.name in ("MANIFEST.json", "lock") and entry.is_file():
            entry.unlink(missing_ok=True)
        elif entry.is_dir() and (
            entry.name == "sets" or entry.name.startswith(("base-", "delta-"))
        ):
            shutil.rmtree(entry, ignore_errors=True)
