"""Requests: where each was submitted (workbench, api, cli, file) and with which
API token; who put each file in the requests bucket, by its key.

Revision ID: 0009_requests
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_requests"
down_revision = "0009_users"
branch_labels = None
depends_on = None

TS = sa.BigInteger()  # UTC microseconds since the epoch


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("submitted_via", sa.Text(), nullable=True))
        batch.add_column(sa.Column("submitted_token", sa.Text(), nullable=True))
    op.create_index("ix_requests_submitted_by", "requests", ["submitted_by"])
    op.create_table(
        "request_submissions",
        sa.Column("key", sa.Text(), primary_key=True),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("submitted_by", sa.Text(), nullable=True),
        sa.Column("submitted_via", sa.Text(), nullable=False),
        sa.Column("submitted_token", sa.Text(), nullable=True),
        sa.Column("submitted_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("request_submissions")
    op.drop_index("ix_requests_submitted_by", table_name="requests")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("submitted_token")
        batch.drop_column("submitted_via")
