"""The `flink` engine package: batch jobs and a streaming job on a Flink session cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING

from personatag.engines.plugin import EnginePlugin

if TYPE_CHECKING:
    from personatag.engines.base import BatchEngine, StreamEngine


def _batch() -> type[BatchEngine]:
    from personatag.engines.flink.batch import FlinkEngine

    return FlinkEngine


def _stream() -> type[StreamEngine]:
    from personatag.engines.flink.stream import FlinkStream

    return FlinkStream


plugin = EnginePlugin("flink", batch=_batch, stream=_stream)
