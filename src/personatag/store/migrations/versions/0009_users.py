"""Users: when each last logged in (a session login or an API token's use).

Revision ID: 0009_users
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_users"
down_revision = "0008"
branch_labels = None
depends_on = None

TS = sa.BigInteger()  # UTC microseconds since the epoch


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("last_login_at", TS, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("last_login_at")
