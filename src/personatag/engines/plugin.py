"""What an engine package offers the registry: its name and lazy loaders.

An engine package (built-in or third-party) exposes one `EnginePlugin` under
the entry-point group `personatag.engines`, e.g. in its pyproject.toml:

    [project.entry-points."personatag.engines"]
    mine = "my_package.engine:plugin"

with `plugin = EnginePlugin("mine", batch=load_batch, stream=load_stream)`.
The loaders import the engine classes only when the engine is used, so
listing engines (and settings validation) costs no heavy imports. Standard
library only: the Flink job programs import the engines package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from personatag.engines.base import BatchEngine, StreamEngine

ENGINE_GROUP = "personatag.engines"


@dataclass(frozen=True)
class EnginePlugin:
    """An engine by name: a batch engine (ad hoc requests), a stream engine
    (ongoing criteria), or both. A loader returns the class, imported late."""

    name: str
    batch: Callable[[], type[BatchEngine]] | None = None
    stream: Callable[[], type[StreamEngine]] | None = None
