"""Shared fixtures: every store test runs on real SQLite and real PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from personatag.store import Store, open_store
from personatag.store.db import migrate
from tests.memberships import guard
from tests.s3server import s3_endpoint  # noqa: F401 - a fixture for every test module

PG_URL = os.environ.get(
    "PERSONATAG_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def pytest_configure(config: pytest.Config) -> None:
    guard.install()


@pytest.fixture(autouse=True)
def _one_writer_of_memberships() -> Iterator[None]:
    """Fail a test during which anything but personatag.memberships wrote
    memberships, pins or the membership log (see tests/memberships/guard.py)."""
    yield
    found = Counter(map(str, guard.take()))
    if found:
        pytest.fail(
            "memberships, pins or the membership log written outside "
            "personatag.memberships:\n  "
            + "\n  ".join(f"{v} (x{n})" if n > 1 else v for v, n in found.items()),
            pytrace=False,
        )


def _admin_engine():  # type: ignore[no-untyped-def]
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database that each test clones (CREATE ... TEMPLATE)."""
    name = f"pt_tmpl_{uuid.uuid4().hex[:10]}"
    admin = _admin_engine()
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # the suite must not pretend PostgreSQL was tested
        pytest.fail(f"PostgreSQL at {PG_URL} is not reachable: {exc}")
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    migrate(engine)
    engine.dispose()
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def new_pg_url(template: str) -> str:
    name = f"pt_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    admin.dispose()
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg(url: str) -> None:
    name = make_url(url).database
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, migrated store of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        open_store(url, create=True).dispose()
        yield url
    else:
        url = new_pg_url(request.getfixturevalue("pg_template"))
        yield url
        drop_pg(url)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A fresh, migrated store of each kind (SQLite file, PostgreSQL database)."""
    s = open_store(store_url)
    yield s
    s.dispose()


@pytest.fixture
def pg_store(pg_template: str) -> Iterator[Store]:
    """A fresh, migrated PostgreSQL store, for what only PostgreSQL can show
    (sessions ended by an administrator, deadlocks between sessions)."""
    url = new_pg_url(pg_template)
    s = open_store(url)
    yield s
    s.dispose()
    drop_pg(url)
