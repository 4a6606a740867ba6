"""Initial schema: contacts, readership, personas, criteria, memberships, log, requests, jobs.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the column types as they were at this revision.
PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.BigInteger()  # UTC microseconds since the epoch
LIST = sa.Text().with_variant(postgresql.ARRAY(sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "attributes",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "contacts",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("first_name", sa.Text(), nullable=True),
        sa.Column("last_name", sa.Text(), nullable=True),
        sa.Column("job_title", sa.Text(), nullable=True),
        sa.Column("seniority", sa.BigInteger(), nullable=True),
        sa.Column("region", sa.Text(), nullable=True),
        sa.Column("country", sa.Text(), nullable=True),
        sa.Column("firm", sa.Text(), nullable=True),
        sa.Column("firm_type", sa.Text(), nullable=True),
        sa.Column("interests", LIST, nullable=True),
        sa.Column("created_at", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=True),
        sa.Column("last_login_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("id"),
    )
    op.create_table(
        "criteria",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("persona_pk", sa.BigInteger(), nullable=False),
        sa.Column("expr", sa.Text(), nullable=False),
        sa.Column("ast", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("exit_policy", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_table(
        "jobs",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("request_pk", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("engine", sa.Text(), nullable=False),
        sa.Column("bundle_version", sa.Text(), nullable=True),
        sa.Column("queued_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("counts", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_table(
        "logins",
        sa.Column("contact_pk", sa.BigInteger(), nullable=False),
        sa.Column("login_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("contact_pk", "login_at"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "membership_log",
        sa.Column("seq", PK, autoincrement=True, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("persona_pk", sa.BigInteger(), nullable=False),
        sa.Column("contact_pk", sa.BigInteger(), nullable=True),
        sa.Column("change", sa.Text(), nullable=False),
        sa.Column("source", sa.BigInteger(), nullable=False),
        sa.Column("request_pk", sa.BigInteger(), nullable=True),
        sa.Column("criterion_pk", sa.BigInteger(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("bulk_count", sa.BigInteger(), nullable=True),
        sa.Column("bulk_ids", sa.LargeBinary(), nullable=True),
        sa.Column("bulk_min", sa.BigInteger(), nullable=True),
        sa.Column("bulk_max", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_table(
        "memberships",
        sa.Column("persona_pk", sa.BigInteger(), nullable=False),
        sa.Column("contact_pk", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.BigInteger(), nullable=False),
        sa.Column("since", TS, nullable=False),
        sa.Column("request_pk", sa.BigInteger(), nullable=True),
        sa.Column("criterion_pk", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("persona_pk", "contact_pk", "source"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "personas",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.Column("archived_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("key"),
    )
    op.create_table(
        "pins",
        sa.Column("persona_pk", sa.BigInteger(), nullable=False),
        sa.Column("contact_pk", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("persona_pk", "contact_pk"),
    )
    op.create_table(
        "publications",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("published_at", TS, nullable=True),
        sa.Column("asset_class", sa.Text(), nullable=True),
        sa.Column("sector", sa.Text(), nullable=True),
        sa.Column("region", sa.Text(), nullable=True),
        sa.Column("series", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("id"),
    )
    op.create_table(
        "reads",
        sa.Column("contact_pk", sa.BigInteger(), nullable=False),
        sa.Column("read_at", TS, nullable=False),
        sa.Column("publication_pk", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("contact_pk", "read_at", "publication_pk"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "requests",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("submitted_by", sa.Text(), nullable=True),
        sa.Column("persona_pk", sa.BigInteger(), nullable=True),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("engine", sa.Text(), nullable=False),
        sa.Column("criterion_pk", sa.BigInteger(), nullable=True),
        sa.Column("expr", sa.Text(), nullable=True),
        sa.Column("as_of", TS, nullable=True),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("request_id"),
    )

    # Behavioural criteria filter publications first (a small table), then read
    # each matching publication's window of reads from this covering index.
    op.create_index("ix_reads_publication", "reads", ["publication_pk", "read_at", "contact_pk"])
    op.create_index("ix_memberships_contact", "memberships", ["contact_pk"])
    op.create_index("ix_membership_log_contact", "membership_log", ["contact_pk", "seq"])
    op.create_index("ix_membership_log_persona", "membership_log", ["persona_pk", "seq"])
    # Bulk entries are few among many single rows: find them without a scan.
    op.create_index(
        "ix_membership_log_bulk",
        "membership_log",
        ["seq"],
        sqlite_where=sa.text("bulk_count IS NOT NULL"),
        postgresql_where=sa.text("bulk_count IS NOT NULL"),
    )
    op.create_index("ix_criteria_name_version", "criteria", ["name", "version"], unique=True)
    op.create_index("ix_jobs_request", "jobs", ["request_pk"])
    op.create_index("ix_jobs_status", "jobs", ["status"])


def downgrade() -> None:
    for table in (
        "requests",
        "reads",
        "publications",
        "pins",
        "personas",
        "memberships",
        "membership_log",
        "logins",
        "jobs",
        "criteria",
        "contacts",
        "attributes",
    ):
        op.drop_table(table)
