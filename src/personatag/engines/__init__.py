"""The engine registry: the one place engines are looked up by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from personatag.errors import InputError

if TYPE_CHECKING:  # the Flink stream job imports this package without the app's dependencies
    from personatag.config import Settings
    from personatag.engines.base import Engine
    from personatag.store import Store


def _local() -> type[Engine]:
    from personatag.engines.local.batch import LocalEngine

    return LocalEngine


def _flink() -> type[Engine]:
    from personatag.engines.flink.batch import FlinkEngine

    return FlinkEngine


# Loaders, so an engine's heavy dependencies are imported only when used.
_REGISTRY: dict[str, Callable[[], type[Engine]]] = {"local": _local, "flink": _flink}


def register_engine(name: str, loader: Callable[[], type[Engine]]) -> None:
    """Make an engine available by name (plugins, and tests' own engines)."""
    _REGISTRY[name] = loader


def unregister_engine(name: str) -> None:
    if name in ("local", "flink"):
        raise InputError(f"the built-in engine {name!r} cannot be removed")
    _REGISTRY.pop(name, None)


def engine_names() -> list[str]:
    return sorted(_REGISTRY)


def get_engine(name: str, store: Store, settings: Settings | None = None) -> Engine:
    loader = _REGISTRY.get(name)
    if loader is None:
        raise InputError(
            f"unknown engine {name!r}: available engines are {', '.join(engine_names())}"
        )
    return loader()(store, settings)
