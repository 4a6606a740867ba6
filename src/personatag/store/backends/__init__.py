"""The backend registry: the one place a database is looked up by name.

A store's backend is found by its SQLAlchemy backend name (`sqlite`,
`postgresql`), or by the scheme of a store URL (`postgres://` too). Backends
load on first use, so a database's helpers are imported only when one is used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from sqlalchemy.engine import URL

from personatag.errors import ConfigError
from personatag.store.backends.base import Backend


def _sqlite() -> type[Backend]:
    from personatag.store.backends.sqlite import SQLiteBackend

    return SQLiteBackend


def _postgresql() -> type[Backend]:
    from personatag.store.backends.postgresql import PostgreSQLBackend

    return PostgreSQLBackend


_REGISTRY: dict[str, Callable[[], type[Backend]]] = {
    "sqlite": _sqlite,
    "postgresql": _postgresql,
}
# URL schemes that name a registered backend by another name.
_ALIASES: dict[str, str] = {"postgres": "postgresql"}


def register_backend(
    name: str, loader: Callable[[], type[Backend]], *, aliases: tuple[str, ...] = ()
) -> None:
    """Make a database available by name (and by the URL schemes `aliases`)."""
    _REGISTRY[name] = loader
    for alias in aliases:
        _ALIASES[alias] = name
    _instance.cache_clear()


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The backend of the database `name` (one instance per database)."""
    return _instance(_ALIASES.get(name, name))


@functools.cache
def _instance(name: str) -> Backend:
    loader = _REGISTRY.get(name)
    if loader is None:
        raise ConfigError(
            f"unsupported store {name!r} in PERSONATAG_STORE_URL: "
            "use sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB"
        )
    return loader()()


def backend_for_url(url: URL) -> Backend:
    """The backend a store URL names (by its scheme, before any `+driver`)."""
    return get_backend(url.drivername.split("+", 1)[0])


__all__ = ["Backend", "backend_for_url", "backend_names", "get_backend", "register_backend"]
