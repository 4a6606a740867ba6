"""Ongoing criteria: the change feed, stream offsets, time-window re-checks,
evaluation errors, reconciliation reports and webhooks.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Frozen copies of the column types as they were at this revision.
PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.BigInteger()  # UTC microseconds since the epoch


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column("seq", PK, autoincrement=True, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("contact_pk", sa.BigInteger(), nullable=True),
        sa.Column("pks", sa.LargeBinary(), nullable=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("fields", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_table(
        "stream_offsets",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "stream_rechecks",
        sa.Column("criterion_pk", sa.BigInteger(), nullable=False),
        sa.Column("contact_pk", sa.BigInteger(), nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("criterion_pk", "contact_pk"),
    )
    op.create_index("ix_stream_rechecks_due", "stream_rechecks", ["due_at"])
    op.create_index("ix_stream_rechecks_contact", "stream_rechecks", ["contact_pk"])
    op.create_table(
        "stream_errors",
        sa.Column("seq", PK, autoincrement=True, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("criterion_pk", sa.BigInteger(), nullable=True),
        sa.Column("contact_pk", sa.BigInteger(), nullable=True),
        sa.Column("change_seq", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_table(
        "reconciliations",
        sa.Column("seq", PK, autoincrement=True, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("criterion_pk", sa.BigInteger(), nullable=False),
        sa.Column("offset_seq", sa.BigInteger(), nullable=False),
        sa.Column("missing", sa.BigInteger(), nullable=False),
        sa.Column("extra", sa.BigInteger(), nullable=False),
        sa.Column("repaired", sa.Boolean(create_constraint=False), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_table(
        "webhooks",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("personas", sa.Text(), nullable=True),
        sa.Column("cursor_seq", sa.BigInteger(), nullable=False),
        sa.Column("cursor_part", sa.BigInteger(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.Column("disabled_at", TS, nullable=True),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivery_id", sa.Text(), nullable=True),
        sa.Column("batch_seq", sa.BigInteger(), nullable=True),
        sa.Column("batch_part", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_table(
        "webhook_dead_letters",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("webhook_pk", sa.BigInteger(), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("failed_at", TS, nullable=False),
        sa.Column("redelivered_at", TS, nullable=True),
        sa.Column("delivery_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_webhook_dead_letters_webhook", "webhook_dead_letters", ["webhook_pk"])


def downgrade() -> None:
    op.drop_table("webhook_dead_letters")
    op.drop_table("webhooks")
    op.drop_table("reconciliations")
    op.drop_table("stream_errors")
    op.drop_table("stream_rechecks")
    op.drop_table("stream_offsets")
    op.drop_table("changes")
