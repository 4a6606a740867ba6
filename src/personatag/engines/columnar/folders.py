"""Where the columnar copy and the persona sets of a store live: one folder
per store under `<data_dir>/columnar/`, so a data directory that serves more
than one store (a test run, a person pointing at staging and production) keeps
a copy of each instead of rebuilding one copy back and forth."""

from __future__ import annotations

import hashlib
from pathlib import Path

from personatag.store import Store

FOLDER = "columnar"


def store_key(store: Store) -> str:
    """A short name for `store`: its database kind and a hash of its URL."""
    url = store.engine.url
    if url.get_backend_name() == "sqlite" and url.database:
        where = str(Path(url.database).resolve())
    else:
        where = url.set(password=None).render_as_string(hide_password=False)
    return f"{url.get_backend_name()}-{hashlib.sha256(where.encode()).hexdigest()[:12]}"


def store_folder(data_dir: Path, store: Store) -> Path:
    """`<data_dir>/columnar/<store key>`."""
    return Path(data_dir) / FOLDER / store_key(store)
