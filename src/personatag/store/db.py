"""Opening a store: engine creation, connection setup, migrations, catalog."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, inspect, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from personatag.domain import CUSTOM_COLUMN_PREFIX, STANDARD_CONTACT_FIELDS, Catalog, FieldType
from personatag.errors import ConfigError, PersonatagError
from personatag.store.backends import Backend, backend_for_url, get_backend
from personatag.store.backends.base import LOCK_SPACE_FEED, LOCK_SPACE_PERSONA, LOCK_SPACE_STREAM
from personatag.store.schema import ATTRIBUTE_TYPES, Tables, build_tables

MIGRATIONS = Path(__file__).parent / "migrations"


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"invalid store URL {url!r}: expected sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST:PORT/DB"
        ) from None


def normalise_url(url: str) -> str:
    """Accept postgresql:// and postgres:// as the psycopg 3 driver."""
    parsed = _parse(url)
    return backend_for_url(parsed).normalise_url(parsed).render_as_string(hide_password=False)


def absolute_url(url: str) -> str:
    """`url` with a relative database file made absolute, so that a process
    started in another folder opens the same store."""
    parsed = make_url(normalise_url(url))
    path = backend_for_url(parsed).local_file(parsed)
    if path is None or Path(path).is_absolute():
        return url
    return parsed.set(database=str(Path(path).resolve())).render_as_string(hide_password=False)


def create_store_engine(
    url: str, *, create: bool = False, connect_timeout_s: float | None = None
) -> Engine:
    """An engine for `url`; with create=True the SQLite file's folder is made.

    Its errors never carry the statement's parameters (`hide_parameters`): they
    can hold password and token hashes, webhook secrets and contact data, and
    error messages end up in logs."""
    parsed = make_url(normalise_url(url))
    backend = backend_for_url(parsed)
    return backend.create_engine(parsed, create=create, connect_timeout_s=connect_timeout_s)


class Store:
    """A contact store: an engine plus the table descriptions for its schema."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.backend: Backend = get_backend(engine.dialect.name)
        # The database's name, for compilers that keep their own dialect tables.
        self.dialect = self.backend.name
        self._tables: Tables | None = None
        self._lock = threading.Lock()

    @property
    def tables(self) -> Tables:
        """The table descriptions, with the custom attributes declared when
        first asked (built once: every table, for this store's database)."""
        described = self._tables
        if described is None:
            described = self._describe(self.custom_attributes())
        return described

    def _describe(self, custom: list[tuple[str, FieldType]]) -> Tables:
        with self._lock:
            if self._tables is None:
                self._tables = build_tables(custom, self.dialect)
            return self._tables

    @property
    def is_shared_file(self) -> bool:
        """SQLite on a file: every connection sees the same database."""
        return self.backend.local_file(self.engine.url) is not None

    @property
    def shared(self) -> bool:
        """Other processes can open this same database (not in-memory SQLite)."""
        return self.backend.shared(self.engine.url)

    def refresh(self) -> None:
        """Forget cached table descriptions (after declaring an attribute)."""
        self._tables = None

    def custom_attributes(self, conn: Connection | None = None) -> list[tuple[str, FieldType]]:
        """The declared attributes (name, type) by name; read without the table
        descriptions, which depend on them."""
        query = select(ATTRIBUTE_TYPES.c.name, ATTRIBUTE_TYPES.c.type).order_by(
            ATTRIBUTE_TYPES.c.name
        )
        if conn is not None:
            return [(name, FieldType(t)) for name, t in conn.execute(query)]
        with self.engine.connect() as c:
            return [(name, FieldType(t)) for name, t in c.execute(query)]

    def catalog(self, conn: Connection | None = None) -> Catalog:
        """The fields criteria may read, as declared now. An attribute declared
        since the tables were described (by another process) describes them
        again, so that what the catalog names, `tables` holds."""
        fields: dict[str, FieldType] = dict(STANDARD_CONTACT_FIELDS)
        custom = self.custom_attributes(conn)
        fields.update(custom)
        described = self._tables
        if described is not None and any(
            CUSTOM_COLUMN_PREFIX + name not in described.contacts.c for name, _ in custom
        ):
            self.refresh()
            described = None
        p = (described if described is not None else self._describe(custom)).personas
        query = select(p.c.key).where(p.c.archived_at.is_(None))
        if conn is None:
            with self.engine.connect() as c:
                keys = frozenset(c.scalars(query))
        else:
            keys = frozenset(conn.scalars(query))
        return Catalog(contact_fields=fields, personas=keys)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (takes SQLite's write lock up front); commits on exit."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(pt_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def write_briefly(self, wait_s: float) -> Iterator[Connection]:
        """A write transaction that fails (OperationalError) instead of waiting
        much more than `wait_s` for a lock another transaction holds: for
        writes that may be skipped, which must not wait out a long job."""
        with (
            self.engine.connect() as conn,
            self.backend.write_briefly(conn, max(int(wait_s * 1000), 1)) as conn,
        ):
            yield conn

    @property
    def one_writer(self) -> bool:
        """Only one write transaction at a time across connections (SQLite):
        while a job's own write transaction is open, nothing else can write."""
        return self.backend.one_writer

    @contextmanager
    def read(self, *, snapshot: bool = False, lenient: bool = False) -> Iterator[Connection]:
        """A read transaction. SQLite's (WAL) sees one snapshot; on PostgreSQL
        each statement sees what committed before it, unless `snapshot` (for
        answers that add up several statements, such as a preview's counts).
        `lenient`: stored text that is not UTF-8 reads with U+FFFD in place
        of the bytes instead of failing (store/text.py), for reads of a few
        rows to show (it costs a little per text value)."""
        with self.engine.connect() as conn:
            level = self.backend.snapshot_isolation
            if snapshot and level is not None:
                conn = conn.execution_options(isolation_level=level)
            with conn.begin():
                if lenient:
                    with self.backend.lenient_text(conn):
                        yield conn
                else:
                    yield conn

    def analyze(self) -> None:
        """Refresh the planner's statistics (after bulk loads).

        Without them SQLite plans a behavioural criterion as a scan of every
        read (seconds per 10M) instead of the covering index by publication.
        On SQLite the statistics are sampled (analysis_limit): milliseconds
        even on 100M reads.
        """
        with self.write() as conn:
            self.backend.analyze(conn)

    def lock_persona(self, conn: Connection, persona_pk: int) -> None:
        """Serialise writers of one persona's memberships until `conn` commits.

        The applier counts, then writes, in separate statements; on PostgreSQL
        (READ COMMITTED, many writers) another writer could commit in between.
        SQLite needs nothing: Store.write() already holds the only write lock.
        A transaction that writes several personas takes them all at once, with
        lock_personas, before it writes any.
        """
        self.lock_personas(conn, (persona_pk,))

    def lock_personas(self, conn: Connection, persona_pks: Iterable[int]) -> None:
        """lock_persona for several personas, in one global order (ascending pk):
        two transactions that lock overlapping sets in their own orders would
        deadlock. Locking a persona again later in the transaction is free."""
        self.backend.lock_all(conn, LOCK_SPACE_PERSONA, list(persona_pks))

    def lock_feed(self, conn: Connection) -> None:
        """Serialise writers of the change feed until `conn` commits.

        A reader of the feed moves past every seq it has seen, so seqs must
        become visible in order: on PostgreSQL a later seq could otherwise
        commit before an earlier one. SQLite has one writer already.
        """
        self.backend.lock(conn, LOCK_SPACE_FEED, 0)

    def lock_stream_criteria(self, conn: Connection, *, shared: bool) -> None:
        """Hold the stream's criteria still until `conn` commits: a partition's
        step takes it shared (it commits answers of the criteria it read), a
        swap of criteria exclusive (engines/local/stream/partitions.py). SQLite
        needs nothing: Store.write() already holds the only write lock."""
        if shared:
            self.backend.lock_shared(conn, LOCK_SPACE_STREAM, 0)
        else:
            self.backend.lock(conn, LOCK_SPACE_STREAM, 0)

    def checkpoint_beside(self) -> Any:
        """For a process whose commits are large and many (the stream): its
        writers leave the write-ahead log's copying into the database to a
        thread beside them (SQLite; backends/wal.py). Returns what stops it
        (`stop()`), or None where there is nothing to do (PostgreSQL)."""
        return self.backend.checkpoint_beside(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


class StoreUnreachable(PersonatagError):
    """The database did not answer (down, restarting, wrong address)."""


# The newest migration; a test checks it against the migrations folder. Kept as
# a constant so opening a store does not import Alembic (a third of start-up).
HEAD_REVISION = "0013_membership_log_members"
STORE_IDENTITY = "store_identity"  # the data_versions row of the identity


def _alembic_config(conn: Connection) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def migrate(engine: Engine) -> None:
    """Create or upgrade the schema to the newest migration (idempotent)."""
    from alembic import command

    with engine.connect() as conn:
        conn = conn.execution_options(pt_write=True)
        with conn.begin():
            command.upgrade(_alembic_config(conn), "head")
            # A random identity per store, written once (copies kept beside the
            # store, such as the columnar copy, tell its store from another by it).
            conn.execute(
                text(
                    "INSERT INTO data_versions (name, version) SELECT :name, :v "
                    "WHERE NOT EXISTS (SELECT 1 FROM data_versions WHERE name = :name)"
                ),
                {"name": STORE_IDENTITY, "v": secrets.randbelow(2**62) + 1},
            )


def migration_head() -> str | None:
    """The newest revision in the migrations folder (what `migrate` reaches)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def known_revision(revision: str) -> bool:
    """Whether `revision` is one of this code's migrations (a store at an unknown
    one was migrated by a later personatag)."""
    from alembic.script import ScriptDirectory

    try:
        return ScriptDirectory(str(MIGRATIONS)).get_revision(revision) is not None
    except Exception:  # alembic raises its own error for an unknown revision
        return False


def is_current(engine: Engine) -> bool:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        current = conn.scalar(text("SELECT version_num FROM alembic_version"))
        return bool(current == HEAD_REVISION)


def open_store(url: str, *, create: bool = False, connect_timeout_s: float | None = None) -> Store:
    """Open the store at `url`; with create=True make or migrate it first;
    with `connect_timeout_s`, connecting to a server gives up after that long.

    Without create, a store that is missing or behind raises a PersonatagError
    that says to run `personatag init`.
    """
    parsed = _parse(url)
    path = backend_for_url(parsed).local_file(parsed)
    on_disk = path is not None and not path.startswith("file:")
    if not create and on_disk and not Path(str(path)).exists():
        # Opening it would create an empty file; say what to do instead.
        raise PersonatagError(f"there is no store at {path}: run `personatag init`")
    engine = create_store_engine(url, create=create, connect_timeout_s=connect_timeout_s)
    try:
        if create:
            migrate(engine)
        elif not is_current(engine):
            raise PersonatagError(
                f"the store at {make_url(url).render_as_string()} is not initialised "
                "or is out of date: run `personatag init`"
            )
    except OperationalError as exc:
        engine.dispose()
        raise StoreUnreachable(f"cannot open the store: {exc.orig}") from None
    except Exception:
        engine.dispose()
        raise
    return Store(engine)
