"""Operations commands: `personatag doctor`, `personatag flink ui`."""

from __future__ import annotations
