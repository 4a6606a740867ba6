"""Dispatch: request file claims; job deadlines, cancel requests and owners.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.BigInteger()  # UTC microseconds since the epoch


def upgrade() -> None:
    op.create_table(
        "request_files",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("claimed_at", TS, nullable=False),
        sa.Column("claimed_by", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("deadline_at", TS, nullable=True))
        batch.add_column(
            sa.Column("cancel_requested", sa.Boolean(create_constraint=False), nullable=True)
        )
        batch.add_column(sa.Column("owner", sa.Text(), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", TS, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for column in ("heartbeat_at", "owner", "cancel_requested", "deadline_at"):
            batch.drop_column(column)
    op.drop_table("request_files")
