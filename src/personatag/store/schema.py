"""Table definitions (SQLAlchemy Core). Migrations create them; this module
describes them for queries. The contacts table gains one column per declared
custom attribute, so tables are built per store from its attribute list."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    column,
    table,
    text,
)
from sqlalchemy.types import TypeEngine

from personatag.domain import CUSTOM_COLUMN_PREFIX, FieldType
from personatag.store.backends.base import search_key
from personatag.store.types import StringList, UTCTimestamp

# SQLite only aliases the rowid for exactly "INTEGER PRIMARY KEY".
#: Contact columns with a `search_key` index (see contacts_search).
SEARCH_FIELDS = ("id", "first_name", "last_name", "email", "firm")
PK = BigInteger().with_variant(Integer(), "sqlite")


def sql_type(field_type: FieldType) -> TypeEngine[Any]:
    """The column type that stores a field of `field_type`."""
    factories: dict[FieldType, Callable[[], TypeEngine[Any]]] = {
        FieldType.STRING: Text,
        FieldType.INT: BigInteger,
        FieldType.FLOAT: Float,
        FieldType.BOOL: lambda: Boolean(create_constraint=False),
        FieldType.TIMESTAMP: UTCTimestamp,
        FieldType.LIST: StringList,
    }
    return factories[field_type]()


#: The attributes table's name and type columns: what a store reads to learn
#: its declared attributes before it describes its tables, which depend on them.
ATTRIBUTE_TYPES = table("attributes", column("name", Text), column("type", Text))


@dataclass(frozen=True)
class Tables:
    metadata: MetaData
    contacts: Table
    publications: Table
    reads: Table
    logins: Table
    attributes: Table
    personas: Table
    criteria: Table
    memberships: Table  # a view over membership_rows and membership_grants
    membership_rows: Table
    membership_grants: Table
    pins: Table
    membership_log: Table
    membership_log_members: Table
    requests: Table
    jobs: Table
    request_files: Table
    request_submissions: Table
    data_versions: Table
    users: Table
    api_tokens: Table
    web_sessions: Table
    audit_events: Table
    changes: Table
    stream_offsets: Table
    stream_rechecks: Table
    stream_errors: Table
    reconciliations: Table
    stream_samples: Table
    webhooks: Table
    webhook_dead_letters: Table
    feed_rules: Table


def build_tables(
    custom: Iterable[tuple[str, FieldType]] = (), dialect: str | None = None
) -> Tables:
    """Describe every table; `custom` lists declared attributes (name, type).

    `dialect` (a backend's name, e.g. a store's `dialect`) keeps only that
    database's table and index options (`sqlite_*`, `postgresql_*`): SQLAlchemy
    loads a database's dialect to check its options, so describing the tables
    of a SQLite store then never loads PostgreSQL's (a tenth of a new
    process's start-up). None keeps every database's options."""

    def only(**options: Any) -> dict[str, Any]:
        """The options (named `<database>_<option>`, as SQLAlchemy names them)
        of `dialect`, or all of them."""
        if dialect is None:
            return options
        return {k: v for k, v in options.items() if k.startswith(dialect + "_")}

    md = MetaData()
    contacts = Table(
        "contacts",
        md,
        Column("pk", PK, primary_key=True, autoincrement=True),
        Column("id", Text, nullable=False, unique=True),
        Column("email", Text),
        Column("first_name", Text),
        Column("last_name", Text),
        Column("job_title", Text),
        Column("seniority", BigInteger),
        Column("region", Text),
        Column("country", Text),
        Column("firm", Text),
        Column("firm_type", Text),
        Column("interests", StringList),
        Column("created_at", UTCTimestamp),
        Column("updated_at", UTCTimestamp),
        Column("last_login_at", UTCTimestamp),
        *(Column(CUSTOM_COLUMN_PREFIX + name, sql_type(ft)) for name, ft in custom),
    )
    # Contact search: the id folded (exact), name, email and firm (prefix); pk
    # after the key gives a page in (key, pk) order straight from the index.
    for field in SEARCH_FIELDS:
        Index(f"ix_contacts_search_{field}", search_key(contacts.c[field]), contacts.c.pk)
    # SQLite: the pks alone, in pk order (migration 0012_contacts_pk_index). A
    # statement that needs only the pks of a pk range (a large tag's INSERT ...
    # SELECT) reads this small b-tree instead of the table's wide rows.
    Index("ix_contacts_pk", contacts.c.pk).ddl_if(dialect="sqlite")
    publications = Table(
        "publications",
        md,
        Column("pk", PK, primary_key=True, autoincrement=True),
        Column("id", Text, nullable=False, unique=True),
        Column("title", Text),
        Column("published_at", UTCTimestamp),
        Column("asset_class", Text),
        Column("sector", Text),
        Column("region", Text),
        Column("series", Text),
    )
    reads = Table(
        "reads",
        md,
        Column("contact_pk", BigInteger, primary_key=True),
        Column("read_at", UTCTimestamp, primary_key=True),
        Column("publication_pk", BigInteger, primary_key=True),
        Index("ix_reads_publication", "publication_pk", "read_at", "contact_pk"),
        **only(sqlite_with_rowid=False),
    )
    logins = Table(
        "logins",
        md,
        Column("contact_pk", BigInteger, primary_key=True),
        Column("login_at", UTCTimestamp, primary_key=True),
        **only(sqlite_with_rowid=False),
    )
    attributes = Table(
        "attributes",
        md,
        Column("name", Text, primary_key=True),
        Column("type", Text, nullable=False),
        Column("description", Text),
        Column("created_at", UTCTimestamp, nullable=False),
        Column("created_by", Text),
    )
    personas = Table(
        "personas",
        md,
        Column("pk", PK, primary_key=True, autoincrement=True),
        Column("key", Text, nullable=False, unique=True),
        Column("name", Text, nullable=False),
        Column("category", Text, nullable=False),
        Column("description", Text),
        Column("created_at", UTCTimestamp, nullable=False),
        Column("created_by", Text),
        Column("archived_at", UTCTimestamp),
    )
    criteria = Table(
        "criteria",
        md,
        Column("pk", PK, primary_key=True, autoincrement=True),
        Column("name", Text, nullable=False),
        Column("version", Integer, nullable=False),
        Column("persona_pk", BigInteger, nullable=False),
        Column("expr", Text, nullable=False),
        Column("ast", Text, nullable=False),
        Column("action", Text, nullable=False),
        Column("mode", Text, nullable=False),
        Column("exit_policy", Text, nullable=False),
        Column("status", Text, nullable=False),
        Column("created_at", UTCTimestamp, nullable=False),
        Column("created_by", Text),
        Index("ix_criteria_name_version", "name", "version", unique=True),
    )
    # A membership is a row (persona, contact, source) and a reference to its
    # grant: when and by what it was given (since, request, criterion), one row
    # per ad hoc request, pin-in or stream flush. `memberships`, the view
    # readers use, joins the two back (migration 0011_membership_grants); every writer is in
    # personatag.memberships and writes the rows and grants themselves.
    membership_rows = Table(
        "membership_rows",
        md,
        Column("persona_pk", BigInteger, primary_key=True),
        Column("contact_pk", BigInteger, primary_key=True),
        # SOURCE_ADHOC, SOURCE_MANUAL, or an ongoing criterion's pk
        Column("source", BigInteger, primary_key=True),
        Column("grant_pk", BigInteger, nullable=False),
        # By contact: PostgreSQL seeks this index. SQLite has none (a second
        # b-tree of every row doubled the cost of a large tag): it skip-scans
        # the primary key, one seek per persona, which its planner chooses
        # from the statistics the writer keeps (memberships/stats.py).
        Index("ix_membership_rows_contact", "contact_pk").ddl_if(dialect="postgresql"),
        **only(sqlite_with_rowid=False),
    )
    membership_grants = Table(
        "membership_grants",
        md,
        Column("pk", PK, primary_key=True, autoincrement=True),
        Column("since", UTCTimestamp, nullable=False),
        Column("request_pk", BigInteger),
        # NULL for a stream flush's grant: an ongoing criterion's rows name it
        # as their source, and the view reads it from there.
        Column("criterion_pk", BigInteger),
    )
    # The view (created by the migrations, not by this metadata).
    memberships = Table(
        "memberships",
        MetaData(),
        Column("persona_pk", BigInteger, primary_key=True),
        Column("contact_pk", BigInteger, primary_key=True),
        Column("source", BigInteger, primary_key=True),
        Column("since", UTCTimestamp, nullable=False),
        Column("request_pk", BigInteger),
        Column("criterion_pk", BigInteger),
    )
    pins = Table(
        "pins",
        md,
        Column("persona_pk", BigInteger, primary_key=True),
        Column("contact_pk", BigInteger, primary_key=True),
        Column("kind", Text, nullable=False),
        Column("created_at", UTCTimestamp, nullable=False),
        Column("created_by", Text),
        Column("reason", Text),
    )
    membership_log = Table(
        "membership_log",
        md,
        Column("seq", PK, primary_key=True, autoincrement=True),
        Column("at", UTCTimestamp, nullable=False),
        Column("persona_pk", BigInteger, nullable=False),
        # NULL for a bulk entry, whose contacts are in bulk_ids
        Column("contact_pk", BigInteger),
        Column("change", Text, nullable=False),
        Column("source", BigInteger, nullable=False),
        Column("request_pk", BigInteger),
        Column("criterion_pk", BigInteger),
        Column("actor", Text),
        Column("reason", Text),
        Column("bulk_count", BigInteger),
        Column("bulk_ids", LargeBinary),
        # Smallest and largest pk in bulk_ids: prunes entries without decoding.
        Column("bulk_min", BigInteger),
        Column("bulk_max", BigInteger),
        Index("ix_membership_log_contact", "contact_pk", "seq"),
        Index("ix_membership_log_persona", "persona_pk", "seq"),
        Index(
            "ix_membership_log_bulk",
            "seq",
            **only(
                sqlite_where=text("bulk_count IS NOT NULL"),
                postgresql_where=text("bulk_count IS NOT NULL"),
            ),
        ),
        # The bulk entries with a pk range (a request's), which `contact show`
        # prunes by range; the stream's compact entries have none (they are
        # found through membership_log_members) and are many.
        Index(
            "ix_membership_log_ranged",
            "seq",
            **only(
                sqlite_where=text("bulk_min IS NOT NULL"),
                postgresql_where=text("bulk_min IS NOT NULL"),
            ),
        ),
    )
    # The contacts of the stream's compact log entries, by contact: a stream
    # step logs many enters of one persona through one criterion as one bulk
    # entry (memberships/rows.py), whose contacts are scattered over the pk
    # range; `contact show` finds them here, not by decoding every entry.
    membership_log_members = Table(
        "membership_log_members",
        md,
        Column("contact_pk", BigInteger, primary_key=True),
        Column("seq", BigInteger, primary_key=True),
        **only(sqlite_with_rowid=False),
    )
    requests = Table(
        "requests",
        md,
        Column("pk", PK, primary_key=True, autoincrement=True),
        Column("request_id", Text, nullable=False, unique=True),
        Column("submitted_by", Text),
        Column("persona_pk", BigInteger),
        Column("action", Text, nullable=False),
        Column("engine", Text, nullable=False),
        Column("criterion_pk", BigInteger),
        Column("expr", Text),
        Column("as_of", UTCTimestamp),
        Column("dry_run", Boolean(create_constraint=False), nullable=False),
        Column("spec", Text, nullable=False),
        Column("created_at", UTCTimestamp, nullable=False),
        # Where it was submitted (workbench, api, cli, file) and, through the
        # API with a token, the token's name.
        Column("submitted_via", Text),
        Column("submitted_token", Text),
        Index("ix_requests_submitted_by", "submitted_by"),
    )
    # Who put a file in the requests bucket and how (the API, `personatag
    # submit`), by its key: the dispatcher reads it when it records the
    # request. A file without a row was dropped into the bucket directly.
    request_submissions = Table(
        "request_submissions",
        md,
        Column("key", Text, primary_key=True),
        Column("request_id", Text, nullable=False),
        Column("submitted_by", Text),
        Column("submitted_via", Text, nullable=False),
        Column("submitted_token", Text),
        Column("submitted_at", UTCTimestamp, nullable=False),
    )
    jobs = Table(
        "jobs",
        md,
        Column("pk", PK, primary_key=True, autoincrement=True),
        Column("request_pk", BigInteger, nullable=False),
        Column("status", Text, nullable=False),
        Column("engine", Text, nullable=False),
        Column("bundle_version", Text),
        Column("queued_at", UTCTimestamp, nullable=False),
        Column("started_at", UTCTimestamp),
        Column("finished_at", UTCTimestamp),
        Column("counts", Text),
        Column("error", Text),
        Column("deadline_at", UTCTimestamp),
        Column("cancel_requested", Boolean(create_constraint=False)),
        # The dispatcher process running the job and when it last said so.
        Column("owner", Text),
        Column("heartbeat_at", UTCTimestamp),
        # The engine's own id for the job (a Flink JobID), once it has one.
        Column("engine_ref", Text),
        # What the job does now and how far it is (JSON, see jobs/progress.py).
        Column("progress", Text),
        Index("ix_jobs_request", "request_pk"),
        Index("ix_jobs_status", "status"),
    )
    request_files = Table(
        "request_files",
        md,
        # The object key in the requests bucket: each is claimed exactly once.
        Column("key", Text, primary_key=True),
        Column("request_id", Text),
        Column("claimed_at", UTCTimestamp, nullable=False),
        Column("claimed_by", Text, nullable=False),
        Column("outcome", Text),
        # The job the file ran, if any, and (outcome `results_failed`) why its
        # result files could not be written: a later scan writes them from it.
        Column("job_pk", BigInteger),
        Column("error", Text),
    )
    # A counter per table, bumped by every bulk write to it: engines that work
    # on a snapshot of the store know when theirs is still current.
    data_versions = Table(
        "data_versions",
        md,
        Column("name", Text, primary_key=True),
        Column("version", BigInteger, nullable=False),
    )
    # Accounts (personatag.accounts). Secrets are never stored: passwords as
    # Argon2id hashes, API and session tokens as the SHA-256 hex of the token.
    users = Table(
        "users",
        md,
        Column("pk", PK, primary_key=True, autoincrement=True),
        # Lower-case: user names are unique regardless of case.
        Column("username", Text, nullable=False, unique=True),
        Column("password_hash", Text, nullable=False),
        Column("role", Text, nullable=False),
        Column("created_at", UTCTimestamp, nullable=False),
        Column("created_by", Text),
        Column("disabled_at", UTCTimestamp),
        Column("password_changed_at", UTCTimestamp, nullable=False),
        # A session login, or an API token's use (written at most once a minute).
        Column("last_login_at", UTCTimestamp),
    )
    api_tokens = Table(
        "api_tokens",
        md,
        Column("pk", PK, primary_key=True, autoincrement=True),
        Column("user_pk", BigInteger, nullable=False),
        Column("name", Text, nullable=False),
        Column("token_hash", Text, nullable=False, unique=True),
        # The first characters of the secret, to tell tokens apart on screen.
        Column("prefix", Text, nullable=False),
        Column("created_at", UTCTimestamp, nullable=False),
        Column("created_by", Text),
        Column("last_used_at", UTCTimestamp),
        Column("expires_at", UTCTimestamp),
        Column("revoked_at", UTCTimestamp),
        Index("ix_api_tokens_user", "user_pk"),
    )
    web_sessions = Table(
        "web_sessions",
        md,
        Column("token_hash", Text, primary_key=True),
        Column("user_pk", BigInteger, nullable=False),
        Column("csrf_token", Text, nullable=False),
        Column("created_at", UTCTimestamp, nullable=False),
        Column("expires_at", UTCTimestamp, nullable=False),
        Column("last_seen_at", UTCTimestamp, nullable=False),
        Index("ix_web_sessions_user", "user_pk"),
        Index("ix_web_sessions_expires", "expires_at"),
    )
    audit_events = Table(
        "audit_events",
        md,
        Column("seq", PK, primary_key=True, autoincrement=True),
        Column("at", UTCTimestamp, nullable=False),
        Column("actor", Text),
        Column("action", Text, nullable=False),
        Column("target", Text),
        # JSON object text, or NULL.
        Column("detail", Text),
        Column("source", Text, nullable=False),
        Index("ix_audit_events_at", "at"),
        Index("ix_audit_events_actor", "actor", "seq"),
        Index("ix_audit_events_action", "action", "seq"),
        Index("ix_audit_events_target", "target", "seq"),
    )
    # The change feed (outbox): every write to contacts, reads or logins adds a
    # row in its own transaction. One contact (contact_pk) or a batch (pks:
    # packed little-endian int64); fields lists the contact fields written
    # (comma-separated; NULL: every field, or not a contact change).
    changes = Table(
        "changes",
        md,
        Column("seq", PK, primary_key=True, autoincrement=True),
        Column("at", UTCTimestamp, nullable=False),
        Column("kind", Text, nullable=False),
        Column("contact_pk", BigInteger),
        Column("pks", LargeBinary),
        Column("n", BigInteger, nullable=False),
        Column("fields", Text),
    )
    # How far each consumer of the feed (or of the membership log) has got.
    stream_offsets = Table(
        "stream_offsets",
        md,
        Column("name", Text, primary_key=True),
        Column("seq", BigInteger, nullable=False),
        Column("updated_at", UTCTimestamp, nullable=False),
    )
    # When time alone can change a window criterion's answer for a contact.
    stream_rechecks = Table(
        "stream_rechecks",
        md,
        Column("criterion_pk", BigInteger, primary_key=True),
        Column("contact_pk", BigInteger, primary_key=True),
        Column("due_at", UTCTimestamp, nullable=False),
        Index("ix_stream_rechecks_due", "due_at"),
        Index("ix_stream_rechecks_contact", "contact_pk"),
    )
    stream_errors = Table(
        "stream_errors",
        md,
        Column("seq", PK, primary_key=True, autoincrement=True),
        Column("at", UTCTimestamp, nullable=False),
        Column("criterion_pk", BigInteger),
        Column("contact_pk", BigInteger),
        Column("change_seq", BigInteger),
        Column("error", Text, nullable=False),
    )
    reconciliations = Table(
        "reconciliations",
        md,
        Column("seq", PK, primary_key=True, autoincrement=True),
        Column("at", UTCTimestamp, nullable=False),
        Column("criterion_pk", BigInteger, nullable=False),
        Column("offset_seq", BigInteger, nullable=False),
        Column("missing", BigInteger, nullable=False),
        Column("extra", BigInteger, nullable=False),
        Column("repaired", Boolean(create_constraint=False), nullable=False),
    )
    # The stream's lag and throughput over time, a sample every
    # PERSONATAG_STREAM_SAMPLE_S (kept PERSONATAG_STREAM_SAMPLE_KEEP_DAYS): the
    # offset alone says where the stream is, not how it got there. `changes`
    # feed rows were consumed in the `span_s` seconds before `at`.
    stream_samples = Table(
        "stream_samples",
        md,
        Column("seq", PK, primary_key=True, autoincrement=True),
        Column("name", Text, nullable=False),
        Column("at", UTCTimestamp, nullable=False),
        Column("offset_seq", BigInteger, nullable=False),
        Column("head", BigInteger, nullable=False),
        Column("lag_changes", BigInteger, nullable=False),
        Column("lag_seconds", Float, nullable=False),
        Column("changes", BigInteger, nullable=False),
        Column("evaluations", BigInteger, nullable=False),
        Column("span_s", Float, nullable=False),
        Index("ix_stream_samples_name_at", "name", "at"),
    )
    webhooks = Table(
        "webhooks",
        md,
        Column("pk", PK, primary_key=True, autoincrement=True),
        Column("url", Text, nullable=False),
        Column("secret", Text, nullable=False),
        # JSON list of persona keys, or NULL for every persona.
        Column("personas", Text),
        # The last membership_log seq delivered (or dead-lettered).
        Column("cursor_seq", BigInteger, nullable=False),
        # Set while a bulk entry is delivered in parts: how many of the contacts
        # of entry cursor_seq were delivered (NULL: all of them).
        Column("cursor_part", BigInteger),
        Column("created_at", UTCTimestamp, nullable=False),
        Column("created_by", Text),
        Column("disabled_at", UTCTimestamp),
        # Failed attempts at the batch after the cursor, and when to try again.
        Column("attempts", BigInteger, nullable=False),
        Column("next_attempt_at", UTCTimestamp),
        Column("last_error", Text),
        # The batch being tried (NULL: none): its X-Personatag-Delivery id and
        # where it ends (seq, and contacts of that bulk entry, NULL: all), so
        # every retry sends the same events under the same id.
        Column("delivery_id", Text),
        Column("batch_seq", BigInteger),
        Column("batch_part", BigInteger),
    )
    webhook_dead_letters = Table(
        "webhook_dead_letters",
        md,
        Column("pk", PK, primary_key=True, autoincrement=True),
        Column("webhook_pk", BigInteger, nullable=False),
        Column("first_seq", BigInteger, nullable=False),
        Column("last_seq", BigInteger, nullable=False),
        Column("payload", Text, nullable=False),
        Column("attempts", BigInteger, nullable=False),
        Column("last_error", Text),
        Column("failed_at", UTCTimestamp, nullable=False),
        Column("redelivered_at", UTCTimestamp),
        Column("delivery_id", Text),
        Index("ix_webhook_dead_letters_webhook", "webhook_pk"),
    )
    # Persona content rules for the feed (personatag.recommend.rules): kind is boost
    # (expr, weight), filter (expr), pin (publication_pk, expires_at) or cap (cap).
    feed_rules = Table(
        "feed_rules",
        md,
        Column("pk", PK, primary_key=True, autoincrement=True),
        Column("persona_pk", BigInteger, nullable=False),
        Column("kind", Text, nullable=False),
        Column("expr", Text),
        Column("weight", Float),
        Column("publication_pk", BigInteger),
        Column("expires_at", UTCTimestamp),
        Column("cap", BigInteger),
        Column("created_at", UTCTimestamp, nullable=False),
        Column("created_by", Text),
        Index("ix_feed_rules_persona", "persona_pk", "pk"),
    )
    return Tables(
        metadata=md,
        membership_log_members=membership_log_members,
        feed_rules=feed_rules,
        changes=changes,
        stream_offsets=stream_offsets,
        stream_rechecks=stream_rechecks,
        stream_errors=stream_errors,
        reconciliations=reconciliations,
        stream_samples=stream_samples,
        webhooks=webhooks,
        webhook_dead_letters=webhook_dead_letters,
        users=users,
        api_tokens=api_tokens,
        web_sessions=web_sessions,
        audit_events=audit_events,
        data_versions=data_versions,
        contacts=contacts,
        publications=publications,
        reads=reads,
        logins=logins,
        attributes=attributes,
        personas=personas,
        criteria=criteria,
        memberships=memberships,
        membership_rows=membership_rows,
        membership_grants=membership_grants,
        pins=pins,
        membership_log=membership_log,
        requests=requests,
        jobs=jobs,
        request_files=request_files,
        request_submissions=request_submissions,
    )
