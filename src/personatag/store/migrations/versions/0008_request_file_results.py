"""Request files: the job a file ran, and why its result files could not be written.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("request_files") as batch:
        batch.add_column(sa.Column("job_pk", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("request_files") as batch:
        batch.drop_column("error")
        batch.drop_column("job_pk")
