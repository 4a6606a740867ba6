"""Monitoring: the stream's lag and throughput sampled over time (stream_samples).

Revision ID: 0009_monitoring
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_monitoring"
down_revision = "0009_contacts"
branch_labels = None
depends_on = None

# Frozen copies of the column types as they were at this revision.
PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.BigInteger()  # UTC microseconds since the epoch


def upgrade() -> None:
    op.create_table(
        "stream_samples",
        sa.Column("seq", PK, autoincrement=True, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("offset_seq", sa.BigInteger(), nullable=False),
        sa.Column("head", sa.BigInteger(), nullable=False),
        sa.Column("lag_changes", sa.BigInteger(), nullable=False),
        sa.Column("lag_seconds", sa.Float(), nullable=False),
        sa.Column("changes", sa.BigInteger(), nullable=False),
        sa.Column("evaluations", sa.BigInteger(), nullable=False),
        sa.Column("span_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_stream_samples_name_at", "stream_samples", ["name", "at"])


def downgrade() -> None:
    op.drop_index("ix_stream_samples_name_at", table_name="stream_samples")
    op.drop_table("stream_samples")
