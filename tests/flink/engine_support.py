"""Settings for tests that run jobs on the shared test cluster (`make flink-up`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from personatag.config import Settings

REPO = Path(__file__).resolve().parents[2]


def flink_python() -> Path:
    configured = os.environ.get("PERSONATAG_FLINK_PYTHON")
    return Path(configured) if configured else REPO / ".venv-flink" / "bin" / "python"


def cluster_url() -> str:
    """The cluster `make test` started. Without one these tests fail, not skip:
    a skipped equivalence test would prove nothing."""
    url = os.environ.get("PERSONATAG_TEST_FLINK_URL")
    if not url:
        pytest.fail(
            "PERSONATAG_TEST_FLINK_URL is not set: run through `make test`, or start a "
            "cluster (`make flink-up`) and set it to http://127.0.0.1:18081"
        )
    return url


def flink_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for a store and buckets under `data_dir`, jobs on the test cluster."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "flink_url": cluster_url(),
        "flink_python": flink_python(),
        "flink_poll_s": 0.2,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]
