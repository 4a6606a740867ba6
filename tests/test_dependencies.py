"""What installing personatag pulls in: SQLite needs nothing extra, PostgreSQL
needs the `postgresql` extra, and says so when it is missing."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

from personatag.errors import ConfigError
from personatag.store.db import create_store_engine

ROOT = Path(__file__).resolve().parents[1]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_psycopg_is_an_extra_that_dev_pulls_in() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert "psycopg" not in _names(project["dependencies"])
    assert _names(extras["postgresql"]) == {"psycopg"}
    assert "psycopg" in _names(extras["dev"])  # the tests run on PostgreSQL too
    assert {"httpx", "pwdlib", "psutil"} <= _names(project["dependencies"])
    assert "'.[dev,postgresql]'" in (ROOT / "Makefile").read_text()


def test_a_postgresql_url_without_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` fails as if absent
    for url in ("postgresql://u@127.0.0.1:1/db", "postgresql+psycopg://u@127.0.0.1:1/db"):
        with pytest.raises(ConfigError) as caught:
            create_store_engine(url)
        assert str(caught.value) == (
            "a PostgreSQL store needs the psycopg driver, which is not installed: "
            "pip install 'personatag[postgresql]'"
        )


def test_sqlite_does_not_need_psycopg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    engine = create_store_engine(f"sqlite:///{tmp_path}/store.db", create=True)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("select 1").scalar() == 1
    finally:
        engine.dispose()
