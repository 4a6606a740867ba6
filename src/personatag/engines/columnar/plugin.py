"""The `columnar` engine package: numpy over the columnar copy (batch only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from personatag.engines.plugin import EnginePlugin

if TYPE_CHECKING:
    from personatag.engines.base import BatchEngine


def _batch() -> type[BatchEngine]:
    from personatag.engines.columnar.batch import ColumnarEngine

    return ColumnarEngine


plugin = EnginePlugin("columnar", batch=_batch)
