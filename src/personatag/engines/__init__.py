"""The engine registry: the one place engines are looked up by name.

An engine is a package offering an `EnginePlugin` (engines/plugin.py): a batch
engine (ad hoc requests), a stream engine (ongoing criteria), or both. The
built-ins are `local` and `flink`; any installed distribution that declares a
plugin under the entry-point group `personatag.engines` adds its engine (so a
third-party engine installs like a plugin). Installed plugins are discovered
once per process; `reload_plugins` looks again.

Import-light (standard library only at import time): the Flink job programs
import this package without the app's dependencies.
"""

from __future__ import annotations

import inspect
import logging
from importlib import metadata
from typing import TYPE_CHECKING, Any

from personatag.engines.plugin import ENGINE_GROUP, EnginePlugin
from personatag.errors import ConfigError, InputError

if TYPE_CHECKING:
    from collections.abc import Callable

    from personatag.config import Settings
    from personatag.engines.base import BatchEngine, StreamEngine
    from personatag.metrics import Metrics
    from personatag.store import Store

log = logging.getLogger(__name__)

# The built-ins, as pyproject.toml declares them under [project.entry-points."personatag.engines"]
# (declared here too, so a source tree that was not installed has them).
BUILTIN: dict[str, str] = {
    "local": "personatag.engines.local.plugin:plugin",
    "flink": "personatag.engines.flink.plugin:plugin",
    "columnar": "personatag.engines.columnar.plugin:plugin",
}

# Engines registered in this process (tests, an application embedding personatag).
_added: dict[str, EnginePlugin] = {}
# Installed plugins by name, discovered on first use.
_installed: dict[str, metadata.EntryPoint] | None = None


def _entry_points() -> dict[str, metadata.EntryPoint]:
    global _installed
    if _installed is None:
        found: dict[str, metadata.EntryPoint] = {}
        for ep in metadata.entry_points(group=ENGINE_GROUP):
            if ep.name in BUILTIN:
                if ep.value != BUILTIN[ep.name]:
                    log.warning(
                        "ignoring the engine plugin %r (%s): a built-in engine has that name",
                        ep.name,
                        ep.value,
                    )
                continue
            found.setdefault(ep.name, ep)
        _installed = found
    return _installed


def reload_plugins() -> None:
    """Discover installed engine plugins again on next use."""
    global _installed
    _installed = None


def plugin_names() -> list[str]:
    """Every engine name: built-in, installed and registered."""
    return sorted({*BUILTIN, *_entry_points(), *_added})


def plugin(name: str) -> EnginePlugin | None:
    """The plugin called `name` (None when there is none). Loading imports only
    the plugin's module, not its engines."""
    if name in _added:
        return _added[name]
    value = BUILTIN.get(name)
    ep = metadata.EntryPoint(name, value, ENGINE_GROUP) if value else _entry_points().get(name)
    if ep is None:
        return None
    loaded = ep.load()
    if not isinstance(loaded, EnginePlugin):
        raise ConfigError(
            f"the engine plugin {name!r} ({ep.value}, entry-point group {ENGINE_GROUP}) "
            f"is a {type(loaded).__name__}, not a personatag.engines.plugin.EnginePlugin"
        )
    return loaded


def _listed(kind: str) -> list[str]:
    names = []
    for name in plugin_names():
        try:
            found = plugin(name)
        except Exception as exc:  # one broken plugin must not hide the others
            log.warning("the engine plugin %r cannot be loaded: %s", name, exc)
            continue
        if found is not None and getattr(found, kind) is not None:
            names.append(name)
    return names


def engine_names() -> list[str]:
    """The names of the batch engines, sorted."""
    return _listed("batch")


def stream_engine_names() -> list[str]:
    """The names of the stream engines, sorted."""
    return _listed("stream")


def register_plugin(engine: EnginePlugin) -> None:
    """Make an engine package available by name in this process."""
    if engine.name in BUILTIN:
        raise InputError(f"the built-in engine {engine.name!r} cannot be replaced")
    _added[engine.name] = engine


def register_engine(name: str, loader: Callable[[], type[BatchEngine]]) -> None:
    """Make a batch engine available by name in this process (tests' own engines)."""
    register_plugin(EnginePlugin(name, batch=loader))


def unregister_engine(name: str) -> None:
    if name in BUILTIN:
        raise InputError(f"the built-in engine {name!r} cannot be removed")
    _added.pop(name, None)


def _checked(loaded: Any, base: type, name: str, kind: str) -> Any:
    """`loaded` as a complete subclass of `base`, or a clear error naming what is missing."""
    if not (isinstance(loaded, type) and issubclass(loaded, base)):
        raise ConfigError(
            f"the {kind} engine {name!r} is {loaded!r}, not a subclass of {base.__name__}"
        )
    if inspect.isabstract(loaded):
        missing = ", ".join(sorted(getattr(loaded, "__abstractmethods__", ())))
        raise ConfigError(
            f"the {kind} engine {name!r} ({loaded.__module__}.{loaded.__qualname__}) "
            f"does not implement {missing}"
        )
    return loaded


def get_engine(name: str, store: Store, settings: Settings | None = None) -> BatchEngine:
    """The batch engine called `name`, ready for `store`."""
    from personatag.engines.base import BatchEngine

    found = plugin(name)
    if found is None or found.batch is None:
        raise InputError(
            f"unknown engine {name!r}: available engines are {', '.join(engine_names())}"
        )
    cls: type[BatchEngine] = _checked(found.batch(), BatchEngine, name, "batch")
    return cls(store, settings)


def get_stream_engine(
    name: str, store: Store, settings: Settings | None = None, metrics: Metrics | None = None
) -> StreamEngine:
    """The stream engine called `name` (the `stream_engine` setting), ready for `store`."""
    from personatag.engines.base import StreamEngine

    found = plugin(name)
    if found is None or found.stream is None:
        # The built-ins first, as the setting's validation names them.
        names = sorted(stream_engine_names(), key=lambda n: (n not in BUILTIN, n != "local", n))
        raise ConfigError(f"unknown stream engine {name!r}: use {' or '.join(names)}")
    cls: type[StreamEngine] = _checked(found.stream(), StreamEngine, name, "stream")
    return cls(store, settings, metrics)
