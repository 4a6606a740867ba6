"""Fixtures for tests that run a real local Flink cluster (or the real supervisor)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from personatag.config import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def flink_python() -> Path:
    """The Python with PyFlink: PERSONATAG_FLINK_PYTHON (the Makefile sets it) or ./.venv-flink."""
    given = os.environ.get("PERSONATAG_FLINK_PYTHON")
    path = Path(given) if given else ROOT / ".venv-flink" / "bin" / "python"
    if not path.exists():  # the suite must not pretend Flink was tested
        pytest.fail(f"no Flink Python at {path}: run `make flink-venv`")
    return path


def local_settings(data_dir: Path, port: int, flink_python: Path, **extra: object) -> Settings:
    """Settings for a local cluster of our own: its data dir and REST port, nothing from env."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "flink_url": None,
        "flink_home": None,
        "flink_python": flink_python,
        "flink_rest_port": port,
        "flink_task_managers": 1,
        "flink_slots": 2,
        "flink_parallelism": 1,
    }
    return Settings(**(values | extra))  # type: ignore[arg-type]


def cli_env(**settings: str) -> dict[str, str]:
    """This environment without PERSONATAG_* variables, plus `settings` (NAME=value)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")}
    return env | {f"PERSONATAG_{k.upper()}": v for k, v in settings.items()}


# The same CLI as `python -m personatag.cli` (and the `personatag` script).
CLI = [sys.executable, "-c", "from personatag.cli import main; main()"]


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_until(check: Callable[[], object], timeout: float, what: str) -> object:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
