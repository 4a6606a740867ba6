"""The `local` engine package: SQL in the store (batch), the embedded processor (stream)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from personatag.engines.plugin import EnginePlugin

if TYPE_CHECKING:
    from personatag.engines.base import BatchEngine, StreamEngine


def _batch() -> type[BatchEngine]:
    from personatag.engines.local.batch import LocalEngine

    return LocalEngine


def _stream() -> type[StreamEngine]:
    from personatag.engines.local.stream.processor import StreamProcessor

    return StreamProcessor


plugin = EnginePlugin("local", batch=_batch, stream=_stream)
